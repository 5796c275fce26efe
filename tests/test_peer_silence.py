"""Failure mode: a peer or a connection goes silent, or one link breaks. A peer that stops sending (SIGSTOP, a hung
host, a black-holed connection) is seen down by heartbeats within ``heartbeat_timeout``; a broken link takes down
only itself; a silent connection the dialer gave up on is replaced at once; heartbeat timers never spin.

Variants:
- virtual time (``tests.harness.virtual``, under ``autojump_clock``): heartbeat loss detected at the exact instant,
  a paused node seen down and rejoining, a reset link that disturbs no other link, a black-holed connection replaced
  by its dialer, heartbeats on a non-dyadic interval;
- real processes (``tests.harness.procs``): a daemon frozen with SIGSTOP is seen down by heartbeats (no FIN or RST
  reaches its peers) and the mesh recovers after SIGCONT, connections waiting in its listen backlog included.

Partitions and loss on the simulated network are exercised by the simulation (tests/test_sim.py); what a stale
process does once it wakes up after the others moved on is in test_stale_and_fencing.py.
"""

from __future__ import annotations

import signal
import time

import pytest
import trio

from meshd.core.status import EndCause, LinkEnd, MeshState, PeerState
from meshd.core.wire import NO_TARGET, Accept, Epoch, FrameDecoder, Heartbeat, Hello, View, encode
from meshd.daemon import Daemon, Settings
from tests.harness.procs import DISTURBANCES, Harness, is_ready, peer_row, watching
from tests.harness.virtual import (
    CLUSTER,
    EPS,
    FORM_WITHIN,
    STAGGER,
    TracingNetwork,
    address,
    all_ready,
    assert_one_connection_per_pair,
    grid_config,
    link_events,
    link_snapshot,
    make_config,
    make_daemon,
    read_until_eof,
    start_mesh,
    start_node,
    virtual_time,
    virtual_time_watchdog,
    wait_until,
)

# How long a real mesh may take to settle after a fault heals before it must stay ready.
SETTLE = 1.0

# ----- virtual time


class FakePeer:
    """The test plays peer ``index`` by hand over the in-memory network."""

    def __init__(self, stream: trio.abc.Stream, index: int, epoch: int = 1, incarnation: int = 0xFA4E) -> None:
        self.stream = stream
        self.index = index
        self.hello = Hello(CLUSTER, index, NO_TARGET, Epoch(epoch), incarnation)
        self.decoder = FrameDecoder()
        self.last_sent: float | None = None
        self.eof_at: float | None = None
        self.received: list[object] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.last_sent = trio.current_time()

    async def handshake(self) -> Hello:
        """Exchange hellos with the daemon, accept it, then agree with its view of the mesh; returns its hello."""
        await self.send(encode(self.hello))
        frame = await self._next_frame()
        assert isinstance(frame, Hello)
        await self.send(encode(Accept()))
        assert isinstance(await self._next_frame(), Accept)
        slots = [0] * (max(frame.sender, self.index) + 1)
        slots[frame.sender], slots[self.index] = frame.incarnation, self.hello.incarnation
        await self.send(encode(View(self.hello.epoch, tuple(slots))))
        return frame

    async def _next_frame(self) -> object:
        while (frame := self.decoder.next_frame()) is None:
            self.decoder.receive_data(await self.stream.receive_some(65536))
        return frame

    async def drain(self) -> None:
        """Read (and keep) whatever the daemon sends until it closes the connection; note when."""
        self.received += await read_until_eof(self.stream, self.decoder)
        self.eof_at = trio.current_time()


@virtual_time
@pytest.mark.parametrize("beats", [0, 7])
async def test_heartbeat_loss_is_detected_exactly_at_the_timeout(autojump_clock, beats):
    """A peer that stops sending but keeps the connection open is down at last frame + heartbeat_timeout, exactly."""
    net = TracingNetwork()
    config = make_config(2, heartbeat_interval=0.25, heartbeat_timeout=1.0)
    timeout = config.timeouts.heartbeat_timeout
    (listener,) = await net.for_node(address(1)).listen(address(1))
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, make_daemon(net, config, 0))
        peer = FakePeer(await listener.accept(), 1)
        theirs = await peer.handshake()
        assert (theirs.sender, theirs.target) == (0, 1)
        nursery.start_soon(peer.drain)
        await wait_until(lambda: node.state is MeshState.READY, 0.1)
        for _ in range(beats):  # keep the link alive well past one timeout...
            await trio.sleep(0.5)
            await peer.send(encode(Heartbeat()))
        assert not node.events_of("link_down")
        silent_from = peer.last_sent  # ...then fall silent, connection still open
        assert silent_from is not None
        await wait_until(lambda: bool(node.events_of("link_down")), 2 * timeout)
        [(down_at, event)] = node.events_of("link_down")
        assert event["peer"] == 1
        assert "no heartbeat" in event["reason"]
        assert down_at == pytest.approx(silent_from + timeout, abs=EPS)
        # The daemon closed its end at that same instant, and had kept sending heartbeats until then.
        await wait_until(lambda: peer.eof_at is not None, 0.1)
        assert peer.eof_at == pytest.approx(down_at, abs=EPS)
        assert sum(isinstance(frame, Heartbeat) for frame in peer.received) >= beats
        assert node.daemon.model.rows[1].state is PeerState.DOWN
        assert node.state is MeshState.DEGRADED
        nursery.cancel_scope.cancel()


@virtual_time
async def test_paused_node_is_seen_down_within_the_heartbeat_timeout_and_rejoins(autojump_clock):
    net = TracingNetwork()
    config = make_config(4, heartbeat_interval=0.25, heartbeat_timeout=1.0)
    timeouts = config.timeouts
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.1)
        paused_at = trio.current_time()
        net.pause(nodes[3].process)
        await wait_until(
            lambda: all(node.state is MeshState.DEGRADED for node in nodes), 2 * timeouts.heartbeat_timeout
        )
        for node in nodes[:3]:
            [(down_at, event)] = node.events_of("link_down")
            assert event["peer"] == 3
            assert "no heartbeat" in event["reason"]
            # The last heartbeat from node 3 arrived at most one interval before the pause.
            assert paused_at + timeouts.heartbeat_timeout - timeouts.heartbeat_interval - EPS <= down_at
            assert down_at <= paused_at + timeouts.heartbeat_timeout + EPS
        # The paused node's own timers run on: it sees every peer go silent too.
        assert {event["peer"] for _, event in nodes[3].events_of("link_down")} == {0, 1, 2}
        await trio.sleep(3)
        # Links between the running nodes were never disturbed.
        for node in nodes[:3]:
            assert [event["peer"] for _, event in node.events_of("link_down")] == [3]
        net.resume(nodes[3].process)
        await wait_until(lambda: all_ready(nodes), timeouts.backoff_max + timeouts.handshake + 1)
        await trio.sleep(2 * timeouts.heartbeat_timeout)
        assert all_ready(nodes)
        assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


@virtual_time
async def test_a_failing_link_cancels_only_its_own_scope(autojump_clock):
    net = TracingNetwork()
    config = make_config(4)
    timeouts = config.timeouts
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(timeouts.heartbeat_timeout)  # settled
        before = link_snapshot(nodes)
        events_before = [len(node.events) for node in nodes]
        broken = nodes[1].session(2)
        assert broken is not None
        net.reset(broken.conn.stream.connection)  # type: ignore[attr-defined]
        await wait_until(lambda: bool(nodes[1].events_of("link_down")) and bool(nodes[2].events_of("link_down")), 0.1)
        await wait_until(lambda: all_ready(nodes), 1.0)
        await trio.sleep(3 * timeouts.heartbeat_timeout)  # long enough for any other link to time out, were it hurt
        after = link_snapshot(nodes)
        for key, (session, connects, failures) in before.items():
            if key in ((1, 2), (2, 1)):
                continue
            assert after[key][0] is session, f"link {key} was replaced"
            assert after[key][1:] == (connects, failures), f"link {key} counters changed"
        for a, b in ((1, 2), (2, 1)):
            assert after[(a, b)][0] is not before[(a, b)][0]
            assert after[(a, b)][1] > before[(a, b)][1]
            assert after[(a, b)][2] > before[(a, b)][2]
            [(_, event)] = nodes[a].events_of("link_down")
            assert event["peer"] == b
        # The bystanders' links saw nothing. (Their mesh state may dip: readiness is agreement of views, and the
        # views of nodes 1 and 2 changed while their link was down.)
        for node, count in zip(nodes, events_before, strict=True):
            if node.index in (0, 3):
                assert link_events(node.events[count:]) == []
                assert {event["event"] for _, event in node.events[count:]} <= {"degraded", "ready"}
        assert all_ready(nodes)
        assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


@virtual_time
@pytest.mark.parametrize("dialer", [1, 0], ids=["higher-index-dialed", "lower-index-dialed"])
async def test_a_dialer_that_gave_up_on_a_silent_connection_replaces_it_at_once(autojump_clock, dialer):
    """The connection goes silent; the dialer (quicker heartbeat timeout) gives up and dials again. The other end,
    still believing in the old connection, takes the new one in its place: it never sees the link go down."""
    net = TracingNetwork()
    other = 1 - dialer
    configs = {dialer: make_config(2, heartbeat_timeout=0.5), other: make_config(2, heartbeat_timeout=2.0)}
    async with trio.open_nursery() as nursery:
        nodes = {other: await start_node(nursery, make_daemon(net, configs[other], other))}
        await trio.sleep(STAGGER)  # the other end's first dial is refused, so the link is the dialer's
        nodes[dialer] = await start_node(nursery, make_daemon(net, configs[dialer], dialer))
        await wait_until(lambda: all_ready(list(nodes.values())), FORM_WITHIN)
        await trio.sleep(0.5)
        old = nodes[other].session(dialer)
        assert old is not None and old.origin.dialer == dialer
        connects = nodes[other].daemon.model.rows[dialer].connects
        silent_at = trio.current_time()
        net.blackhole(old.conn.stream.connection)  # type: ignore[attr-defined]
        await wait_until(lambda: bool(nodes[dialer].events_of("link_down")), 1.0)
        [(down_at, event)] = nodes[dialer].events_of("link_down")
        assert "no heartbeat" in event["reason"]
        assert silent_at + 0.5 - 0.25 - EPS <= down_at <= silent_at + 0.5 + EPS
        await wait_until(lambda: nodes[dialer].state is MeshState.READY, 0.1)
        assert trio.current_time() == pytest.approx(down_at, abs=EPS)  # redialed and linked at once
        new = nodes[other].session(dialer)
        assert new is not None and new is not old
        assert new.origin.dialer == dialer
        assert old.failure == LinkEnd(EndCause.LOCAL, "replaced by a newer connection")
        assert nodes[other].daemon.model.rows[dialer].connects == connects  # the same link, moved
        await trio.sleep(3 * 2.0)  # past the patient end's timeout for the old connection
        assert nodes[other].events_of("link_down") == []
        assert nodes[other].state is MeshState.READY
        assert all_ready(list(nodes.values()))
        assert_one_connection_per_pair(net, [nodes[0], nodes[1]])
        nursery.cancel_scope.cancel()


# ----- virtual time: timers on the virtual clock


@virtual_time
async def test_heartbeats_on_a_non_dyadic_interval_do_not_livelock_in_virtual_time(autojump_clock):
    """Two daemons with heartbeat_interval 0.1 must let virtual time pass (43 * 0.1 is where the grid broke).

    Regression: heartbeats slept until ``(floor(now / interval) + 1) * interval``; when the clock stood exactly on
    a grid point k * interval whose float quotient rounds below k (k = 43 for 0.1), that deadline was ``now``
    itself, the sleep returned at once and the sender spun without ever blocking, so a MockClock never advanced
    again (on a real clock it only spins until the time moves past the point). ``heartbeat.next_tick`` fixed it.
    """
    net = TracingNetwork()
    config = grid_config(2, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    daemons = [Daemon(Settings(config, index, Epoch(1), None), net=net.for_node(address(index))) for index in range(2)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(virtual_time_watchdog)
        for daemon in daemons:
            await nursery.start(daemon.run)
        await trio.sleep(10.0)
        states = [daemon.model.state for daemon in daemons]
        nursery.cancel_scope.cancel()
    assert states == [MeshState.READY, MeshState.READY]


# ----- real processes


async def test_sigstop_peer_is_seen_down_within_heartbeat_timeout_then_recovers(harness: Harness):
    """A real SIGSTOP, real sockets and listen backlogs; the exact detection instant is decided by
    test_paused_node_is_seen_down_within_the_heartbeat_timeout_and_rejoins (here: a bound a busy machine meets)."""
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    frozen, survivors = daemons[2], daemons[:2]
    timeout = cluster.timeouts["heartbeat_timeout"]

    async with watching(harness, survivors) as watches:
        stopped_wall, stopped = time.time(), trio.current_time()
        frozen.signal(signal.SIGSTOP)

        async def probe():
            found = await harness.statuses(survivors)
            down = all(s is not None and peer_row(s, frozen.index)["state"] == "down" for s in found)
            return down, found

        found = await harness.eventually(probe, "the survivors to see the stopped daemon down", interval=0.02)
        seen_down = trio.current_time() - stopped
        for daemon, status in zip(survivors, found, strict=True):
            harness.check(status["state"] == "degraded", f"{daemon.name} is {status['state']}, expected degraded")

        frozen.signal(signal.SIGCONT)
        resumed = trio.current_time()
        await harness.wait_ready(daemons, epoch=1)
        recovered = trio.current_time() - resumed
        # Connections the survivors dialed during the freeze wait in the frozen daemon's backlog and may flap the
        # links for a moment after SIGCONT; after that the mesh must stay ready.
        await trio.sleep(SETTLE)
        marks = [len(watch.events) for watch in watches]
        await trio.sleep(3 * timeout)
        settled = await harness.statuses(daemons)

    for watch, mark in zip(watches, marks, strict=True):
        late = [event for event in watch.events[mark:] if event["event"] in DISTURBANCES]
        harness.check(not late, f"the mesh at {watch.address} did not settle after SIGCONT: {late}")
    for daemon, status in zip(daemons, settled, strict=True):
        harness.check(is_ready(status, 1), f"{daemon.name} did not stay ready after SIGCONT: {status}")
    detections = []
    for watch in watches:
        downs = [event for event in watch.of("link_down") if event["peer"] == frozen.index]
        harness.check(downs, f"no link_down event for peer {frozen.index} at {watch.address}: {watch.events}")
        harness.check("no heartbeat" in downs[0]["reason"], f"link went down for another reason: {downs[0]}")
        detections.append(downs[0]["time"] - stopped_wall)
    print(
        f"\nSIGSTOP detection (heartbeat_timeout {timeout}s): link_down events "
        f"{', '.join(f'{d:.3f}s' for d in detections)} after SIGSTOP; status showed down after {seen_down:.3f}s; "
        f"all ready {recovered:.3f}s after SIGCONT"
    )
    # Generous for a busy CI box, yet far below anything but heartbeat detection (no FIN or RST reaches the peers).
    bound = timeout + 5.0
    harness.check(max(detections) < bound, f"detection took {detections}, bound {bound}s")
    harness.check(seen_down < bound, f"status showed the peer down only after {seen_down:.3f}s, bound {bound}s")
