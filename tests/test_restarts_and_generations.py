"""Failure mode: processes die and come back. A restarted incarnation replaces the old link and is reported as
``peer_restarted``; under a controller with fixed epochs (R6) a death gets a newer epoch, which fences the survivors,
and the fenced ones restart at the current epoch; self-minted (auto-mode) generations settle on one ready
generation by themselves, each survivor exiting 75 at most once per fault; ``--epoch await`` waits for the
controller's start op.

Variants:
- virtual time (``tests.harness.virtual``, under ``autojump_clock``): a new incarnation (same epoch) replacing the
  old link before any timeout, a restart at the same address and epoch;
- real processes (``tests.harness.procs``): R6 played by hand, and auto-mode clusters under the restarting
  orchestrator of the ``orchestrate`` fixture (tests/conftest.py; ``meshd.cluster``'s controller): cold start,
  a process never ready moving in place, the kill -9 patterns of docs/design.md §6, and ``--epoch await``.

The rule that a newer epoch fences (to the virtual instant), and paused processes that resume after the others
moved on, are in test_stale_and_fencing.py; generations minted across skewed clocks are in test_clock_skew.py.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import trio

from meshd.admin import client as admin
from meshd.admin.client import request as admin_request
from meshd.core.address import Address
from meshd.core.status import EndCause, LinkEnd, MeshState, PeerState
from meshd.errors import ExitCode
from tests.harness.orchestrate import (
    KILLED,
    Generation,
    Orchestrate,
    Orchestrator,
    generation_order,
    log_text,
    record_timing,
)
from tests.harness.procs import Daemon, Harness, assert_full_mesh, is_ready, watching
from tests.harness.virtual import (
    FORM_WITHIN,
    TracingNetwork,
    address,
    all_ready,
    assert_one_connection_per_pair,
    link_events,
    link_snapshot,
    make_config,
    make_daemon,
    start_mesh,
    start_node,
    virtual_time,
    wait_until,
)

# ----- virtual time: a new incarnation of a peer


@virtual_time
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


@virtual_time
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


# ----- real processes: fixed epochs under a controller (R6)


async def test_replacement_at_newer_epoch_fences_the_survivors(harness: Harness):
    """R6 played by hand: a daemon killed with -9 is replaced at a newer epoch, the survivors exit 75 and, restarted
    at the current epoch, form the new generation with the replacement (which never restarts)."""
    cluster = harness.cluster(4)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)

    victim = daemons[3]
    victim.signal(signal.SIGKILL)
    harness.check(await harness.wait_exit(victim) == -signal.SIGKILL, "kill -9 did not kill the daemon")
    replacement = harness.start(cluster, 3, epoch=2)

    survivors = daemons[:3]
    codes = [await harness.wait_exit(daemon) for daemon in survivors]
    harness.check(codes == [ExitCode.FENCED] * 3, f"old-generation daemons exited {codes}, expected 75 each")
    for daemon in survivors:
        harness.check("fenced" in daemon.stderr(), f"{daemon.name} exited 75 without logging why")
    harness.check(replacement.returncode is None, f"the replacement exited {replacement.returncode}")
    before = await harness.status(replacement.admin)
    harness.check(before is not None and before["epoch"] == 2, f"replacement status {before}")

    restarted = [harness.start(cluster, index, epoch=2) for index in range(3)]
    generation = [*restarted, replacement]
    statuses = await harness.wait_ready(generation, epoch=2)
    assert_full_mesh(harness, generation, statuses, epoch=2)
    after = next(status for status in statuses if status["index"] == 3)
    harness.check(after["incarnation"] == before["incarnation"], "the replacement restarted during the episode")


# ----- real processes, auto mode: cold start


@pytest.mark.parametrize("toml", [False, True], ids=["flag", "toml"])
async def test_cold_start_forms_one_generation_without_exits(harness: Harness, orchestrate: Orchestrate, toml):
    started = time.time()
    cluster = await orchestrate(toml=toml)
    generation = await cluster.wait_one_generation("cold start")
    await cluster.settle(generation, exits={index: [] for index in range(4)})
    record_timing("cold-start", seconds=round(generation.ready_at - started, 3), toml=toml)

    # Every process minted a generation at start; all but the one that minted the newest adopted it in place.
    changes = sorted(status["generation_changes"] for status in generation.statuses)
    harness.check(changes[0] == 0 and changes[1] >= 1, f"generation_changes per process: {changes}")

    # The same facts through ``meshd status --json``.
    cli = harness.spawn("status-json", ["status", "--admin", str(cluster.cluster.admin(2)), "--json"])
    harness.check(await harness.wait_exit(cli) == 0, "meshd status --json did not exit 0")
    status = json.loads(cli.stdout())
    harness.check(
        status["epoch"] == generation.epoch and status["mode"] == "auto" and status["sealed"] is True,
        f"meshd status --json: {status}",
    )
    harness.check(type(status["generation_changes"]) is int, f"generation_changes: {status['generation_changes']!r}")

    # The controller's start op belongs to --epoch await; an auto daemon refuses it and nothing changes.
    answer = await admin.request(cluster.cluster.admin(0), {"op": "start", "epoch": 5})
    harness.check("error" in answer and "ok" not in answer, f"start on an auto daemon answered {answer}")
    await cluster.settle(generation, exits={index: [] for index in range(4)})


async def test_a_process_never_ready_moves_in_place_and_reports_generation_events(
    harness: Harness, orchestrate: Orchestrate
):
    cluster = await orchestrate(launch=[0])
    first = cluster.proc(0)

    async def alone() -> tuple[bool, Any]:
        status = await harness.status(cluster.admin(0))
        return status is not None and status["state"] == "forming", status

    own = (await harness.eventually(alone, "daemon 0 to run alone"))["epoch"]
    async with watching(harness, [cluster.admin(0)]) as (watch,):
        for index in (1, 2, 3):
            cluster.launch(index)
        generation = await cluster.wait_one_generation("after the late starters")
        await cluster.settle(generation, exits={index: [] for index in range(4)})

    status = generation.statuses[0]
    moves = watch.of("generation")
    harness.check(generation_order(generation.epoch) > generation_order(own), f"{generation.epoch} vs {own}")
    harness.check(cluster.proc(0) is first, "daemon 0 was restarted")
    harness.check(
        moves and len(moves) == status["generation_changes"],
        f"{len(moves)} generation events but generation_changes = {status['generation_changes']}: {watch.events}",
    )
    epochs = [generation_order(own)] + [generation_order(event["epoch"]) for event in moves]
    harness.check(epochs == sorted(set(epochs)), f"generation events do not move strictly forward: {moves}")
    harness.check(moves[-1]["epoch"] == generation.epoch, f"last move {moves[-1]}, final {generation.epoch}")
    readies = watch.of("ready")
    harness.check(
        len(readies) == 1 and readies[0]["epoch"] == generation.epoch,
        f"ready events {readies}, expected one at {generation.epoch}",
    )
    harness.check(not watch.of("fenced"), f"daemon 0 was fenced: {watch.events}")


# ----- real processes, auto mode: kill -9


async def _kill_and_recover(
    harness: Harness, orchestrate: Orchestrate, victims: list[int], scenario: str
) -> tuple[Orchestrator, Generation, Generation]:
    cluster = await orchestrate()
    before = await cluster.wait_one_generation("cold start")
    survivors = [index for index in range(4) if index not in victims]
    async with watching(harness, [cluster.admin(index) for index in survivors]) as watches:
        fault = cluster.kill(*victims)
        after = await cluster.wait_one_generation(f"after kill -9 of {victims}")
    expected = {index: [KILLED] if index in victims else [ExitCode.FENCED] for index in range(4)}
    harness.check(cluster.exits() == expected, f"exits per slot {cluster.exits()}, expected {expected}")
    await cluster.settle(after, expected)
    record_timing(scenario, seconds=round(after.ready_at - fault, 3), exits=cluster.exits())

    harness.check(
        generation_order(after.epoch) > generation_order(before.epoch),
        f"the new generation {after.epoch} is not newer than {before.epoch}",
    )
    for index, watch in zip(survivors, watches, strict=True):
        fenced = watch.of("fenced")
        harness.check(fenced, f"survivor {index} exited without a fenced event: {watch.events}")
        harness.check(not watch.of("ready", "generation"), f"survivor {index} moved or got ready: {watch.events}")
        first = cluster.controller.slots[index].history[0]
        harness.check("fenced" in log_text(first), f"survivor {index} did not log its fence")
    return cluster, before, after


@pytest.mark.parametrize("victim", [2, 0])
async def test_kill_one_survivors_exit_75_once_and_one_newer_generation_forms(
    harness: Harness, orchestrate: Orchestrate, victim
):
    await _kill_and_recover(harness, orchestrate, [victim], f"kill-{victim}")


async def test_kill_all_restart_into_one_generation_without_any_75(harness: Harness, orchestrate: Orchestrate):
    await _kill_and_recover(harness, orchestrate, [0, 1, 2, 3], "kill-all")


async def test_kill_all_but_one_the_survivor_exits_75_once(harness: Harness, orchestrate: Orchestrate):
    await _kill_and_recover(harness, orchestrate, [0, 2, 3], "kill-all-but-1")


# ----- real processes: --epoch await


async def test_await_mode_start_op(harness: Harness):
    cluster = harness.cluster(3, name="await")
    daemons = harness.start_all(cluster, epoch="await")

    async def awaiting() -> tuple[bool, Any]:
        found = await harness.statuses(daemons)
        done = all(
            status is not None
            and status["state"] == "awaiting"
            and status["epoch"] is None
            and status["mode"] == "await"
            and not status["sealed"]
            for status in found
        )
        return done, found

    await harness.eventually(awaiting, "3 daemons awaiting their epoch")
    await trio.sleep(1.0)  # nothing happens without the start op
    for status in await harness.statuses(daemons):
        harness.check(status is not None and status["state"] == "awaiting", f"not awaiting any more: {status}")

    async def start_all(epoch: int, procs: list[Daemon]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = [{}] * len(procs)

        async def one(position: int, proc: Daemon) -> None:
            answers[position] = await admin.request(proc.admin, {"op": "start", "epoch": epoch})

        async with trio.open_nursery() as nursery:
            for position, proc in enumerate(procs):
                nursery.start_soon(one, position, proc)
        return answers

    started = time.time()
    answers = await start_all(5, daemons)
    harness.check(answers == [{"ok": True, "epoch": 5}] * 3, f"start 5 answered {answers}")
    ready = await harness.wait_ready(daemons, epoch=5)
    record_timing("await-start", seconds=round(max(s["state_since"] for s in ready) - started, 3))

    def fingerprint(statuses: list[dict[str, Any] | None]) -> list[Any]:
        return [
            None
            if s is None
            else (s["state"], s["epoch"], s["incarnation"], s["state_since"], [p["connects"] for p in s["peers"]])
            for s in statuses
        ]

    async def steady() -> tuple[bool, Any]:
        """Ready at 5 and unchanged over a heartbeat interval: a view in flight at the first ready may still take a
        daemon to degraded and back (R4), which is the formation's doing, not the start ops'."""
        before = await harness.statuses(daemons)
        await trio.sleep(cluster.timeouts["heartbeat_interval"])
        after = await harness.statuses(daemons)
        return all(is_ready(status, 5) for status in after) and fingerprint(after) == fingerprint(before), after

    settled = fingerprint(await harness.eventually(steady, "the mesh ready at epoch 5 and steady"))
    answers = await start_all(5, daemons)
    harness.check(all(a.get("ok") is True and a.get("epoch") == 5 for a in answers), f"start 5 again: {answers}")
    answers = await start_all(4, daemons)
    harness.check(all("error" in a and "ok" not in a for a in answers), f"start 4 answered {answers}")
    await trio.sleep(3 * cluster.timeouts["heartbeat_timeout"])
    found = await harness.statuses(daemons)
    harness.check(fingerprint(found) == settled, f"repeated or older start ops changed something: {found}")
    harness.check(all(is_ready(status, 5) for status in found), f"no longer ready at 5: {found}")

    newer, others = daemons[1], [daemons[0], daemons[2]]
    async with watching(harness, [newer]) as (watch,):
        # Through the harness's client: the daemon exits right after answering, and meshd.admin.request (through
        # trio-websocket) would leave its socket to the garbage collector (see meshd.admin.client).
        answer = await admin_request(newer.admin, {"op": "start", "epoch": 6})
        code = await harness.wait_exit(newer)
    harness.check(answer.get("ok") is True and answer.get("epoch") == 6, f"start 6 answered {answer}")
    harness.check(code == ExitCode.FENCED, f"start 6 on a daemon running 5: exit {code}, expected 75")
    harness.check(watch.of("fenced"), f"no fenced event: {watch.events}")
    await trio.sleep(3 * cluster.timeouts["heartbeat_timeout"])
    for proc, status in zip(others, await harness.statuses(others), strict=True):
        harness.check(
            proc.returncode is None and status is not None and status["epoch"] == 5,
            f"{proc.name} did not stay at epoch 5 after another daemon's start 6: {status}",
        )
