"""Failure mode: a mesh forms (or forms again). N daemons dial each other, both ends of a pair may dial at once and
the tie-break keeps one connection, a peer that is not there yet is redialed with back-off, and readiness is the
agreement of views, whatever order two connections deliver them in.

Variants:
- virtual time (``tests.harness.virtual``: real daemons on the in-memory network under pytest-trio's
  ``autojump_clock``, so timer behaviour is asserted to the exact virtual instant): one connection per pair after a
  staggered or a simultaneous start, simultaneous redials after a reset, the back-off schedule, a late view on the
  tie-break loser;
- real processes (``tests.harness.procs``: ``python -m meshd`` on loopback): four daemons form a full mesh, logging
  JSON lines (``--log-format json``).

A self-minted (auto-mode) cluster's cold start is in test_restarts_and_generations.py.
"""

from __future__ import annotations

import itertools
import json

import pytest
import trio

from meshd.core.status import EndCause, MeshState, PeerState
from meshd.core.wire import Accept, Epoch, Frame, FrameDecoder, Heartbeat, Hello, View, encode
from meshd.daemon import Daemon, Settings
from tests.harness.procs import Harness, assert_full_mesh
from tests.harness.virtual import (
    EPS,
    FORM_WITHIN,
    GRID_CLUSTER,
    GRID_TIMEOUTS,
    STAGGER,
    TracingNetwork,
    address,
    all_ready,
    assert_one_connection_per_pair,
    grid_config,
    make_config,
    make_daemon,
    pairs,
    start_mesh,
    start_node,
    virtual_time,
    wait_until,
)

# ----- virtual time


@virtual_time
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


@virtual_time
async def test_peers_waiting_in_the_backlog_are_served_before_the_daemon_dials(autojump_clock):
    """A daemon listens before it serves (``meshd run`` binds first), so peers that dialed meanwhile wait in its
    accept queue. It serves them first and dials no peer it got a link from: each pair runs one handshake, not two
    crossed ones (half of a formation's handshakes when daemons come up one after another)."""
    net = TracingNetwork()
    config = make_config(4)
    late = make_daemon(net, config, 0)
    await late.bind()
    async with trio.open_nursery() as nursery:
        nodes = [await start_node(nursery, make_daemon(net, config, index)) for index in (1, 2, 3)]
        await wait_until(lambda: sum(c.target == address(0) for c in net.all_connections) == 3, FORM_WITHIN)
        nodes.insert(0, await start_node(nursery, late))
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        assert [target for _, source, target in net.attempts if source == address(0)] == []
        await trio.sleep(3 * config.timeouts.heartbeat_timeout)  # the other pairs' crossed dials play out
        assert_one_connection_per_pair(net, nodes)
        nursery.cancel_scope.cancel()


@virtual_time
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


def ceilings(initial: float, maximum: float, count: int) -> list[float]:
    return [min(maximum, initial * 2.0**k) for k in range(count)]


def assert_backoff(gaps: list[float], initial: float, maximum: float) -> None:
    """Each gap is drawn from [ceiling / 2, ceiling], the ceiling doubling from ``initial`` up to ``maximum``."""
    for k, (gap, ceiling) in enumerate(zip(gaps, ceilings(initial, maximum, len(gaps)), strict=True)):
        assert ceiling / 2 - EPS <= gap <= ceiling + EPS, f"gap {k} is {gap}, ceiling {ceiling}"


@virtual_time
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


# ----- virtual time: readiness must not depend on the order in which two connections deliver


class RawPeer:
    """One end of a connection, spoken by the test: frames out, frames in, heartbeats on demand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self._lock = trio.Lock()

    async def send(self, frame: Frame) -> None:
        async with self._lock:
            await self.stream.send_all(encode(frame))

    async def receive(self) -> Frame:
        while (frame := self.decoder.next_frame()) is None:
            self.decoder.receive_data(await self.stream.receive_some(65536))
        return frame

    async def heartbeats(self, interval: float) -> None:
        while True:
            await self.send(Heartbeat())
            await trio.sleep(interval)


@virtual_time
async def test_a_late_view_on_the_tie_break_loser_does_not_undo_readiness(autojump_clock):
    """A VIEW that arrives on the connection that lost the tie-break is not the link's latest view.

    Regression: such a view used to overwrite the peer's latest one, and a process could stay forming or degraded
    for ever with every link up (seen in about 1 of 50 real-process cold starts on a loaded host).

    Peers 1 and 2 are played by the test; daemon 0 is real (fixed epoch: the readiness rule is the same in every
    mode). 1 dials 0 (connection A: 0's first link to 1); 0 dials 1 (connection B, which wins the tie-break, the
    lower index's dial; A lingers for one handshake timeout). On A, peer 1 had sent the view it had then (linked to
    0 only); that frame is delayed in the network (two TCP connections are not ordered with respect to each other)
    and arrives after the full views on B and from 2. Nothing changes afterwards, so no view is sent again: the
    daemon must stay ready.
    """
    epoch = Epoch(1)
    net = TracingNetwork()
    config = grid_config(3, handshake=4.0)
    peer_1 = net.for_node(address(1))
    (listener_1,) = await peer_1.listen(address(1))
    (listener_2,) = await net.for_node(address(2)).listen(address(2))
    daemon = Daemon(Settings(config, 0, epoch, None), net=net.for_node(address(0)), incarnation=0xA0)
    me, one, two = 0xA0, 0xB1, 0xB2
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        dialed_1 = RawPeer(await listener_1.accept())  # B: daemon 0 dials 1 at once
        dialed_2 = RawPeer(await listener_2.accept())
        a = RawPeer(await peer_1.connect(address(0)))  # A: 1 dials 0
        await a.send(Hello(GRID_CLUSTER, 1, 0, epoch, one))
        assert isinstance(await a.receive(), Hello)
        await a.send(Accept())
        with trio.fail_after(1):
            while daemon.model.rows[1].state is not PeerState.UP:
                await trio.sleep(0.01)
        delayed = View(epoch, (me, one, 0))  # what 1 sent on A while A was its link to 0 and 2 was not linked yet

        for raw, sender, incarnation in ((dialed_1, 1, one), (dialed_2, 2, two)):
            assert isinstance(await raw.receive(), Hello)
            await raw.send(Hello(GRID_CLUSTER, sender, 0, epoch, incarnation))
            await raw.send(Accept())
            nursery.start_soon(raw.heartbeats, GRID_TIMEOUTS["heartbeat_interval"])
        full = View(epoch, (me, one, two))
        await dialed_1.send(full)
        await dialed_2.send(full)
        with trio.fail_after(1):
            while daemon.model.state is not MeshState.READY:
                await trio.sleep(0.01)

        await a.send(delayed)  # the frame from A's early days finally arrives
        await trio.sleep(5.0)
        status = daemon.status()
        nursery.cancel_scope.cancel()
    assert [peer["state"] for peer in status["peers"]] == ["up", "up"], status
    assert status["state"] == "ready", (
        f"daemon 0 left ready for good on a stale VIEW from the tie-break loser, though every link is up and every "
        f"peer's latest view on its link equals its own: {status}"
    )


# ----- real processes


async def test_four_daemons_form_a_full_mesh(harness: Harness):
    """Over real sockets, with the daemons' JSON logs. Which connection each pair keeps is decided by
    test_four_daemons_form_a_full_mesh_with_one_connection_per_pair."""
    cluster = harness.cluster(4)
    daemons = harness.start_all(cluster, epoch=1, extra_args=["--log-format", "json"])
    statuses = await harness.wait_ready(daemons, epoch=1)
    assert_full_mesh(harness, daemons, statuses, epoch=1)
    for daemon, status in zip(daemons, statuses, strict=True):
        for peer in status["peers"]:
            harness.check(peer["connects"] >= 1, f"{daemon.name}: peer row {peer} counts no connect")
        # --log-format json: every stderr line is one JSON object carrying the daemon's index.
        lines = daemon.stderr().splitlines()
        harness.check(lines, f"{daemon.name} logged nothing")
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                harness.fail(f"{daemon.name}: log line is not JSON: {line!r}")
            harness.check({"time", "level", "message", "index"} <= record.keys(), f"log record {record}")
            harness.check(record["index"] == daemon.index, f"{daemon.name} logged as index {record['index']}")
