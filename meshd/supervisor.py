"""The supervisor: owns the epoch and the mesh state, publishes events, and alone may end the process.

Supervision strategy, stated where it is implemented:
- each peer link runs in its own nursery and reports to the supervisor through plain method calls
  (``link_up``, ``link_down``, ``attempt_failed``); a link failure changes that peer's row and the mesh state only;
- the mesh is ``forming`` until every link is up, then ``ready``; ``degraded`` while a link of a ready mesh is down;
- the only fault that ends the process is proof of a newer epoch (``fence``): it cancels the daemon's scope and
  the process exits 75. A requested stop (SIGTERM/SIGINT) cancels it too and the process exits 0.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio
from attrs import define, evolve
from loguru import logger

from meshd.core.address import Address
from meshd.core.wire import Epoch, Hello, View, encode
from meshd.errors import Fenced, NewerGeneration
from meshd.handshake import Identity

EXIT_OK = 0
EXIT_FENCED = 75
# Events a slow watcher may lag behind before it is cut off (it can reconnect and ask for status).
WATCH_BUFFER = 256
# After a fence, once every watcher has taken its queued events, how long the process lingers so that the last
# ones are written out. Nothing can undo a fence in that time: the mesh state is final and no link changes it.
FENCE_LINGER = 0.05
# How often a fenced process checks whether its watchers have taken their events, and how long it waits at most.
DRAIN_POLL = 0.01
DRAIN_LIMIT = 1.0


class MeshState(enum.StrEnum):
    AWAITING = "awaiting"  # ``--epoch await``: no epoch yet, waiting for a controller's start op
    FORMING = "forming"  # not every link has been up with agreeing views yet
    READY = "ready"  # every link is up and every peer reported the same view of the mesh
    DEGRADED = "degraded"  # the mesh was ready and a link is down
    STOPPING = "stopping"  # a stop was requested; links are closing
    FENCED = "fenced"  # a newer epoch was seen; the process is exiting with 75


class PeerState(enum.StrEnum):
    DOWN = "down"  # no link; the dial loop is retrying and inbound connections are welcome
    UP = "up"  # linked, with heartbeats flowing


@define
class PeerStatus:
    index: int
    address: Address
    state: PeerState = PeerState.DOWN
    epoch: Epoch | None = None
    incarnation: int | None = None
    since: float = 0.0
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    last_attempt_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "address": str(self.address),
            "state": str(self.state),
            "epoch": None if self.epoch is None else self.epoch.to_json(),
            "incarnation": None if self.incarnation is None else f"{self.incarnation:016x}",
            "since": self.since,
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_attempt_error": self.last_attempt_error,
        }


class EventBus:
    """Fan-out of events to admin watchers; a watcher that falls WATCH_BUFFER events behind is dropped."""

    def __init__(self) -> None:
        self._watchers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._taps: list[Callable[[dict[str, Any]], None]] = []

    def tap(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Call ``observer`` synchronously with every event (the simulation's checker: it must see every step)."""
        self._taps.append(observer)

    def publish(self, event: dict[str, Any]) -> None:
        for observer in self._taps:
            observer(event)
        for channel in list(self._watchers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._watchers.discard(channel)
                channel.close()

    async def drained(self) -> None:
        """Return once every watcher has taken every event published so far."""
        while any(channel.statistics().current_buffer_used for channel in self._watchers):
            await trio.sleep(DRAIN_POLL)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](WATCH_BUFFER)
        self._watchers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._watchers.discard(send)
            send.close()


class Supervisor:
    """Owns the identity (epoch, and in auto mode the generation's members), the peer rows and the mesh state.

    Readiness is agreement, not just connectivity: the mesh is ready when every link is up and every peer's last
    VIEW (which incarnation it links to in each slot) equals ours. Two processes therefore can never both be ready
    in one generation with different processes in a slot. With self-minted generations, the view a process is
    generation's membership is write-once (one incarnation per slot for the generation's life), and a process that
    was ready in its generation is sealed: it fences on a newer generation instead of adopting it.
    """

    def __init__(
        self,
        me: Identity,
        addresses: list[Address],
        wall_clock: Callable[[], float] = time.time,
        mint: Callable[[Epoch | None], Epoch] | None = None,
        mode: str = "fixed",
    ) -> None:
        awaiting = mode == "await"
        self.mode = mode  # "fixed" (--epoch E), "auto" (self-minted generations) or "await" (controller start op)
        self.me = me
        self.events = EventBus()
        self._wall_clock = wall_clock
        self._mint = mint
        self.started = wall_clock()
        self.state = MeshState.AWAITING if awaiting else MeshState.FORMING
        self.state_since = self.started
        self.began = trio.Event()
        if not awaiting:
            self.began.set()
        self.peers = {
            index: PeerStatus(index, address, since=self.started)
            for index, address in enumerate(addresses)
            if index != me.index
        }
        self.peer_views: dict[int, View | None] = dict.fromkeys(self.peers)
        self.generation_changes = 0
        self.exit_code = EXIT_OK
        self.exit_reason: str | None = None
        self.on_view_change: Callable[[], None] = lambda: None  # send our view to every peer
        self.on_view_needed: Callable[[int], None] = lambda peer: None  # send our view to this peer
        self._view: View | None = None
        self._view_frame: bytes | None = None
        self.on_generation_change: Callable[[str], None] = lambda reason: None
        self.on_fence: Callable[[], None] = self.cancel
        self._scope: trio.CancelScope | None = None
        self._log = logger.bind(index=me.index, epoch=str(me.epoch))

    def attach(self, scope: trio.CancelScope) -> None:
        """The daemon's scope: cancelling it ends every task of the process."""
        self._scope = scope

    def _publish(self, event: str, **fields: Any) -> None:
        self.events.publish({"event": event, "time": self._wall_clock(), "index": self.me.index, **fields})

    def _set_mesh_state(self, state: MeshState, reason: str) -> None:
        if state is self.state:
            return
        self.state = state
        self.state_since = self._wall_clock()
        self._log.info("mesh {} ({})", state, reason)
        self._publish(str(state), epoch=self.me.epoch.to_json(), reason=reason)

    def view(self) -> View:
        """Our view of the current generation: the incarnation we are linked to in every slot (0 while down).

        Kept until a link or the generation changes: it is read for every VIEW received and sent, and rebuilding
        an N-slot vector each time made views the largest CPU cost of forming a 64-process mesh.
        """
        if self._view is None:
            incarnations = tuple(
                self.me.incarnation
                if slot == self.me.index
                else (self.peers[slot].incarnation or 0 if self.peers[slot].state is PeerState.UP else 0)
                for slot in range(self.me.size)
            )
            self._view = View(self.me.epoch, incarnations)
        return self._view

    def view_frame(self) -> bytes:
        """Our view, encoded as a VIEW frame (kept as long as the view)."""
        if self._view_frame is None:
            self._view_frame = encode(self.view())
        return self._view_frame

    def _view_changed(self) -> None:
        self._view = None
        self._view_frame = None

    def holders(self) -> tuple[int, ...] | None:
        """Auto mode, while ready: the incarnations of our mesh, which a duplicate's newer generation may not break
        up (``handshake.judge``). None otherwise: a newer generation then fences or is adopted as usual."""
        return self.view().incarnations if self.me.auto and self.state is MeshState.READY else None

    def _full(self) -> bool:
        return all(peer.state is PeerState.UP for peer in self.peers.values())

    def _announce_view(self) -> None:
        """Send our view to every peer, once it is full (every link up).

        Only a full view can ever equal a ready peer's view, so partial views need not travel: this keeps the VIEW
        traffic of forming an N-process mesh at O(N) frames per process instead of one per link change.
        """
        if self._full():
            self.on_view_change()

    def _agreed(self) -> bool:
        mine = self.view()
        return self._full() and all(view == mine for view in self.peer_views.values())

    def _reevaluate(self, reason: str) -> None:
        if self.state in (MeshState.STOPPING, MeshState.FENCED, MeshState.AWAITING):
            return
        if self._agreed():
            if self.me.auto and not self.me.sealed:
                self.me = evolve(self.me, sealed=True)
                self._log.info("generation {} sealed: a newer generation now fences this process", self.me.epoch)
            self._set_mesh_state(MeshState.READY, reason)
        elif self.state is MeshState.READY:
            self._set_mesh_state(MeshState.DEGRADED, reason)

    def begin(self, epoch: Epoch) -> None:
        """``--epoch await``: the controller's start op gives the epoch; links and the accept loop start now."""
        self._change_epoch(epoch)
        self._set_mesh_state(MeshState.FORMING, f"controller started epoch {epoch}")
        self.began.set()

    def request_start(self, epoch: Epoch) -> dict[str, Any]:
        """The controller's ``start`` op (``--epoch await``): the answer to send back.

        The first start gives the epoch; a newer one fences this process (exit 75); the same one is a no-op;
        an older one is refused and changes nothing.
        """
        if self.mode != "await":
            return {"error": f"this daemon runs with --epoch {'auto' if self.me.auto else self.me.epoch}, not await"}
        if not self.began.is_set():
            self.begin(epoch)
            return {"ok": True, "epoch": epoch.to_json()}
        if epoch > self.me.epoch:
            self.fence(Fenced("the controller", epoch, self.me.epoch))
            return {"ok": True, "epoch": epoch.to_json(), "fenced": True}
        if epoch == self.me.epoch:
            return {"ok": True, "epoch": epoch.to_json()}
        return {"error": f"epoch {epoch} is older than the running epoch {self.me.epoch}; nothing changed"}

    def _change_epoch(self, epoch: Epoch) -> None:
        members = None
        if self.me.auto:
            members = tuple(self.me.incarnation if slot == self.me.index else 0 for slot in range(self.me.size))
        self.me = evolve(self.me, epoch=epoch, members=members)
        self._view_changed()
        self._log = logger.bind(index=self.me.index, epoch=str(epoch))
        self.peer_views = dict.fromkeys(self.peers)

    def move_to(self, epoch: Epoch, reason: str) -> None:
        """Auto mode, never ready in the current generation: join a newer one in place (no state to lose).

        Every link of the old generation is dropped; the dial loops and the accept loop re-form them in the new one.
        """
        if epoch <= self.me.epoch or self.me.sealed or self.state in (MeshState.STOPPING, MeshState.FENCED):
            return
        self.generation_changes += 1
        self._change_epoch(epoch)
        self._log.info("moved to generation {}: {}", epoch, reason)
        self._publish("generation", epoch=epoch.to_json(), reason=reason)
        self.on_generation_change(f"moved to generation {epoch}")

    def admits(self, peer: int, incarnation: int) -> bool:
        """Whether a connection from this incarnation of ``peer`` may become its link (write-once membership)."""
        return self.me.admits(peer, incarnation)

    def mint_above(self, sealed: Epoch, reason: str) -> None:
        """Auto mode: our generation already has another process in our slot (a SEALED refusal): mint a newer one."""
        assert self._mint is not None, "mint_above() outside auto mode"
        if sealed < self.me.epoch:
            return  # we already moved past it
        self.move_to(self._mint(sealed), reason)

    def peer_view(self, peer: int, view: View) -> None:
        if view.epoch != self.me.epoch:
            return  # a view of another generation, in flight across a generation change
        self.peer_views[peer] = view
        self._reevaluate(f"peer {peer} reported its view")

    def link_up(self, peer: int, hello: Hello, dialer: int) -> None:
        status = self.peers[peer]
        direction = "dialed" if dialer == self.me.index else "accepted"
        if status.state is PeerState.UP and status.incarnation == hello.incarnation:
            self._log.debug("link {} moved to the connection {} (tie-break or reconnect)", peer, direction)
            self.peer_views[peer] = None  # the peer sends its view again on the new connection, and so do we:
            if self._full():  # our view is unchanged, so only this peer needs it (not a round to every peer)
                self.on_view_needed(peer)
            return
        if status.incarnation is not None and status.incarnation != hello.incarnation:
            self._log.info("peer {} restarted (incarnation {:016x})", peer, hello.incarnation)
            self._publish("peer_restarted", peer=peer, incarnation=f"{hello.incarnation:016x}")
        if self.me.members is not None and self.me.members[peer] == 0:
            members = list(self.me.members)
            members[peer] = hello.incarnation
            self.me = evolve(self.me, members=tuple(members))
        status.state = PeerState.UP
        status.epoch = hello.epoch
        status.incarnation = hello.incarnation
        self._view_changed()
        self.peer_views[peer] = None
        status.since = self._wall_clock()
        status.connects += 1
        self._log.info("link {} up ({}, epoch {})", peer, direction, hello.epoch)
        self._publish("link_up", peer=peer, epoch=hello.epoch.to_json(), direction=direction)
        self._announce_view()
        self._reevaluate(f"link {peer} up")

    def link_down(self, peer: int, reason: str) -> None:
        status = self.peers[peer]
        status.state = PeerState.DOWN
        status.epoch = None
        self._view_changed()
        self.peer_views[peer] = None
        status.since = self._wall_clock()
        status.failures += 1
        status.last_error = reason
        self._log.warning("link {} down: {}", peer, reason)
        self._publish("link_down", peer=peer, reason=reason)
        self._reevaluate(f"link {peer} down: {reason}")

    def attempt_failed(self, peer: int, reason: str) -> None:
        """A dial or handshake toward a peer that is down failed; only its row changes.

        ``last_error`` keeps why the link went down (the more useful fact) once there has been a link.
        """
        status = self.peers[peer]
        status.failures += 1
        if status.last_attempt_error != reason:
            self._log.debug("peer {}: {}", peer, reason)
        status.last_attempt_error = reason
        if status.connects == 0:
            status.last_error = reason

    def inbound_refused(self, reason: str) -> None:
        self._log.warning("inbound connection closed: {}", reason)

    def newer_epoch_seen(self, proof: Fenced | NewerGeneration) -> None:
        """A handshake showed a newer epoch: fence (fixed epochs, or sealed), or move to it (auto, never ready)."""
        if isinstance(proof, Fenced):
            self.fence(proof)
        else:
            self.move_to(proof.epoch, f"peer {proof.peer} runs it")

    def fence(self, fenced: Fenced) -> None:
        """A newer epoch exists: end the whole process with EXIT_FENCED."""
        if self.state is MeshState.FENCED:
            return
        self.exit_code = EXIT_FENCED
        self.exit_reason = str(fenced)
        self._set_mesh_state(MeshState.FENCED, str(fenced))
        self._log.error("fenced: {}; exiting with {}", fenced, EXIT_FENCED)
        self.on_fence()

    async def exit_after_watchers_drained(self) -> None:
        """The end of a fence: let watchers take the "fenced" event (bounded), linger a moment, end everything."""
        with trio.move_on_after(DRAIN_LIMIT):
            await self.events.drained()
        await trio.sleep(FENCE_LINGER)
        self.cancel()

    def stop(self, reason: str) -> None:
        """A requested, orderly stop: exit 0."""
        if self.state in (MeshState.STOPPING, MeshState.FENCED):
            return
        self.exit_reason = reason
        self._set_mesh_state(MeshState.STOPPING, reason)

    def cancel(self) -> None:
        """End every task of the daemon."""
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> dict[str, Any]:
        """The object ``meshd status --json`` prints and the admin ``status`` op answers."""
        return {
            "cluster": self.me.cluster,
            "index": self.me.index,
            "size": self.me.size,
            "epoch": None if self.state is MeshState.AWAITING else self.me.epoch.to_json(),
            "mode": self.mode,
            "sealed": self.me.sealed,
            "generation_changes": self.generation_changes,
            "incarnation": f"{self.me.incarnation:016x}",
            "state": str(self.state),
            "state_since": self.state_since,
            "started": self.started,
            "peers": [peer.to_json() for peer in self.peers.values()],
        }
