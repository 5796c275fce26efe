"""Real daemons on the in-memory network, in trio's virtual time: mesh forming, failure detection, fencing,
replaced incarnations, orderly stops (bad input from strangers: test_virtual_inputs.py).

Every test runs under pytest-trio's ``autojump_clock`` (a MockClock that jumps as soon as every task is blocked),
so seconds of protocol time pass in milliseconds and timer behaviour can be asserted to the exact virtual instant.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from meshd.connection import PARTING_TIMEOUT
from meshd.core.address import Address
from meshd.core.status import EndCause, LinkEnd, MeshState, PeerState
from meshd.core.wire import (
    NO_TARGET,
    Accept,
    Epoch,
    FrameDecoder,
    Heartbeat,
    Hello,
    View,
    encode,
)
from meshd.daemon import FENCE_LINGER, STOP_GRACE
from meshd.errors import ExitCode
from tests.virtual import (
    CLUSTER,
    EPS,
    FORM_WITHIN,
    STAGGER,
    Node,
    TracingNetwork,
    address,
    all_ready,
    link_snapshot,
    make_config,
    make_daemon,
    read_until_eof,
    start_mesh,
    start_node,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("wall_clock_guard")


def pairs(size: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(size), 2))


LINK_EVENTS = ("link_up", "link_down", "peer_restarted")


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


@pytest.mark.parametrize("start", ["staggered", "simultaneous"])
async def test_four_daemons_form_a_full_mesh_with_one_connection_per_pair(autojump_clock, start):
    net = TracingNetwork()
    config = make_config(4)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config, stagger=STAGGER if start == "staggered" else 0)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        if start == "simultaneous":  # the interesting case: both ends of a pair dialed, the tie-break chose
            dialed = {(c.source, c.target) for c in net.all_connections}
            assert any((address(a), address(b)) in dialed and (address(b), address(a)) in dialed for a, b in pairs(4))
        # Let every tie-break and refusal play out, then check the mesh has settled on one connection per pair.
        await trio.sleep(3 * config.timeouts.heartbeat_timeout)
        assert all_ready(nodes)
        for node in nodes:
            assert all(status.state is PeerState.UP for status in node.daemon.model.rows.values())
        assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


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


async def test_simultaneous_redials_settle_on_one_connection_without_flapping(autojump_clock):
    """After a reset both ends redial at the same instant; the tie-break keeps one of the two connections and the
    link goes down exactly once on each side (no refusal of the losing connection takes the winner down too)."""
    net = TracingNetwork()
    config = make_config(2)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        for _ in range(25):
            await trio.sleep(0.3)
            session = nodes[0].session(1)
            assert session is not None
            downs = [len(node.events_of("link_down")) for node in nodes]
            severed_at = trio.current_time()
            net.reset(session.conn.stream.connection)  # type: ignore[attr-defined]
            await wait_until(lambda: all_ready(nodes), 1.0)
            await trio.sleep(2 * config.timeouts.heartbeat_timeout)
            # Both ends did dial each other at the very instant of the reset...
            redials = {(source, target) for when, source, target in net.attempts if when == severed_at}
            assert redials == {(address(0), address(1)), (address(1), address(0))}
            # ...and each saw the link go down once, then settled on one connection.
            new_downs = [len(node.events_of("link_down")) - count for node, count in zip(nodes, downs, strict=True)]
            assert new_downs == [1, 1]
            assert all_ready(nodes)
            assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


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


def ceilings(initial: float, maximum: float, count: int) -> list[float]:
    return [min(maximum, initial * 2.0**k) for k in range(count)]


def assert_backoff(gaps: list[float], initial: float, maximum: float) -> None:
    """Each gap is drawn from [ceiling / 2, ceiling], the ceiling doubling from ``initial`` up to ``maximum``."""
    for k, (gap, ceiling) in enumerate(zip(gaps, ceilings(initial, maximum, len(gaps)), strict=True)):
        assert ceiling / 2 - EPS <= gap <= ceiling + EPS, f"gap {k} is {gap}, ceiling {ceiling}"


async def test_backoff_grows_caps_and_resets_after_a_link(autojump_clock):
    net = TracingNetwork()
    config = make_config(2, backoff_initial=0.1, backoff_max=1.6)
    initial, maximum = config.timeouts.backoff_initial, config.timeouts.backoff_max
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, make_daemon(net, config, 0))
        await trio.sleep(12)  # nobody listens at index 1's address
        attempts = net.attempts_to(address(1))
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert len(gaps) >= 9
        assert attempts[0] == pytest.approx(0.0, abs=EPS)
        assert_backoff(gaps, initial, maximum)
        # While the ceiling doubles, every gap is at least as long as the one before (jitter keeps half of it).
        assert all(earlier <= later + EPS for earlier, later in itertools.pairwise(gaps[:5]))
        # Then it is capped.
        assert max(gaps) <= maximum + EPS
        assert all(gap >= maximum / 2 - EPS for gap in gaps[4:])
        assert node.daemon.model.rows[1].failures == len(attempts)
        assert node.daemon.model.rows[1].last_cause is EndCause.UNREACHABLE
        assert "refused" in (node.daemon.model.rows[1].last_error or "")

        # A successful link resets the back-off: after the peer goes away the retries start over from `initial`.
        peer = await start_node(nursery, make_daemon(net, config, 1))
        await wait_until(lambda: node.state is MeshState.READY, maximum + 0.1)
        await trio.sleep(1)
        await peer.kill()
        await wait_until(lambda: bool(node.events_of("link_down")), 0.1)
        [(down_at, _)] = node.events_of("link_down")
        await trio.sleep(8)
        retries = [when for when in net.attempts_to(address(1)) if when >= down_at]
        assert retries[0] == pytest.approx(down_at, abs=EPS)  # the first redial is immediate
        gaps = [later - earlier for earlier, later in itertools.pairwise(retries)]
        assert len(gaps) >= 6
        assert_backoff(gaps, initial, maximum)
        nursery.cancel_scope.cancel()


async def test_replacement_with_a_newer_epoch_fences_the_old_generation(autojump_clock):
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config, epoch=1)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await nodes[2].kill()
        await wait_until(lambda: all(node.state is MeshState.DEGRADED for node in nodes[:2]), 0.1)
        replacement = await start_node(nursery, make_daemon(net, config, 2, epoch=2, incarnation=0x2002))
        with trio.fail_after(1):
            for node in nodes[:2]:
                await node.finished.wait()
        for node in nodes[:2]:
            assert node.exit_code == ExitCode.FENCED
            assert node.state is MeshState.FENCED
            [(fenced_at, event)] = node.events_of("fenced")
            assert "epoch 2" in event["reason"]
            assert event["epoch"] == 1
            # The daemon lingers exactly FENCE_LINGER so that watchers get the event, then run() returns.
            assert node.finished_at == pytest.approx(fenced_at + FENCE_LINGER, abs=EPS)
            assert node.daemon.exit_code == ExitCode.FENCED
        # The new generation is not fenced by the old one: it keeps running, waiting for its peers.
        await trio.sleep(1)
        assert not replacement.finished.is_set()
        assert replacement.state is MeshState.FORMING
        assert not replacement.events_of("fenced")
        nursery.cancel_scope.cancel()


async def test_a_stale_daemon_fences_itself_and_the_ready_mesh_never_notices(autojump_clock):
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config, epoch=1)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        events_before = [len(node.events) for node in nodes]
        before = link_snapshot(nodes)
        # A leftover index 2 of generation 0, on another host, dials the epoch-1 mesh.
        stale_config = make_config(3, peers=[address(0), address(1), Address("10.0.9.2", 7000)])
        stale = await start_node(nursery, make_daemon(net, stale_config, 2, epoch=0, incarnation=0x0BAD))
        with trio.fail_after(1):
            await stale.finished.wait()
        assert stale.exit_code == ExitCode.FENCED
        [(_, event)] = stale.events_of("fenced")
        assert "epoch 1" in event["reason"]
        assert any(connection.source == stale.daemon.mesh_address for connection in net.all_connections)
        await trio.sleep(2 * config.timeouts.heartbeat_timeout)
        for node, count in zip(nodes, events_before, strict=True):
            assert node.events[count:] == [], f"node {node.index} saw {node.events[count:]}"
            assert node.state is MeshState.READY
        assert link_snapshot(nodes) == before
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("old_dialer", ["restarted", "survivor"])
async def test_a_new_incarnation_replaces_the_old_link_and_is_reported(autojump_clock, old_dialer):
    """Node 2 hangs and is replaced (same epoch) before its peers time it out: its new link replaces the old one.

    Whoever dialed the old link, the new incarnation wins, even over a link dialed by the lower index.
    """
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config, reverse=old_dialer == "survivor")
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        for survivor in nodes[:2]:
            session = survivor.session(2)
            assert session is not None
            assert session.origin.dialer == (2 if old_dialer == "restarted" else survivor.index)
        before = link_snapshot(nodes)
        events_before = [len(node.events) for node in nodes]
        old_incarnation = nodes[2].daemon.me.incarnation
        # The old process's host hangs (nothing it sends arrives any more) and the process is killed there: to
        # its peers, that host crashed.
        hung_at = trio.current_time()
        await nodes[2].kill(silent=True)
        # Its replacement comes up on another host with the same epoch and a new incarnation.
        new_config = make_config(3, peers=[address(0), address(1), Address("10.0.1.2", 7000)])
        new = await start_node(nursery, make_daemon(net, new_config, 2, epoch=1, incarnation=0x2222))
        await wait_until(lambda: all_ready([*nodes[:2], new]), 0.1)
        assert trio.current_time() - hung_at < config.timeouts.heartbeat_timeout / 2  # well before any timeout
        for node in nodes[:2]:
            fresh = link_events(node.events[events_before[node.index] :])
            kinds = [event["event"] for _, event in fresh]
            assert kinds == ["peer_restarted", "link_up"], fresh  # and no link_down: the link moved over
            assert fresh[0][1]["peer"] == 2
            assert fresh[0][1]["incarnation"] == f"{0x2222:016x}"
            status = node.daemon.model.rows[2]
            assert status.state is PeerState.UP
            assert status.incarnation == 0x2222 != old_incarnation
            assert (status.connects, status.failures) == (before[(node.index, 2)][1] + 1, before[(node.index, 2)][2])
            session = node.session(2)
            assert session is not None and session is not before[(node.index, 2)][0]
            assert session.origin.peer_incarnation == 0x2222
            old = before[(node.index, 2)][0]
            assert old.failure == LinkEnd(EndCause.LOCAL, "replaced by a newer connection")  # type: ignore[attr-defined]
            assert node.state is MeshState.READY
        # Later, the old process's silence changes nothing: its link is gone already.
        await trio.sleep(3 * config.timeouts.heartbeat_timeout)
        for node in nodes[:2]:
            assert not node.events_of("link_down")
            assert node.state is MeshState.READY
        assert new.state is MeshState.READY
        nursery.cancel_scope.cancel()


async def test_a_replaced_incarnation_that_wakes_up_cannot_win_its_slot_back(autojump_clock):
    """Node 2 hangs (SIGSTOP) and is replaced by a new incarnation; when the old process resumes and redials, its
    peers refuse it: the mesh of the new incarnation never notices, and the zombie never links.

    The zombie's dials pass the handshake (its hello is fine) before the peer's offer() refuses them (RETIRED), so
    each is a link that drops at once; it must be redialed after back-off, not in a loop that never lets virtual
    time pass (which the event-storm check in tests.virtual turns into a failure; on a real network: a dial storm).
    """
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        zombie = nodes[2]
        net.pause(zombie.process)
        new_config = make_config(3, peers=[address(0), address(1), Address("10.0.1.2", 7000)])
        new = await start_node(nursery, make_daemon(net, new_config, 2, epoch=1, incarnation=0x2222))
        mesh = [nodes[0], nodes[1], new]
        await wait_until(lambda: all_ready(mesh), 0.1)
        await trio.sleep(2 * config.timeouts.heartbeat_timeout)  # the zombie's own timers ran: its links are down
        assert zombie.state is MeshState.DEGRADED
        events_before = [len(node.events) for node in mesh]
        before = link_snapshot(mesh)
        resumed_at = trio.current_time()
        net.resume(zombie.process)
        await trio.sleep(5)
        for node, count in zip(mesh, events_before, strict=True):
            assert node.events[count:] == [], f"node {node.index} saw {node.events[count:]}"
            assert node.state is MeshState.READY
        assert link_snapshot(mesh) == before
        # The zombie did try, and was told why it may not link.
        assert any(c.source == address(2) and c.opened > resumed_at for c in net.all_connections)
        assert zombie.state is MeshState.DEGRADED
        for peer in (0, 1):
            status = zombie.daemon.model.rows[peer]
            assert status.state is PeerState.DOWN
            errors = f"{status.last_error} / {status.last_attempt_error}"
            assert "retired" in errors or "replaced" in errors, errors
        nursery.cancel_scope.cancel()


async def test_a_restart_at_the_same_address_and_epoch_is_reported_as_peer_restarted(autojump_clock):
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await nodes[2].kill()
        await wait_until(lambda: all(node.state is MeshState.DEGRADED for node in nodes[:2]), 0.1)
        for node in nodes[:2]:
            [(_, event)] = node.events_of("link_down", peer=2)
            assert "peer closed the connection" in event["reason"] or "broken" in event["reason"]
        nodes[2] = await start_node(nursery, make_daemon(net, config, 2, incarnation=0x2222))
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        for node in nodes[:2]:
            [(_, event)] = node.events_of("peer_restarted")
            assert event["peer"] == 2
            assert event["incarnation"] == f"{0x2222:016x}"
            assert node.daemon.model.rows[2].incarnation == 0x2222
        await trio.sleep(2 * config.timeouts.heartbeat_timeout)
        assert all_ready(nodes)
        assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


async def test_orderly_stop_returns_0_and_peers_see_it_leave(autojump_clock):
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        stop_at = trio.current_time()
        await nodes[2].daemon.stop("test")
        with trio.fail_after(STOP_GRACE + PARTING_TIMEOUT):
            await nodes[2].finished.wait()
        assert nodes[2].exit_code == ExitCode.OK
        assert nodes[2].state is MeshState.STOPPING
        assert [event["event"] for _, event in nodes[2].events][-1] == "stopping"
        await wait_until(lambda: all(node.state is MeshState.DEGRADED for node in nodes[:2]), 0.1)
        for node in nodes[:2]:
            [(down_at, event)] = node.events_of("link_down", peer=2)
            assert event["cause"] == "goodbye", event
            assert "test" in event["reason"]
            assert down_at == pytest.approx(stop_at, abs=EPS)
        # Every connection the stopped daemon held is closed.
        mine = nodes[2].daemon.mesh_address
        assert not [c for c in net.connections if c.open and mine in (c.source, c.target)]
        nursery.cancel_scope.cancel()
