"""One peer link: a dial loop and the current connection, in one nursery of its own.

A failing connection (EOF, reset, heartbeat timeout, protocol error) cancels only its own session scope; the link
then marks the peer down and its dial loop starts again with capped, jittered back-off. Connections arriving
from the accept loop are offered to the link, which keeps exactly one per pair (``handshake.replaces``).
"""

from __future__ import annotations

import math
import random

import trio
from attrs import define, field

from meshd.config import Timeouts
from meshd.connection import FramedConnection, handshake
from meshd.core.address import Address
from meshd.core.backoff import Backoff
from meshd.core.wire import Goodbye, Heartbeat, Hello, Refuse, RefuseReason, View, encode
from meshd.errors import Fenced, LinkFailure, NewerGeneration
from meshd.handshake import Identity, LinkOrigin, replaces
from meshd.net import Network, describe_os_error
from meshd.supervisor import Supervisor

# A heartbeat never changes: encode it once.
HEARTBEAT_FRAME = encode(Heartbeat())
# How many replaced incarnations of a peer are remembered (a slot restarting more often than this between two
# of its stale processes waking up is far outside any real deployment).
RETIRED_MEMORY = 64


def next_tick(now: float, interval: float) -> float:
    """The first point of the grid ``k * interval`` strictly after ``now`` (float rounding cannot return ``now``)."""
    tick = (math.floor(now / interval) + 1) * interval
    return tick if tick > now else tick + interval


@define(eq=False)
class Session:
    """One established connection serving as the link; its scope is cancelled when it fails or is replaced."""

    conn: FramedConnection
    origin: LinkOrigin
    scope: trio.CancelScope = field(factory=trio.CancelScope)
    failure: str | None = None
    # The peer kept this connection too (a heartbeat arrived). When an unproven link drops, the dial loop backs off
    # before redialing: a peer that accepts a handshake and then refuses the link must not cause a dial storm.
    proven: bool = False

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.scope.cancel()


class PeerLink:
    def __init__(
        self,
        peer: int,
        address: Address,
        net: Network,
        timeouts: Timeouts,
        supervisor: Supervisor,
        rng: random.Random,
    ) -> None:
        self.peer = peer
        self.address = address
        self._net = net
        self._timeouts = timeouts
        self._supervisor = supervisor
        self._backoff = Backoff(timeouts.backoff_initial, timeouts.backoff_max, rng)
        self._session: Session | None = None
        self._incarnation: int | None = None
        self._retired: dict[int, None] = {}  # insertion-ordered set of replaced incarnations, oldest first
        self._went_down = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._dialing = trio.CancelScope()
        self._closing = False

    @property
    def session(self) -> Session | None:
        """The connection currently serving as the link, if any."""
        return self._session

    @property
    def me(self) -> Identity:
        """Who we are now: the epoch can move (auto mode, await mode), so it is read at each use."""
        return self._supervisor.me

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the link until cancelled; reports started once ``offer`` may be called."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._dial_loop)
            task_status.started()
            # The nursery outlives the dial loop (which ends at a fence or a stop): the accept loop may still
            # offer a connection that finished its handshake meanwhile, and its session needs a home.
            await trio.sleep_forever()

    async def _dial_loop(self) -> None:
        with self._dialing:
            await self._dial_forever()

    def offer(self, conn: FramedConnection, hello: Hello, dialer: int) -> Refuse | Goodbye | None:
        """Make an established connection this peer's link; or the parting frame to close it with, when it loses.

        It loses while this daemon stops, or when it comes from an incarnation that a newer process in the peer's
        slot already replaced (a paused or zombie process must not win its slot back). Two connections of one
        incarnation dialed from both ends are settled by the tie-break; the loser lingers, heartbeats flowing, for
        one handshake timeout, because the peer may not have established the winner yet and must not see a drop.
        """
        assert self._nursery is not None, "offer() before run()"
        origin = LinkOrigin(dialer, hello.incarnation)
        if self._closing:
            return Goodbye("shutting down")
        if hello.epoch != self.me.epoch:  # judged before our generation moved on
            return Refuse(RefuseReason.STALE_EPOCH, self.me.epoch, f"we moved on to generation {self.me.epoch}")
        if not self._supervisor.admits(self.peer, hello.incarnation):
            detail = f"generation {self.me.epoch} already has another process in slot {self.peer}"
            return Refuse(RefuseReason.SEALED, self.me.epoch, detail)
        if origin.peer_incarnation in self._retired:
            detail = f"incarnation {origin.peer_incarnation:016x} was replaced by a newer process"
            return Refuse(RefuseReason.RETIRED, self.me.epoch, detail)
        candidate = Session(conn, origin)
        current = self._session
        if current is not None:
            crossed = current.origin.peer_incarnation == origin.peer_incarnation and current.origin.dialer != dialer
            wins = replaces(self.me.index, self.peer, current.origin, origin)
            if crossed:
                self._linger(current if wins else candidate)
                if not wins:
                    return None
            else:  # a new incarnation, or the same dialer trying again: the old connection is finished
                current.fail("replaced by a newer connection")
        if self._incarnation not in (None, origin.peer_incarnation):
            self._retired[self._incarnation] = None
            if len(self._retired) > RETIRED_MEMORY:
                del self._retired[next(iter(self._retired))]
        self._incarnation = origin.peer_incarnation
        self._session = candidate
        self._supervisor.link_up(self.peer, hello, dialer)
        self._nursery.start_soon(self._run_session, candidate)
        return None

    def drop(self, reason: str) -> None:
        """End the current link now (its generation is over); the dial loop starts again at once."""
        session = self._session
        if session is not None:
            session.proven = True  # the link did nothing wrong: redial at once, in the new generation
            session.fail(reason)
            self._backoff.reset()
            self._link_ended(reason)

    def _link_ended(self, reason: str) -> None:
        """The current session is no longer the link (it failed, or the generation moved on)."""
        self._session = None
        # Retirement holds only while the replacement holds the link: which incarnation reached us last says
        # nothing about which is newer (a zombie can arrive after its replacement), so once the link is gone,
        # any incarnation may take it again and the tie-break decides afresh.
        self._retired.clear()
        self._supervisor.link_down(self.peer, reason)
        self._went_down.set()

    def send_view(self) -> None:
        """Tell the peer our current view (the frame is built when it is sent, so the latest view always wins)."""
        session = self._session
        if session is not None and self._nursery is not None:
            self._nursery.start_soon(self._send_view, session)

    async def _send_view(self, session: Session) -> None:
        try:
            await session.conn.send_bytes(self._supervisor.view_frame())
        except LinkFailure as exc:
            session.fail(exc.reason)

    def _linger(self, session: Session) -> None:
        """Keep a tie-break loser open (not as the link) until the peer drops it or a handshake timeout passes."""
        assert self._nursery is not None
        session.scope.deadline = min(session.scope.deadline, trio.current_time() + self._timeouts.handshake)
        if session is not self._session:
            self._nursery.start_soon(self._run_session, session)

    async def close(self, reason: str) -> None:
        """Stop dialing and accepting for this peer, say goodbye on the current link, if any, and close it."""
        self._closing = True
        self._dialing.cancel()
        session = self._session
        if session is not None:
            self._session = None  # its end is no longer a link failure
            await session.conn.part(Goodbye(reason))  # the goodbye goes out before the session stops and closes
            session.scope.cancel()

    async def _dial_forever(self) -> None:
        while True:
            session = self._session
            if session is not None:
                self._went_down = trio.Event()
                await self._went_down.wait()
                if not session.proven:
                    await trio.sleep(self._backoff.next_delay())
            try:
                conn, hello = await self._dial()
            except LinkFailure as exc:
                self._supervisor.attempt_failed(self.peer, exc.reason)
                await trio.sleep(self._backoff.next_delay())
                continue
            except Fenced as exc:
                self._supervisor.fence(exc)
                return  # the process is ending: dialing again could only spin
            except NewerGeneration as exc:
                was = self.me.epoch
                self._supervisor.newer_epoch_seen(exc)
                if self.me.epoch == was:  # not adopted (stopping, or sealed meanwhile): wait like any failure
                    await trio.sleep(self._backoff.next_delay())
                continue
            refusal = self.offer(conn, hello, dialer=self.me.index)
            if refusal is not None:  # we refuse whom we reached (retired, another member): not before a back-off
                await conn.part(refusal)
                why = refusal.detail if isinstance(refusal, Refuse) else refusal.reason
                self._supervisor.attempt_failed(self.peer, f"refused the peer we reached: {why}")
                await trio.sleep(self._backoff.next_delay())

    async def _dial(self) -> tuple[FramedConnection, Hello]:
        with trio.move_on_after(self._timeouts.connect) as connecting:
            try:
                stream = await self._net.connect(self.address)
            except OSError as exc:
                raise LinkFailure(f"connect to {self.address} failed: {describe_os_error(exc)}") from exc
        if connecting.cancelled_caught:
            raise LinkFailure(f"connect to {self.address} timed out after {self._timeouts.connect}s")
        return await handshake(stream, self.me, self.peer, self._timeouts.handshake, self._supervisor.holders())

    async def _run_session(self, session: Session) -> None:
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_heartbeats, session)
                    await self._receive(session)
        finally:  # also when the whole daemon is cancelled (fence, stop, or an embedding program's scope)
            await session.conn.aclose()
        if self._session is session:
            self._link_ended(session.failure or "link closed")

    async def _send_heartbeats(self, session: Session) -> None:
        """Send a heartbeat now, then on a grid of the interval shared by every link (and, on one host, every
        daemon: the monotonic clock is system-wide), so that one wake-up serves all links instead of one each."""
        interval = self._timeouts.heartbeat_interval
        try:
            while True:
                await session.conn.send_bytes(HEARTBEAT_FRAME)
                await trio.sleep_until(next_tick(trio.current_time(), interval))
        except LinkFailure as exc:
            session.fail(exc.reason)

    async def _receive(self, session: Session) -> None:
        """Read frames until the link fails; silence longer than the heartbeat timeout is a failure."""
        timeout = self._timeouts.heartbeat_timeout
        try:
            with trio.CancelScope() as silence:  # one scope, its deadline pushed back by every frame
                while True:
                    silence.deadline = trio.current_time() + timeout
                    frame = await session.conn.receive()
                    match frame:
                        case Heartbeat():
                            if not session.proven:
                                session.proven = True
                                self._backoff.reset()
                            continue
                        case View() if session is self._session:  # a lingering loser's views are history
                            self._supervisor.peer_view(self.peer, frame)
                        case View():
                            pass
                        case Goodbye(reason=reason):
                            raise LinkFailure(f"peer left: {reason}")
                        case Refuse(reason=RefuseReason.SEALED, epoch=sealed, detail=detail):
                            self._supervisor.mint_above(sealed, f"peer {self.peer}: {detail}")
                            raise LinkFailure(f"peer refused the link (sealed): {detail}")
                        case Refuse(reason=reason, detail=detail):
                            raise LinkFailure(f"peer refused the link ({reason.name.lower()}): {detail}")
                        case _:
                            raise LinkFailure(f"protocol error: unexpected {type(frame).__name__} on an up link")
            raise LinkFailure(f"no heartbeat for {timeout}s")
        except LinkFailure as exc:
            session.fail(exc.reason)
