"""scripts/chaos (``tools.chaos``) in CI: a short, hard-bounded campaign of real processes in both epoch modes, on
loopback and (as root with ``ip`` and ``nft``) across network namespaces, judged on its JSON; and the checks it runs
(the one safety checker, ``meshd.safety``, with the runner's own on top) shown able to fail, S5 on a real Fenced;
worker mode (``--workers``: every daemon runs examples/alltoall.py) on loopback, and its checks shown able to fail;
``--worker bytewax`` side by side with its baseline (one trial each), when bytewax is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Identity
from meshd.core.mesh import MeshModel, Publish
from meshd.core.status import (
    Fenced,
    LinkUp,
    MeshState,
    PeerRow,
    PeerState,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
    WorkerStatus,
)
from meshd.core.wire import Epoch
from tools.chaos.checks import TrialChecker, fence_is_proven, final_worker_problems, observation
from tools.chaos.faults import KILL, WORKER, plan, with_worker_faults
from tools.chaos.netns import netns_unavailable
from tools.chaos.workers import ALLTOALL, WorkerWatch, alive

ROOT = Path(__file__).resolve().parent.parent
# Hard bound on one campaign (4 trials of a few seconds each, on a loaded 2-core machine).
CAMPAIGN_TIMEOUT = 150.0
# How long an overdue campaign gets to clean up (kill its daemons, delete its namespaces) after SIGTERM.
CLEANUP_TIMEOUT = 20.0
TRIALS, FAULTS, SIZE = 2, 3, 4
# First seeds whose schedules (decided by the seed alone) cover every fault kind of the network in both modes.
SEEDS = {"loopback": 3, "netns": 138}
KINDS = {
    ("fixed", "loopback"): {"kill", "pause", "duplicate", "stale"},
    ("auto", "loopback"): {"kill", "pause", "duplicate"},
    ("fixed", "netns"): {"kill", "pause", "duplicate", "stale", "partition"},
    ("auto", "netns"): {"kill", "pause", "duplicate", "partition", "twin"},
}
KILLED = -signal.SIGKILL
# Why this machine cannot run the namespace trials (not root, no `ip` or `nft`, no namespaces), or None.
NETNS_UNAVAILABLE = netns_unavailable()


# Worker mode: one trial per epoch mode, a pause and a kill -9 each (seed 12's schedule in both modes).
WORKER_SEED, WORKER_FAULTS = 12, 2


def run_chaos(argv: list[str], timeout: float, what: str) -> tuple[int, str]:
    """Run a chaos command to its end (bounded: SIGTERM, then SIGKILL); its exit code and output."""
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=CLEANUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            pytest.fail(f"{what} took over {timeout}s:\n{output}")
    return proc.returncode, output


def run_campaign(tmp_path: Path, net: str, *extra: str, seed: int | None = None) -> dict[str, Any]:
    out = tmp_path / f"chaos-{net}"
    argv = [sys.executable, "-m", "tools.chaos", "--net", net, "--seed", str(SEEDS[net] if seed is None else seed)]
    argv += ["--trials", str(TRIALS), "--faults", str(FAULTS), "--size", str(SIZE), "--out", str(out), *extra]
    returncode, output = run_chaos(argv, CAMPAIGN_TIMEOUT, f"scripts/chaos --net {net}")
    report_path = out / "chaos.json"
    assert report_path.exists(), f"scripts/chaos exited {returncode} without a report:\n{output}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["output"] = output
    report["returncode"] = returncode
    assert (out / "chaos.png").stat().st_size > 0, f"no plot:\n{output}"
    return report


def check_campaign(report: dict[str, Any], net: str) -> None:
    output = report["output"]
    trials = report["trials"]
    assert len(trials) == 2 * TRIALS, f"expected {2 * TRIALS} trials:\n{output}"
    for trial in trials:
        name = f"{trial['mode']}/{trial['net']} seed {trial['seed']}"
        assert trial["converged"], f"{name} did not converge within B:\n{output}"
        assert trial["recovery"] <= trial["bound"], f"{name}: recovery {trial['recovery']} beyond B:\n{output}"
        assert trial["violations"] == [], f"{name}: {trial['violations']}\n{output}"
        # The design's exits per process: a slot never killed exits 75 at most once per death, and only 75.
        # While a twin lives a slot has two processes, and no per-death bound holds (only the one after t0, which
        # the runner checks as a violation).
        hit = {slot for fault in trial["faults"] if fault["kind"] in ("kill", "stale") for slot in fault["slots"]}
        twin = any(fault["kind"] == "twin" for fault in trial["faults"])
        for slot, codes in trial["exits"].items():
            assert set(codes) <= {KILLED, 1, 75}, f"{name}: slot {slot} exits {codes}\n{output}"
            if int(slot) not in hit and not twin:
                assert KILLED not in codes, f"{name}: slot {slot} was never killed yet exited {codes}\n{output}"
                assert codes.count(75) <= trial["deaths"], f"{name}: slot {slot} exits {codes}\n{output}"
    assert report["returncode"] == 0, f"scripts/chaos exited {report['returncode']}:\n{output}"
    for mode in ("fixed", "auto"):
        seeds = range(SEEDS[net], SEEDS[net] + TRIALS)
        planned = {fault.kind for seed in seeds for fault in plan(seed, SIZE, mode, net == "netns", FAULTS)}
        assert planned >= KINDS[mode, net], f"seeds {list(seeds)} no longer plan every fault kind in {mode}: {planned}"
        exits = [trial["exits"] for trial in trials if trial["mode"] == mode]
        codes = [code for slots in exits for codes in slots.values() for code in codes]
        assert KILLED in codes, f"no kill -9 hit a running process in {mode}/{net}:\n{output}"
    rows = {(row["mode"], row["net"]): row for row in report["summary"]}
    assert set(rows) == {("fixed", net), ("auto", net)} and all(row["violations"] == 0 for row in rows.values())


def test_chaos_on_loopback_converges_without_violations(tmp_path):
    check_campaign(run_campaign(tmp_path, "loopback"), "loopback")


@pytest.mark.skipif(NETNS_UNAVAILABLE is not None, reason=f"network namespaces: {NETNS_UNAVAILABLE}")
def test_chaos_across_network_namespaces_with_partitions(tmp_path):
    check_campaign(run_campaign(tmp_path, "netns"), "netns")


def test_chaos_with_alltoall_workers_on_loopback(tmp_path):
    """Every daemon runs examples/alltoall.py; after a pause and a kill -9 each slot ends with one worker of the final
    generation, no worker saw another generation's data, none outlived its daemon."""
    extra = ("--workers", "--trials", "1", "--faults", str(WORKER_FAULTS))
    report = run_campaign(tmp_path, "loopback", *extra, seed=WORKER_SEED)
    output = report["output"]
    assert report["returncode"] == 0, f"scripts/chaos --workers exited {report['returncode']}:\n{output}"
    assert [trial["mode"] for trial in report["trials"]] == ["fixed", "auto"], output
    for trial in report["trials"]:
        name = f"{trial['mode']} seed {trial['seed']}"
        assert trial["converged"] and trial["violations"] == [], f"{name}: {trial['violations']}\n{output}"
        assert {fault["kind"] for fault in trial["faults"]} == {"pause", "kill"}, f"{name}: {trial['faults']}"
        workers = trial["workers"]
        # The first generation's workers, then (after the kill) the recovered generation's: one per slot each.
        assert workers["started"] >= 2 * SIZE and workers["generations"] >= 2, f"{name}: {workers}\n{output}"
        assert "3" not in workers["exits"], f"{name}: {workers}"
        # Every worker of the final generation, stopped with its daemon, is reported by a typed event.
        assert sum(workers["exits"].values()) >= SIZE, f"{name}: {workers}"
    summary = report["workers"]
    assert summary["trials"] == 2 and summary["violations"] == 0, summary
    assert "workers: 2 trials" in output and "0 worker violations" in output, output


def test_worker_faults_only_in_worker_mode():
    """Worker mode's schedule may kill workers alone (``worker``); the plain schedule of the same seed never does and
    is exactly what it was (worker mode draws from a stream of its own: the plain stream is untouched), and worker
    mode only turns kills into worker kills, at the same time, of the same victims."""
    seen_worker = 0
    for seed in range(1, 41):
        for mode, partitions in (("fixed", False), ("auto", False), ("fixed", True), ("auto", True)):
            plain = plan(seed, SIZE, mode, partitions, 6)
            assert plain == plan(seed, SIZE, mode, partitions, 6, workers=False)
            assert WORKER not in {fault.kind for fault in plain}
            workers = plan(seed, SIZE, mode, partitions, 6, workers=True)
            assert len(workers) == len(plain)
            for before, after in zip(plain, workers, strict=True):
                if after.kind == WORKER:
                    assert before.kind == KILL and placement(before) == placement(after)
                else:
                    assert after == before
            seen_worker += sum(fault.kind == WORKER for fault in workers)
            assert with_worker_faults(workers, seed) == workers  # idempotent: a TrialSpec may convert a worker plan
    assert seen_worker > 0, "no worker-mode schedule of seeds 1..40 kills a worker"


def placement(fault: Any) -> tuple[Any, ...]:
    """A fault without its kind."""
    return (fault.at, fault.slots, fault.duration, fault.stale_epoch)


# ----- the checks can fail


def status(index: int, epoch: int, state: str, incarnations: dict[int, int]) -> Status:
    """A status as ``meshd status`` reports it, linked up to ``incarnations`` (slot -> incarnation)."""
    peers = tuple(
        PeerRow(slot, Address("127.0.0.1", 7000 + slot), PeerState.UP, Epoch(epoch), incarnation, since=0.5)
        for slot, incarnation in incarnations.items()
        if slot != index
    )
    return Status(
        cluster="c",
        index=index,
        size=len(incarnations),
        epoch=Epoch(epoch),
        mode="fixed",
        sealed=False,
        generation_changes=0,
        incarnation=incarnations[index],
        state=MeshState(state),
        state_since=0.5,
        started=0.1,
        peers=peers,
    )


MESH = {0: 0xAA, 1: 0xBB, 2: 0xCC}


def observe(checker: TrialChecker, at: float, *statuses: Status) -> None:
    checker.observe(at, [observation(one, born=0.0) for one in statuses])


def test_checker_accepts_ready_processes_that_agree():
    checker = TrialChecker()
    observe(checker, 1.0, *(status(index, 5, "ready", MESH) for index in MESH))
    observe(checker, 2.0, status(0, 6, "forming", {0: 0xDD, 1: 0xBB, 2: 0xEE}))
    assert checker.violations == []


def test_checker_flags_two_ready_processes_that_disagree_about_a_slot():
    checker = TrialChecker()
    observe(checker, 1.0, status(0, 5, "ready", MESH), status(1, 5, "ready", {**MESH, 2: 0xFF}))
    assert [violation.kind for violation in checker.violations] == ["D"]
    assert "different views" in checker.violations[0].detail


def test_checker_flags_links_across_epochs_and_a_ready_process_with_a_link_down():
    checker = TrialChecker()
    mixed = status(0, 5, "forming", MESH)
    mixed = attrs.evolve(mixed, peers=(attrs.evolve(mixed.peers[0], epoch=Epoch(4)), mixed.peers[1]))
    observe(checker, 1.0, mixed)
    down = status(1, 5, "ready", MESH)
    down = attrs.evolve(down, peers=(down.peers[0], attrs.evolve(down.peers[1], state=PeerState.DOWN, epoch=None)))
    observe(checker, 1.0, down)
    assert [violation.kind for violation in checker.violations] == ["S1", "S3"]


def real_fence(own: int, newer: int) -> Fenced:
    """The fenced event a daemon in await mode publishes when the controller starts a newer epoch."""
    model = MeshModel(
        Identity("c", 0, 2, Epoch(0), 1), [Address("127.0.0.1", 1), Address("127.0.0.1", 2)], EpochMode.AWAIT, 0.0
    )
    model.request_start(Epoch(own), 0.0)
    _, effects = model.request_start(Epoch(newer), 1.0)
    [fenced] = [effect.event for effect in effects if isinstance(effect, Publish)]
    assert isinstance(fenced, Fenced)
    return fenced


def test_checker_flags_exits_the_design_forbids():
    fence = real_fence(6, 7)
    assert fence_is_proven(fence)
    assert not fence_is_proven(attrs.evolve(fence, newer=Epoch(5)))
    assert not fence_is_proven(attrs.evolve(fence, newer=None))
    assert fence_is_proven(attrs.evolve(fence, epoch=Epoch(1795600000123, 1), newer=Epoch(1795600000123, 0xFF)))
    assert fence_is_proven(attrs.evolve(fence, newer=None, cause="member_replaced"))
    checker = TrialChecker()
    seen = status(0, 6, "ready", MESH)
    checker.exited("slot 0", 75, False, [fence], seen, Epoch(6), at=1.0)
    checker.exited("slot 1", -9, True, [], None, Epoch(6), at=1.0)
    assert checker.violations == []
    # Its watch missed the event: an exit 75 with no newer epoch anywhere, and one never seen at all.
    checker.exited("slot 2", 75, False, [], attrs.evolve(seen, index=2, incarnation=0xCC), Epoch(6), at=1.0)
    checker.exited("slot 3", -11, False, [], None, Epoch(6), at=1.0)
    checker.exited("slot 1", 75, False, [attrs.evolve(fence, newer=Epoch(5))], None, Epoch(6), at=1.0)
    checker.duplicate_exited(1, 0, lived=0.3, bind_timeout=2.0, at=1.0)
    checker.exit_bound({0: [75, 75], 1: [75]}, survivors=[0, 1], deaths=1, at=1.0)
    checker.stale_behaved(3, 12, [LinkUp(time=1.0, index=3, peer=1, epoch=Epoch(12), direction="dialed")], at=1.0)
    checker.fenced_by_stale([attrs.evolve(fence, newer=Epoch(12))], {Epoch(12)}, at=1.0)
    checker.exits_after_last_fault({0: 1, 1: 2}, at=1.0)
    kinds = [violation.kind for violation in checker.violations]
    assert kinds == [
        "S5", "exit-code", "S5", "duplicate", "exit-bound", "stale-admitted", "stale-fenced", "exits-after-t0"
    ]  # fmt: skip


def test_an_exit_75_seen_only_through_polls_is_proven_by_a_newer_epoch_held_anywhere():
    checker = TrialChecker()
    observe(checker, 1.0, status(0, 7, "forming", MESH))
    checker.exited("slot 1", 75, False, [], status(1, 6, "ready", MESH), Epoch(6), at=2.0)
    checker.exited("slot 2", 75, False, [], None, Epoch(6), at=2.0)
    assert checker.violations == []


# ----- the worker checks can fail


def with_worker(one: Status, epoch: int, state: str = "running", pid: int = 100) -> Status:
    return attrs.evolve(one, worker=WorkerStatus(pid + one.index, WorkerState(state), 0.6, None, Epoch(epoch)))


def test_worker_checks_accept_one_worker_of_the_final_generation_per_slot():
    statuses = [with_worker(status(index, 5, "ready", MESH), 5) for index in MESH]
    assert final_worker_problems(statuses, {index: [100 + index] for index in MESH}) == []
    checker = TrialChecker()
    start = WorkerStarted(time=1.0, index=0, pid=100, epoch=Epoch(5))
    stopped = WorkerExited(time=2.0, index=0, pid=100, epoch=Epoch(5), exit=0, reason="stopped: fenced")
    shared = WorkerExited(time=2.0, index=1, pid=101, epoch=Epoch(5), exit=4, reason="it failed with exit 4")
    checker.worker_exits("slot 0", [start, stopped], at=2.0)
    checker.worker_epoch("slot 0", Epoch(5), [start, stopped], at=2.0)
    checker.worker_death("slot 1", 70, [shared], at=2.0)  # shared fate: a peer's socket ended, no SIGTERM came
    checker.worker_death("slot 2", 0, [], at=2.0)  # an orderly exit: no worker failed
    checker.worker_death("slot 3", 75, [stopped], at=2.0)  # fenced: its worker stopped first
    assert checker.violations == []


def test_worker_checks_flag_a_mismatch_a_wrong_generation_and_a_worker_that_outlived_its_daemon():
    checker = TrialChecker()
    corrupt = WorkerExited(
        time=2.0, index=2, pid=102, epoch=Epoch(5), exit=3, reason="it failed with exit 3"
    )  # a block from another generation
    crashed = WorkerExited(time=2.0, index=3, pid=103, epoch=Epoch(5), exit=1, reason="it failed with exit 1")
    checker.worker_exits("slot 2", [corrupt], at=2.0)
    checker.worker_death("slot 2", 70, [corrupt], at=2.0)
    checker.worker_death("slot 1", 70, [], at=2.0)  # no worker_exited event: nothing typed says it was shared fate
    checker.worker_exits("slot 3", [crashed], at=2.0)
    checker.worker_epoch("slot 0", Epoch(6), [WorkerStarted(time=1.0, index=0, pid=100, epoch=Epoch(5))], at=2.0)
    checker.worker_outlived("slot 1 (member, pid 7, exit -9)", 101, 3.2, at=2.0)
    final = [with_worker(status(0, 6, "ready", MESH), 6), with_worker(status(1, 6, "ready", MESH), 5)]
    final.append(with_worker(status(2, 6, "ready", MESH), 6, state="stopping"))
    problems = final_worker_problems(final, {0: [100], 1: [101, 99], 2: []})
    assert problems == [
        "slot 1's worker runs in epoch 5, the slot in 6",
        "slot 1 has 2 live workers [101, 99]",
        "slot 2's worker is stopping",
        "slot 2 has 0 live workers []",
    ]
    checker.workers_final(problems, at=3.0)
    kinds = [violation.kind for violation in checker.violations]
    assert kinds == [
        "worker-mismatch", "worker-failed", "worker-failed", "worker-failed", "worker-epoch", "worker-outlived",
        "worker-final",
    ]  # fmt: skip


def test_worker_watch_finds_a_worker_that_outlived_its_daemon_and_one_that_outlived_the_trial():
    """Real processes: one that claims to be alltoall.py of this trial's cluster (its argv and MESHD_* environment),
    alive although its 'daemon' exited long ago, is judged late, found by the /proc scan, and killed."""
    peers = ["127.0.0.1:1", "127.0.0.1:2"]
    env = {**os.environ, "MESHD_CLUSTER": "chaos-test", "MESHD_PEERS": ",".join(peers), "MESHD_INDEX": "1"}
    env["MESHD_EPOCH"] = "9"
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)", str(ALLTOALL)]
    elsewhere = {**env, "MESHD_PEERS": "127.0.0.1:3,127.0.0.1:4"}  # another run's cluster of the same name
    with subprocess.Popen(sleeper, env=env) as stray, subprocess.Popen(sleeper, env=elsewhere) as other:
        try:
            watch = WorkerWatch("chaos-test", peers, stop_grace=0.1)
            daemon = types.SimpleNamespace(pid=os.getpid(), slot=1, events=[], exited=None)
            deadline = time.monotonic() + 10
            while not (seen := watch.look([daemon], {})) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the interpreter replaced the fork's argv and environment
            assert [(one.pid, one.index, one.epoch) for one in seen] == [(stray.pid, 1, "9")]  # not another cluster's
            assert watch.judge_exits(time.time()) == []  # its daemon is alive
            daemon.exited = time.time() - 5.0
            [late] = watch.judge_exits(time.time())
            assert late.pid == stray.pid and late.daemon is daemon and watch.judge_exits(time.time()) == []
            assert [one.pid for one in watch.kill_leftovers()] == [stray.pid]
            assert stray.wait(timeout=10) == -signal.SIGKILL and not alive(stray.pid, late.start)
            assert other.poll() is None  # another run's process is left alone
        finally:
            stray.kill()
            other.kill()


# --worker bytewax: one meshd trial (auto epochs) and one baseline trial, 3 processes, seed 5's one fault (slot 2:
# kill -9 of its worker under meshd, of its process in the baseline); bounded well under a minute on this loaded
# 2-core machine.
BYTEWAX_SEED, BYTEWAX_TIMEOUT = 5, 60.0


@pytest.mark.skipif(importlib.util.find_spec("bytewax") is None, reason="bytewax is not installed")
def test_chaos_bytewax_side_by_side_with_the_baseline(tmp_path):
    """Under meshd the bytewax job completes a right window again in one generation within B + the start-up
    allowance after a kill -9; the baseline (each process restarted alone) is judged on the same fault; every result
    line of both is right; the comparison table, JSON and CDF plot are written."""
    out = tmp_path / "chaos-bytewax"
    argv = [sys.executable, "-m", "tools.chaos", "--worker", "bytewax", "--net", "loopback", "--modes", "auto"]
    argv += ["--seed", str(BYTEWAX_SEED), "--trials", "1", "--faults", "1", "--size", "3", "--out", str(out)]
    returncode, output = run_chaos(argv, BYTEWAX_TIMEOUT, "scripts/chaos --worker bytewax")
    report = json.loads((out / "chaos.json").read_text(encoding="utf-8"))
    assert returncode == 0, f"scripts/chaos --worker bytewax exited {returncode}:\n{output}"
    (trial,) = report["trials"]
    # The same fault in both (a kill -9 of slot 2): in worker mode meshd's may kill slot 2's worker alone.
    kinds = [fault.kind for fault in plan(BYTEWAX_SEED, 3, "auto", False, 1, workers=True)]
    assert [fault["kind"] for fault in trial["faults"]] == kinds, output
    assert trial["converged"] and trial["violations"] == [], f"{trial['violations']}\n{output}"
    assert trial["progress"] is not None and trial["progress"] <= trial["bound"] + trial["startup"], output
    assert trial["results"] > 0, output
    (base,) = report["baseline"]
    assert [fault["kind"] for fault in base["faults"]] == ["kill"], output
    assert base["formed"] and base["recovered"] != base["wedged"], output
    assert base["results"] > 0 and base["wrong_count"] == 0, output
    meshd, restart_each = report["comparison"]
    assert (meshd["setup"], meshd["trials"], meshd["recovered"]) == ("meshd", 1, 1), output
    assert (restart_each["trials"], restart_each["recovered"] + restart_each["wedged"]) == (1, 1), output
    assert "| meshd |" in output and "| baseline (restart each) |" in output, output
    assert (out / "bytewax.png").stat().st_size > 0, output
