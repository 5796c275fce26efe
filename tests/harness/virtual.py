"""Helpers for running real meshd daemons on the in-memory network, in trio's virtual time.

Everything here is test scaffolding around the simulation's network (``meshd.sim.network``) in its exact-time
preset: a network that remembers every connection attempt and every connection, and a ``Node`` that runs one daemon
in its own cancel scope while recording the events it publishes, stamped with the virtual time at which they were
published; checks of the links a mesh settled on; and, for tests that run daemons without ``Node``, timeouts on the
1/8 s float grid and a watchdog that fails a test whose virtual time stands still (a livelock).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from attrs import define, field

from meshd.config import Config, structure
from meshd.core.address import Address
from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Epoch, Frame, FrameDecoder
from meshd.daemon import Daemon, Settings
from meshd.link import Session
from meshd.sim.network import EXACT_LATENCY, Attachment, ProcessNetwork, SimConnection, SimNetwork, SimStream

# Mark of every virtual-time test: tests/conftest.py's real-time guard, since virtual time cannot bound a livelock.
virtual_time = pytest.mark.usefixtures("wall_clock_guard")

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


# ----- the links a mesh settled on

LINK_EVENTS = ("link_up", "link_down", "peer_restarted")


def pairs(size: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(size), 2))


def link_events(events: list[tuple[float, dict[str, object]]]) -> list[tuple[float, dict[str, object]]]:
    """The events about links, leaving out those about the mesh state."""
    return [(when, event) for when, event in events if event["event"] in LINK_EVENTS]


def assert_one_connection_per_pair(net: TracingNetwork, nodes: list[Node]) -> None:
    """Each pair's two links are the two ends of one open connection, and no other connection is left open."""
    live = set()
    for a, b in pairs(len(nodes)):
        session_a, session_b = nodes[a].session(b), nodes[b].session(a)
        assert session_a is not None and session_b is not None, f"pair {a}-{b} is not linked on both ends"
        assert nodes[a].daemon.model.rows[b].state is PeerState.UP
        assert nodes[b].daemon.model.rows[a].state is PeerState.UP
        # Both ends agree on who dialed and on which incarnation is behind the other end.
        assert session_a.origin.dialer == session_b.origin.dialer
        assert session_a.origin.peer_incarnation == nodes[b].daemon.me.incarnation
        assert session_b.origin.peer_incarnation == nodes[a].daemon.me.incarnation
        # And they really are the two ends of the same connection, opened by that dialer.
        end_a, end_b = session_a.conn.stream, session_b.conn.stream
        connection = end_a.connection  # type: ignore[attr-defined]
        assert connection is not None and connection is end_b.connection  # type: ignore[attr-defined]
        assert end_a is not end_b
        assert connection.open
        dialer = nodes[session_a.origin.dialer]
        assert connection.source == dialer.daemon.mesh_address
        assert connection.dialer is (end_a if dialer.index == a else end_b)
        live.add(connection.number)
    leaked = [c for c in net.connections if c.open and c.number not in live]
    assert not leaked, f"connections left open besides the links: {leaked}"


# ----- daemons run without Node: grid timeouts and a livelock watchdog

# The cluster name of grid_config's clusters.
GRID_CLUSTER = "virtual-generations"
# Timeouts that are multiples of 1/8 s, so that every timer lands exactly on the float grid (see
# tests/test_peer_silence.py::test_heartbeats_on_a_non_dyadic_interval_do_not_livelock_in_virtual_time).
GRID_TIMEOUTS = {
    "connect": 0.5,
    "handshake": 0.5,
    "heartbeat_interval": 0.125,
    "heartbeat_timeout": 0.5,
    "backoff_initial": 0.0625,
    "backoff_max": 0.5,
}
# Real seconds virtual time may stand still before the watchdog calls it a livelock, and how often it looks.
STALL_LIMIT = 3.0
WATCHDOG_PERIOD = 0.25


def grid_config(size: int, **timeouts: float) -> Config:
    """A cluster named GRID_CLUSTER at ``address(0..size-1)`` with GRID_TIMEOUTS, overridden by ``timeouts``."""
    return make_config(size, name=GRID_CLUSTER, **{**GRID_TIMEOUTS, **timeouts})


class Livelock(Exception):
    """Raised by the real-time guard. Not a TimeoutError: that is an OSError, which meshd's I/O code converts."""


async def virtual_time_watchdog(real_limit: float = STALL_LIMIT) -> None:
    """Raise Livelock when virtual time stands still for ``real_limit`` real seconds.

    The task waits on a thread between checks, which counts as blocked, so it never holds the MockClock back; and
    unlike the SIGALRM guard it fails the test from an ordinary task, so the nursery shuts down cleanly.
    """
    last, stalled = trio.current_time(), 0.0
    while True:
        await trio.to_thread.run_sync(time.sleep, WATCHDOG_PERIOD, abandon_on_cancel=True)
        now = trio.current_time()
        if now != last:
            last, stalled = now, 0.0
            continue
        stalled += WATCHDOG_PERIOD
        if stalled >= real_limit:
            raise Livelock(f"virtual time stood still at {now} for {real_limit} real seconds")
