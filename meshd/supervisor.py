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
from attrs import define
from loguru import logger

from meshd.config import Address
from meshd.errors import Fenced
from meshd.handshake import Identity
from meshd.protocol import Epoch, Hello

EXIT_OK = 0
EXIT_FENCED = 75
# Events a slow watcher may lag behind before it is cut off (it can reconnect and ask for status).
WATCH_BUFFER = 256
# After a fence, how long the process lingers so that watchers receive the "fenced" event. Nothing can undo a
# fence in that time: the mesh state is final and no link changes it.
FENCE_LINGER = 0.05


class MeshState(enum.StrEnum):
    FORMING = "forming"  # not every link has been up at once yet
    READY = "ready"  # every link is up
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

    def publish(self, event: dict[str, Any]) -> None:
        for channel in list(self._watchers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._watchers.discard(channel)
                channel.close()

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
    def __init__(self, me: Identity, addresses: list[Address], wall_clock: Callable[[], float] = time.time) -> None:
        self.me = me
        self.events = EventBus()
        self._wall_clock = wall_clock
        self.started = wall_clock()
        self.state = MeshState.FORMING
        self.state_since = self.started
        self.peers = {
            index: PeerStatus(index, address, since=self.started)
            for index, address in enumerate(addresses)
            if index != me.index
        }
        self.exit_code = EXIT_OK
        self.exit_reason: str | None = None
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

    def _reevaluate(self, reason: str) -> None:
        if self.state in (MeshState.STOPPING, MeshState.FENCED):
            return
        if all(peer.state is PeerState.UP for peer in self.peers.values()):
            self._set_mesh_state(MeshState.READY, reason)
        elif self.state is MeshState.READY:
            self._set_mesh_state(MeshState.DEGRADED, reason)

    def link_up(self, peer: int, hello: Hello, dialer: int) -> None:
        status = self.peers[peer]
        direction = "dialed" if dialer == self.me.index else "accepted"
        if status.state is PeerState.UP and status.incarnation == hello.incarnation:
            self._log.debug("link {} moved to the connection {} (tie-break or reconnect)", peer, direction)
            return
        if status.incarnation is not None and status.incarnation != hello.incarnation:
            self._log.info("peer {} restarted (incarnation {:016x})", peer, hello.incarnation)
            self._publish("peer_restarted", peer=peer, incarnation=f"{hello.incarnation:016x}")
        status.state = PeerState.UP
        status.epoch = hello.epoch
        status.incarnation = hello.incarnation
        status.since = self._wall_clock()
        status.connects += 1
        self._log.info("link {} up ({}, epoch {})", peer, direction, hello.epoch)
        self._publish("link_up", peer=peer, epoch=hello.epoch.to_json(), direction=direction)
        self._reevaluate(f"link {peer} up")

    def link_down(self, peer: int, reason: str) -> None:
        status = self.peers[peer]
        status.state = PeerState.DOWN
        status.epoch = None
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

    def fence(self, fenced: Fenced) -> None:
        """A newer epoch exists: end the whole process with EXIT_FENCED."""
        if self.state is MeshState.FENCED:
            return
        self.exit_code = EXIT_FENCED
        self.exit_reason = str(fenced)
        self._set_mesh_state(MeshState.FENCED, str(fenced))
        self._log.error("fenced: {}; exiting with {}", fenced, EXIT_FENCED)
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + FENCE_LINGER)

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
            "epoch": self.me.epoch.to_json(),
            "incarnation": f"{self.me.incarnation:016x}",
            "state": str(self.state),
            "state_since": self.state_since,
            "started": self.started,
            "peers": [peer.to_json() for peer in self.peers.values()],
        }
