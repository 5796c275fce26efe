"""Helpers for running real meshd daemons on the in-memory network, in trio's virtual time.

Everything here is test scaffolding around the simulation's network (``meshd.sim.network``) in its exact-time
preset: a network that remembers every connection attempt and every connection, and a ``Node`` that runs one daemon
in its own cancel scope while recording the events it publishes, stamped with the virtual time at which they were
published.
"""

from __future__ import annotations

import itertools
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
from meshd.sim.network import EXACT_LATENCY, Attachment, ProcessNetwork, SimConnection, SimNetwork, SimStream

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


class TracingNetwork(SimNetwork):
    """The simulation's network in its exact-time preset, delivering at once (in a system task), that remembers
    every connect attempt and every connection it opened (``connections`` holds only the open ones)."""

    def __init__(self) -> None:
        super().__init__(random.Random(0), EXACT_LATENCY, tick=None)
        self.attempts: list[tuple[float, Address, Address]] = []
        self.all_connections: list[SimConnection] = []
        self._pids = itertools.count()
        self.attach()

    def for_node(self, address: Address) -> ProcessNetwork:
        """The network of a new process on host ``address`` (a daemon, or the test playing a peer or a stranger)."""
        return self.for_process(Attachment(next(self._pids), address))

    async def connect(self, process: Attachment, address: Address) -> SimStream:
        self.attempts.append((trio.current_time(), process.address, address))
        stream = await super().connect(process, address)
        self.all_connections.append(stream.connection)
        return stream

    def attempts_to(self, target: Address) -> list[float]:
        return [when for when, _, to in self.attempts if to == target]


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

    @property
    def net(self) -> ProcessNetwork:
        """The daemon's network: the simulated network, and the process the daemon runs as on it."""
        net = self.daemon.net
        assert isinstance(net, ProcessNetwork)
        return net

    @property
    def process(self) -> Attachment:
        return self.net.process

    async def kill(self, *, silent: bool = False) -> None:
        """End the daemon as kill -9 would: from this instant its kernel has closed every socket it held (or, if
        its host crashed, ``silent``, nothing is heard from it any more), and its tasks stop mid-step."""
        self.net.network.kill(self.process, silent=silent)
        self.scope.cancel()
        await self.finished.wait()

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
    net: TracingNetwork,
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
    net: TracingNetwork,
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
