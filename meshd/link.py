"""One peer link: a dial loop and the connections serving as the link, in one nursery of its own.

A failing connection (EOF, reset, heartbeat timeout, protocol error) cancels only its own session scope; the link
reports it to the mesh, and its dial loop starts again with capped, jittered back-off. Which connection is the
link, and what every exchange decides, is the mesh model's call (``meshd.core``); this module only does the I/O.
"""

from __future__ import annotations

import random
from typing import Protocol

import trio
from attrs import define, field

from meshd.config import Timeouts
from meshd.connection import ExchangeResult, FramedConnection, LinkFailure, exchange_hellos
from meshd.core.address import Address
from meshd.core.backoff import Backoff
from meshd.core.hello import Outcome
from meshd.core.mesh import Concluded, MeshModel
from meshd.core.slot import LinkOrigin
from meshd.core.status import EndCause, LinkEnd
from meshd.core.wire import Goodbye, Heartbeat, Refuse, View
from meshd.gate import Gate
from meshd.heartbeat import HEARTBEAT_FRAME, HeartbeatClock
from meshd.net import Network, describe_os_error


@define(eq=False)
class Session:
    """One established connection serving as the link (or lingering after a tie-break); its scope is cancelled when
    it fails or is replaced. The mesh model holds sessions as opaque tokens."""

    conn: FramedConnection
    origin: LinkOrigin
    scope: trio.CancelScope = field(factory=trio.CancelScope)
    failure: LinkEnd | None = None
    # The peer kept this connection too (a heartbeat arrived). When an unproven link drops, the dial loop backs off
    # before redialing: a peer that accepts a handshake and then refuses the link must not cause a dial storm.
    proven: bool = False
    running: bool = False  # its reader and heartbeat tasks were started

    def fail(self, end: LinkEnd) -> None:
        if self.failure is None:
            self.failure = end
        self.scope.cancel()


class Mesh(Protocol):
    """What a link asks of its daemon: the model to read, and the events that change it (effects applied)."""

    model: MeshModel

    async def settle(self, result: ExchangeResult, dialer: int) -> Concluded: ...

    def link_ended(self, peer: int, session: Session, end: LinkEnd) -> None: ...

    def view_received(self, peer: int, session: Session, view: View) -> None: ...

    def attempt_failed(self, peer: int, end: LinkEnd) -> None: ...

    gate: Gate  # the cluster's keys: every dial authenticates with them
    heartbeats: HeartbeatClock  # when every link sends its next heartbeat

    async def first_dial(self) -> None: ...


def why_no_link(result: ExchangeResult) -> LinkEnd:
    """Why an exchange made no link (the row's ``last_attempt_error``), from the two answers."""
    ours, theirs = result.exchange.answer, result.answer
    if isinstance(ours, Refuse):
        return LinkEnd(EndCause.REFUSED, f"refused peer ({ours.reason.name.lower()}): {ours.detail}", ours.reason)
    match theirs:
        case Refuse(reason=reason, detail=detail):
            return LinkEnd(EndCause.REFUSED, f"peer refused us ({reason.name.lower()}): {detail}", reason)
        case Goodbye(reason=reason):
            return LinkEnd(EndCause.GOODBYE, f"peer is leaving: {reason}")
        case None:
            return LinkEnd(EndCause.NO_ANSWER, "peer did not answer our hello")
    return LinkEnd(EndCause.LOCAL, "the connection lost the tie-break")


class PeerLink:
    def __init__(
        self, peer: int, address: Address, net: Network, timeouts: Timeouts, mesh: Mesh, rng: random.Random
    ) -> None:
        self.peer = peer
        self.address = address
        self._net = net
        self._timeouts = timeouts
        self._mesh = mesh
        self._backoff = Backoff(timeouts.backoff_initial, timeouts.backoff_max, rng)
        self._session: Session | None = None
        self._went_down = trio.Event()
        self._pausing: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._dialing = trio.CancelScope()

    @property
    def session(self) -> Session | None:
        """The connection currently serving as the link, if any."""
        return self._session

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the link until cancelled; reports started once sessions may be started."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._dial_loop)
            task_status.started()
            # The nursery outlives the dial loop (which ends at a fence or a stop): the accept loop may still
            # settle a connection whose exchange finished meanwhile, and its session needs a home.
            await trio.sleep_forever()

    async def _dial_loop(self) -> None:
        with self._dialing:
            await self._mesh.first_dial()
            await self._dial_forever()

    # ----- what the daemon applies -----

    def start(self, session: Session, replaced: Session | None) -> None:
        """``session`` is the link now; ``replaced`` (the previous link, if the model says so) is finished."""
        assert self._nursery is not None, "start() before run()"
        if replaced is not None:
            replaced.fail(LinkEnd(EndCause.LOCAL, "replaced by a newer connection"))
        self._session = session
        session.running = True
        self._nursery.start_soon(self._run_session, session)

    def linger(self, session: Session) -> None:
        """Keep a tie-break loser open (not as the link) until the peer drops it or a handshake timeout passes."""
        assert self._nursery is not None
        session.scope.deadline = min(session.scope.deadline, trio.current_time() + self._timeouts.handshake)
        if not session.running:
            session.running = True
            self._nursery.start_soon(self._run_session, session)

    def generation_changed(self, sessions: tuple[object, ...], reason: str) -> None:
        """Our generation moved on: end the link if it was one of ``sessions``, and redial at once."""
        session = self._session
        if session is not None and session in sessions:
            session.proven = True  # the link did nothing wrong: no back-off before the redial
            session.fail(LinkEnd(EndCause.LOCAL, reason))
            self._session = None
            self._went_down.set()
        self._backoff.reset()
        if self._pausing is not None:
            self._pausing.cancel()

    def send_view(self) -> None:
        """Tell the peer our view; the frame is built when it is sent, so the latest view always wins."""
        session = self._session
        if session is not None and self._nursery is not None:
            self._nursery.start_soon(self._send_view, session)

    async def close(self, reason: str) -> None:
        """Stop dialing, say goodbye on the current link, if any, and close it."""
        self._dialing.cancel()
        session = self._session
        if session is not None:
            self._session = None  # its end is no longer a link failure
            await session.conn.part(Goodbye(reason))  # the goodbye goes out before the session stops and closes
            session.scope.cancel()

    # ----- the dial loop -----

    async def _dial_forever(self) -> None:
        while True:
            session = self._session
            if session is not None:
                self._went_down = trio.Event()
                await self._went_down.wait()
                if not session.proven:
                    await self._pause()
            try:
                result = await self._dial()
            except LinkFailure as exc:
                self._mesh.attempt_failed(self.peer, exc.end)
                await self._pause()
                continue
            concluded = await self._mesh.settle(result, dialer=self._mesh.model.me.index)
            if not self._mesh.model.began or self._mesh.model.exit is not None:
                return  # fenced or stopping: dialing again could only spin
            if self._session is not None or concluded.outcome in (Outcome.ADOPT, Outcome.SURPASS, Outcome.LEAVE):
                continue  # linked, or our generation moved: the redial (if any) needs no back-off
            self._mesh.attempt_failed(self.peer, why_no_link(result))
            await self._pause()

    async def _pause(self) -> None:
        """The back-off before the next dial; a generation change cuts it short."""
        with trio.CancelScope() as self._pausing:
            await trio.sleep(self._backoff.next_delay())
        self._pausing = None

    async def _dial(self) -> ExchangeResult:
        with trio.move_on_after(self._timeouts.connect) as connecting:
            try:
                stream = await self._net.connect(self.address)
            except OSError as exc:
                detail = f"connect to {self.address} failed: {describe_os_error(exc)}"
                raise LinkFailure(EndCause.UNREACHABLE, detail) from exc
        if connecting.cancelled_caught:
            detail = f"connect to {self.address} timed out after {self._timeouts.connect}s"
            raise LinkFailure(EndCause.UNREACHABLE, detail)
        auth = self._mesh.gate.authenticator(dialer=True, data=False)
        return await exchange_hellos(stream, self._mesh.model, self.peer, self._timeouts.handshake, auth=auth)

    # ----- a session -----

    async def _send_view(self, session: Session) -> None:
        try:
            await session.conn.send_bytes(self._mesh.model.view_frame())
        except LinkFailure as exc:
            session.fail(exc.end)

    async def _run_session(self, session: Session) -> None:
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_heartbeats, session)
                    await self._receive(session)
        finally:  # also when the whole daemon is cancelled (fence, stop, or an embedding program's scope)
            await session.conn.aclose()
        if self._session is session:
            self._session = None
            self._went_down.set()
        self._mesh.link_ended(self.peer, session, session.failure or LinkEnd(EndCause.LOCAL, "link closed"))

    async def _send_heartbeats(self, session: Session) -> None:
        """Send a heartbeat now, then at every tick of the daemon's heartbeat clock."""
        try:
            while True:
                await session.conn.send_bytes(HEARTBEAT_FRAME)
                await self._mesh.heartbeats.wait()
        except LinkFailure as exc:
            session.fail(exc.end)

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
                        case View():
                            self._mesh.view_received(self.peer, session, frame)
                        case Goodbye(reason=reason):
                            raise LinkFailure(EndCause.GOODBYE, f"peer left: {reason}")
                        case Refuse(reason=reason, detail=detail):
                            detail = f"peer refused the link ({reason.name.lower()}): {detail}"
                            raise LinkFailure(EndCause.REFUSED, detail, reason)
                        case _:
                            detail = f"protocol error: unexpected {type(frame).__name__} on an up link"
                            raise LinkFailure(EndCause.PROTOCOL, detail)
            raise LinkFailure(EndCause.SILENCE, f"no heartbeat for {timeout}s")
        except LinkFailure as exc:
            session.fail(exc.end)
