"""Failure mode: a stale process meets a newer one. A daemon of an older epoch is fenced (exit 75) and a ready mesh
never notices it; a replacement at a newer epoch fences the old generation; a replaced incarnation that wakes up
(SIGSTOP, then SIGCONT) cannot win its slot back, and in auto mode exits 75 once; the fence reaches watchers.

Variants:
- virtual time (``tests.harness.virtual``, under ``autojump_clock``): the rules, to the exact virtual instant
  (a newer epoch fences, a stale daemon fences itself, a retired incarnation is refused);
- real processes (``tests.harness.procs``): exit code 75 and its log line, paused processes of an auto-mode cluster
  (the ``orchestrate`` fixture) resumed after the others moved on, and the "fenced" event on the admin websocket.

How the cluster restarts after a fence (R6, auto-mode generations) is in test_restarts_and_generations.py.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import trio

from meshd import config as configuration
from meshd.admin.client import connect as admin_socket
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.status import Fenced, MeshState, PeerState
from meshd.core.wire import Epoch
from meshd.daemon import FENCE_LINGER, Settings
from meshd.daemon import Daemon as InProcessDaemon
from meshd.errors import ExitCode
from tests.harness.orchestrate import KILLED, RECOVERY, Orchestrate, generation_order, log_text, record_timing
from tests.harness.procs import ADMIN_ERRORS, DEADLINE, HOST, Harness, free_ports, is_ready, watching, write_config
from tests.harness.virtual import (
    EPS,
    FORM_WITHIN,
    TracingNetwork,
    address,
    all_ready,
    link_snapshot,
    make_config,
    make_daemon,
    start_mesh,
    start_node,
    virtual_time,
    wait_until,
)

# ----- virtual time


@virtual_time
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
            # The daemon lingers exactly FENCE_LINGER so that its watcher (the node's recorder) gets the event.
            assert node.finished_at == pytest.approx(fenced_at + FENCE_LINGER, abs=EPS)
            assert node.daemon.exit_code == ExitCode.FENCED
        # The new generation is not fenced by the old one: it keeps running, waiting for its peers.
        await trio.sleep(1)
        assert not replacement.finished.is_set()
        assert replacement.state is MeshState.FORMING
        assert not replacement.events_of("fenced")
        nursery.cancel_scope.cancel()


@virtual_time
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


@virtual_time
async def test_a_replaced_incarnation_that_wakes_up_cannot_win_its_slot_back(autojump_clock):
    """Node 2 hangs (SIGSTOP) and is replaced by a new incarnation; when the old process resumes and redials, its
    peers refuse it: the mesh of the new incarnation never notices, and the zombie never links.

    The zombie's dials pass the handshake (its hello is fine) before the peer's offer() refuses them (RETIRED), so
    each is a link that drops at once; it must be redialed after back-off, not in a loop that never lets virtual
    time pass (which the event-storm check in tests.harness.virtual turns into a failure; on a real network: a dial
    storm).
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


# ----- real processes: a stale daemon


async def test_stale_epoch_daemon_exits_75_and_the_mesh_stays_ready(harness: Harness):
    """Smoke test over real processes: a leftover of an older generation exits 75, says why, and the ready mesh it
    dialed is still ready on its first connections.

    The rule (a stale daemon fences itself and the ready mesh sees no event at all, its links untouched) is decided,
    to the virtual instant, by test_a_stale_daemon_fences_itself_and_the_ready_mesh_never_notices.
    """
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=3)
    await harness.wait_ready(daemons, epoch=3)

    # A leftover of generation 2 that believes it is index 2; its own mesh port differs (the live index 2 holds
    # the real one), everything else is the cluster's config.
    stale_mesh, stale_admin = free_ports(2)
    stale_ports = [*cluster.mesh_ports[:2], stale_mesh]
    stale_config = write_config(harness.tmp / "stale.toml", cluster.name, stale_ports, cluster.timeouts)
    stale = harness.start(cluster, 2, epoch=2, config=stale_config, admin=Address(HOST, stale_admin))
    code = await harness.wait_exit(stale)

    harness.check(code == ExitCode.FENCED, f"stale daemon exited {code}, expected 75")
    harness.check("fenced" in stale.stderr(), "the stale daemon exited 75 without logging why")
    for daemon, status in zip(daemons, await harness.statuses(daemons), strict=True):
        harness.check(is_ready(status, 3), f"{daemon.name} left ready: {status}")
        for peer in status["peers"]:
            harness.check(peer["connects"] == 1, f"{daemon.name}: link to {peer['index']} reconnected: {peer}")


# ----- real processes: a paused auto-mode process resumes after the others moved on


async def test_paused_process_resumed_after_the_others_moved_on_exits_75_once(
    harness: Harness, orchestrate: Orchestrate
):
    cluster = await orchestrate()
    before = await cluster.wait_one_generation("cold start")
    paused = cluster.proc(1)
    async with watching(harness, [cluster.admin(1)]) as (watch,):
        paused.process.send_signal(signal.SIGSTOP)
        await trio.sleep(1.0)
        fault = cluster.kill(3)

        async def moved_on() -> tuple[bool, Any]:
            """3's replacement fenced 0 and 2, and the three restarted processes share a newer generation."""
            exits = cluster.exits()
            if exits != {0: [ExitCode.FENCED], 1: [], 2: [ExitCode.FENCED], 3: [KILLED]}:
                return False, exits
            procs = [cluster.proc(index) for index in (0, 2, 3)]
            found = await harness.statuses([cluster.admin(index) for index in (0, 2, 3)])
            epochs = {None if status is None else status["epoch"] for status in found}
            done = (
                len(epochs) == 1
                and None not in epochs
                and generation_order(found[0]["epoch"]) > generation_order(before.epoch)  # type: ignore[index]
                and all(proc.running for proc in procs)
            )
            return done, (exits, found)

        await harness.eventually(moved_on, "0, 2 and 3 to move on without the paused 1", RECOVERY)
        harness.check(paused.running, f"the paused daemon exited {paused.process.poll()}")
        resumed = time.time()
        paused.process.send_signal(signal.SIGCONT)
        after = await cluster.wait_one_generation("after SIGCONT")
    expected = {0: [ExitCode.FENCED], 1: [ExitCode.FENCED], 2: [ExitCode.FENCED], 3: [KILLED]}
    harness.check(cluster.exits() == expected, f"exits per slot {cluster.exits()}, expected {expected}")
    await cluster.settle(after, expected)
    record_timing(
        "pause-1-kill-3",
        seconds=round(after.ready_at - fault, 3),
        after_sigcont=round(after.ready_at - resumed, 3),
        exits=cluster.exits(),
    )
    # Fenced, not crashed: its own last words say so. (Its watchers may miss the "fenced" event: see
    # test_a_watcher_gets_the_fenced_event_even_when_the_fence_lands_in_a_busy_moment.)
    harness.check("fenced" in log_text(paused), "the resumed daemon exited 75 without logging a fence")
    # It may briefly report link_up for connections that waited in its listen backlog while it was stopped: the
    # old generation's processes dialed it before they exited, and their hellos are still in the socket buffers.
    # Such a link can never make it ready (a dead dialer sends no VIEW); what must not happen is a ready or a move.
    rejoined = watch.of("ready", "generation")
    harness.check(not rejoined, f"the resumed stale daemon got ready or moved instead of exiting: {rejoined}")


async def test_everyone_but_the_victim_paused_then_resumed_exit_75_once_each(
    harness: Harness, orchestrate: Orchestrate
):
    cluster = await orchestrate()
    before = await cluster.wait_one_generation("cold start")
    paused = [cluster.proc(index) for index in (0, 1, 2)]
    async with watching(harness, [cluster.admin(index) for index in (0, 1, 2)]) as watches:
        for proc in paused:
            proc.process.send_signal(signal.SIGSTOP)
        fault = cluster.kill(3)

        async def replacement_runs() -> tuple[bool, Any]:
            if cluster.exits()[3] != [KILLED] or not cluster.running(3):
                return False, cluster.exits()
            status = await harness.status(cluster.admin(3))
            return status is not None and generation_order(status["epoch"]) > generation_order(before.epoch), status

        await harness.eventually(replacement_runs, "3's replacement to run a newer generation", RECOVERY)
        await trio.sleep(1.0)  # it dials the paused processes meanwhile: those connections wait in their backlogs
        harness.check(all(proc.running for proc in paused), f"a paused daemon exited: {cluster.exits()}")
        resumed = time.time()
        for proc in paused:
            proc.process.send_signal(signal.SIGCONT)
        after = await cluster.wait_one_generation("after SIGCONT of 0, 1 and 2")
    expected = {0: [ExitCode.FENCED], 1: [ExitCode.FENCED], 2: [ExitCode.FENCED], 3: [KILLED]}
    harness.check(cluster.exits() == expected, f"exits per slot {cluster.exits()}, expected {expected}")
    await cluster.settle(after, expected)
    record_timing(
        "pause-0,1,2-kill-3",
        seconds=round(after.ready_at - fault, 3),
        after_sigcont=round(after.ready_at - resumed, 3),
        exits=cluster.exits(),
    )
    for index, (proc, watch) in enumerate(zip(paused, watches, strict=True)):
        harness.check("fenced" in log_text(proc), f"resumed daemon {index} exited 75 without logging a fence")
        rejoined = watch.of("ready", "generation")
        harness.check(not rejoined, f"resumed stale daemon {index} got ready or moved: {rejoined}")


@virtual_time
async def test_a_fenced_daemon_that_nobody_watches_ends_at_once(autojump_clock):
    """The linger after a fence is for watchers to get the "fenced" event; with none subscribed, run() returns at
    the fence's instant, so an orchestrator's restart of the process is not kept waiting."""
    net = TracingNetwork()
    config = make_config(2)
    unwatched = make_daemon(net, config, 0, epoch=1)
    fenced: list[float] = []
    ended: list[float] = []
    unwatched.bus.observe(lambda event: fenced.append(trio.current_time()) if isinstance(event, Fenced) else None)

    async def run_unwatched(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert await unwatched.run(task_status=task_status) == ExitCode.FENCED
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(run_unwatched)
        await start_node(nursery, make_daemon(net, config, 1, epoch=2))
        await wait_until(lambda: bool(ended), FORM_WITHIN)
        nursery.cancel_scope.cancel()
    assert len(fenced) == 1
    assert ended == [pytest.approx(fenced[0], abs=EPS)]


# ----- the fenced event


async def test_a_watcher_gets_the_fenced_event_even_when_the_fence_lands_in_a_busy_moment(harness: Harness):
    """Watchers must receive "fenced" even if the process is busy, or not scheduled, right after the fence.

    A fenced daemon lingers FENCE_LINGER (50 ms) "so that watchers receive the fenced event", counted from the
    fence. When the scheduler iteration holding the fence takes longer than that, the deadline expires before the
    watcher task sends, and the event is dropped (its send is cancelled). A SIGSTOPped process that resumes after
    its peers moved on is exactly that case (every timer and every backlog connection is due at once): with three
    such tests running side by side, about one run in five lost the event. Here, deterministically and in
    process, the task that fences blocks the event loop for a few FENCE_LINGERs right after the fence.
    """
    cluster = harness.cluster(2, name="fence-event")
    settings = Settings(configuration.load(cluster.config), 0, None, cluster.admin(0), EpochMode.AWAIT)
    daemon = InProcessDaemon(settings)
    daemon.request_start(Epoch(1))
    events: list[dict[str, Any]] = []
    code: int | None = None

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal code
        code = await daemon.run(task_status=task_status)

    async def follow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with admin_socket(cluster.admin(0)) as ws:
                await ws.send_message(json.dumps({"op": "watch"}))
                snapshot = json.loads(await ws.get_message())
                assert snapshot["event"] == "snapshot", snapshot
                task_status.started()
                while True:
                    events.append(json.loads(await ws.get_message()))
        except ADMIN_ERRORS:
            pass  # the daemon went away

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            await nursery.start(follow)
            assert daemon.request_start(Epoch(2)) == {"ok": True, "epoch": 2, "fenced": True}
            time.sleep(4 * FENCE_LINGER)  # the rest of a long iteration, or the OS running something else
    assert code == ExitCode.FENCED
    kinds = [event["event"] for event in events]
    assert "fenced" in kinds, f"the watcher never got the fenced event; it got {kinds}"
