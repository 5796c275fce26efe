"""scripts/chaos (``tools.chaos``) in CI: a short, hard-bounded campaign of real processes in both epoch modes, on
loopback and (as root with ``ip`` and ``nft``) across network namespaces, judged on its JSON; and the checks it runs
(the one safety checker, ``meshd.safety``, with the runner's own on top) shown able to fail, S5 on a real Fenced."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Identity
from meshd.core.mesh import MeshModel, Publish
from meshd.core.status import Fenced, LinkUp, MeshState, PeerRow, PeerState, Status
from meshd.core.wire import Epoch
from tools.chaos.checks import TrialChecker, fence_is_proven, observation
from tools.chaos.faults import plan
from tools.chaos.netns import netns_unavailable

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


def run_campaign(tmp_path: Path, net: str) -> dict[str, Any]:
    out = tmp_path / f"chaos-{net}"
    argv = [sys.executable, "-m", "tools.chaos", "--net", net, "--seed", str(SEEDS[net])]
    argv += ["--trials", str(TRIALS), "--faults", str(FAULTS), "--size", str(SIZE), "--out", str(out)]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=CLEANUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            pytest.fail(f"scripts/chaos --net {net} took over {CAMPAIGN_TIMEOUT}s:\n{output}")
    report_path = out / "chaos.json"
    assert report_path.exists(), f"scripts/chaos exited {proc.returncode} without a report:\n{output}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["output"] = output
    report["returncode"] = proc.returncode
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
