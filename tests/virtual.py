"""Helpers for running real meshd daemons on the in-memory network, in trio's virtual time.

Everything here is test scaffolding around ``meshd.simnet``: a network that remembers every connection attempt and
which two stream ends make up each connection, and a ``Node`` that runs one daemon in its own cancel scope while
recording the events it publishes, stamped with the virtual time at which they were published.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import trio
import trio.testing
from attrs import define, field

from meshd.config import Config, structure
from meshd.core.address import Address
from meshd.core.status import MeshState
from meshd.core.wire import Epoch, Frame, FrameDecoder
from meshd.daemon import Daemon, Settings
from meshd.link import Session
from meshd.simnet import MemoryListener, MemoryNetwork

CLUSTER = "t"
# Virtual seconds between the starts of the daemons of a mesh: far less than the first back-off.
STAGGER = 0.001
# A daemon publishing this many events without virtual time moving is in a loop that never waits (nothing a
# correct daemon does comes near it); the test fails at once instead of spinning until the wall-clock guard.
STORM_EVENTS = 100
# Virtual seconds within which a fresh mesh on the in-memory network must be ready (it takes a few milliseconds).
FORM_WITHIN = 2.0
# Tolerance for comparing virtual times computed along different float paths (sums of intervals vs deadlines).
EPS = 1e-9


def address(index: int) -> Address:
    return Address(f"10.0.0.{index}", 7000)


def make_config(size: int, *, peers: Sequence[Address] | None = None, name: str = CLUSTER, **timeouts: float) -> Config:
    peers = list(peers) if peers is not None else [address(index) for index in range(size)]
    return structure({"cluster": {"name": name, "peers": [str(peer) for peer in peers]}, "timeouts": timeouts})


class EventStorm(Exception):
    """A daemon published events in a loop without virtual time passing."""


class TrackedStream(trio.abc.Stream):
    """One end of an in-memory connection, remembering whether its owner closed it; it can be black-holed."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.connection: Connection | None = None
        self.closed = False
        self.blackholed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.blackholed:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            data = await self.inner.receive_some(max_bytes)
            if not self.blackholed:
                return data
            if not data:  # the close is dropped too: silence for ever
                await trio.sleep_forever()

    async def send_eof(self) -> None:
        await self.inner.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@define(eq=False)
class Connection:
    """Both ends of one connection opened on the network."""

    number: int
    opened: float
    source: Address
    target: Address
    dialer_end: TrackedStream
    listener_end: TrackedStream

    @property
    def ends(self) -> tuple[TrackedStream, TrackedStream]:
        return self.dialer_end, self.listener_end

    @property
    def open(self) -> bool:
        return not any(end.closed for end in self.ends)

    def blackhole(self) -> None:
        """Drop everything either end sends from now on, closes included: both ends just see silence."""
        for end in self.ends:
            end.blackholed = True


class TracingNetwork(MemoryNetwork):
    """A MemoryNetwork that records every connect attempt and pairs up the two ends of every connection."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[float, Address, Address]] = []
        self.connections: list[Connection] = []
        self._offered: TrackedStream | None = None

    async def listen(self, address: Address) -> Sequence[MemoryListener]:
        listeners = await super().listen(address)
        for listener in listeners:
            listener.offer = self._tracking_offer(listener.offer)  # type: ignore[method-assign]
        return listeners

    def _tracking_offer(self, offer: Callable[[trio.abc.Stream], None]) -> Callable[[trio.abc.Stream], None]:
        def tracked(stream: trio.abc.Stream) -> None:
            end = TrackedStream(stream)
            offer(end)
            self._offered = end

        return tracked

    async def connect(self, source: Address, address: Address) -> trio.abc.Stream:
        now = trio.current_time()
        self.attempts.append((now, source, address))
        near = await super().connect(source, address)
        # MemoryNetwork.connect offers the far end to the listener and returns the near end without yielding in
        # between, so no other task can have replaced the offered end by now.
        far, self._offered = self._offered, None
        assert far is not None
        connection = Connection(len(self.connections), now, source, address, TrackedStream(near), far)
        for end in connection.ends:
            end.connection = connection
        self.connections.append(connection)
        return connection.dialer_end

    def attempts_to(self, target: Address) -> list[float]:
        return [when for when, _, to in self.attempts if to == target]

    @staticmethod
    async def sever(connection: Connection) -> None:
        """Break one connection at both ends at once, as a reset from the network would."""
        for end in connection.ends:
            await trio.aclose_forcefully(end)

    async def kill(self, node: Node) -> None:
        """End a daemon as kill -9 would: its tasks stop mid-step and the kernel closes every socket it held.

        Cancelling the daemon's scope alone leaves in-memory streams of up links open (nothing closes them on
        the way out, as process exit would), so the ends the node held are closed here.
        """
        node.scope.cancel()
        await node.finished.wait()
        mine = node.daemon.mesh_address
        for connection in self.connections:
            if connection.source == mine:
                await trio.aclose_forcefully(connection.dialer_end)
            if connection.target == mine:
                await trio.aclose_forcefully(connection.listener_end)


@define(eq=False)
class Node:
    """One daemon running in its own cancel scope, with every event it publishes recorded in virtual time."""

    daemon: Daemon
    scope: trio.CancelScope = field(factory=trio.CancelScope)
    exit_code: int | None = None
    finished: trio.Event = field(factory=trio.Event)
    finished_at: float | None = None
    events: list[tuple[float, dict[str, Any]]] = field(factory=list)

    @property
    def index(self) -> int:
        return self.daemon.me.index

    @property
    def state(self) -> MeshState:
        return self.daemon.model.state

    def session(self, peer: int) -> Session | None:
        return self.daemon.links[peer]._session

    def events_of(self, kind: str, **fields: Any) -> list[tuple[float, dict[str, Any]]]:
        return [
            (when, event)
            for when, event in self.events
            if event["event"] == kind and all(event.get(key) == value for key, value in fields.items())
        ]

    async def main(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._record)
            with self.scope:
                self.exit_code = await self.daemon.run(task_status=task_status)
            self.finished_at = trio.current_time()
            self.finished.set()
            nursery.cancel_scope.cancel()

    async def _record(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.daemon.bus.subscribe() as channel:
            task_status.started()
            async for event in channel:
                now = trio.current_time()
                self.events.append((now, event.to_json()))
                at_once = sum(1 for when, _ in self.events[-STORM_EVENTS:] if when == now)
                if at_once >= STORM_EVENTS:
                    raise EventStorm(
                        f"node {self.index} published {at_once} events at virtual time {now}: {event.to_json()}"
                    )


def make_daemon(
    net: MemoryNetwork,
    config: Config,
    index: int,
    *,
    epoch: int = 1,
    incarnation: int | None = None,
    seed: int | None = None,
) -> Daemon:
    return Daemon(
        Settings(config, index, Epoch(epoch), None),
        net=net.for_node(config.cluster.peers[index]),
        rng=random.Random(index if seed is None else seed),
        incarnation=0x1000 + index if incarnation is None else incarnation,
    )


async def start_node(nursery: trio.Nursery, daemon: Daemon) -> Node:
    """Start a daemon; returns once its mesh port listens."""
    node = Node(daemon)
    await nursery.start(node.main)
    return node


async def start_mesh(
    nursery: trio.Nursery,
    net: MemoryNetwork,
    config: Config,
    *,
    epoch: int = 1,
    reverse: bool = False,
    stagger: float = STAGGER,
) -> list[Node]:
    """Start one daemon per index, ``stagger`` virtual seconds apart; returns them by index.

    Each daemon dials at once and reaches only those already listening (the others are retried only after the
    first back-off, far later), so with the default order every link is dialed by its higher index, and with
    ``reverse`` by its lower index. With ``stagger=0`` all start at one instant and every pair dials both ways.
    """
    order = range(config.size - 1, -1, -1) if reverse else range(config.size)
    nodes: dict[int, Node] = {}
    for index in order:
        nodes[index] = await start_node(nursery, make_daemon(net, config, index, epoch=epoch))
        if stagger:
            await trio.sleep(stagger)
    return [nodes[index] for index in range(config.size)]


async def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.001) -> None:
    """Wait (in virtual time) until ``predicate`` holds; TooSlowError after ``timeout`` virtual seconds.

    Then let every other task run until it blocks (without the clock moving), so that the event recorders have
    caught up with what the daemons published up to this instant.
    """
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)
    await trio.testing.wait_all_tasks_blocked()


def all_ready(nodes: Sequence[Node]) -> bool:
    return all(node.state is MeshState.READY for node in nodes)


async def read_until_eof(stream: trio.abc.Stream, decoder: FrameDecoder) -> list[Frame]:
    """Every frame the far end sends until it closes the connection."""
    frames: list[Frame] = []
    while True:
        data = await stream.receive_some(65536)
        if not data:
            decoder.receive_eof()
        else:
            decoder.receive_data(data)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
        if not data:
            return frames


def link_snapshot(nodes: Sequence[Node]) -> dict[tuple[int, int], tuple[object, int, int]]:
    """(node, peer) -> (session object, connects, failures)."""
    return {
        (node.index, peer): (node.session(peer), status.connects, status.failures)
        for node in nodes
        for peer, status in node.daemon.model.rows.items()
    }
