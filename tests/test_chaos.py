"""scripts/chaos in CI: a short, hard-bounded campaign of real processes in both epoch modes, on loopback and (as root
with ``ip`` and ``nft``) across network namespaces, judged on its JSON; and the safety checker shown able to fail."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshd.core.address import Address
from meshd.core.hello import EpochMode, Identity
from meshd.core.mesh import MeshModel, Publish
from meshd.core.wire import Epoch
from scripts.chaos_faults import plan
from scripts.chaos_netns import netns_unavailable
from scripts.chaos_safety import SafetyChecker, fence_is_proven

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
    argv = [sys.executable, "-m", "scripts.chaos", "--net", net, "--seed", str(SEEDS[net])]
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


# ----- the checker can fail


def status(index: int, epoch: int, state: str, incarnations: dict[int, str]) -> dict[str, Any]:
    """A status object as ``meshd status --json`` reports it, linked up to ``incarnations`` (slot -> incarnation)."""
    peers = [
        {"index": slot, "state": "up", "epoch": epoch, "incarnation": incarnation}
        for slot, incarnation in incarnations.items()
        if slot != index
    ]
    return {"index": index, "epoch": epoch, "state": state, "incarnation": incarnations[index], "peers": peers}


MESH = {0: "aa", 1: "bb", 2: "cc"}


def test_checker_accepts_ready_processes_that_agree():
    checker = SafetyChecker()
    for index in MESH:
        checker.observe(status(index, 5, "ready", MESH), at=1.0)
    checker.observe(status(0, 6, "forming", {0: "dd", 1: "bb", 2: "ee"}), at=2.0)
    assert checker.violations == []


def test_checker_flags_two_ready_processes_that_disagree_about_a_slot():
    checker = SafetyChecker()
    checker.observe(status(0, 5, "ready", MESH), at=1.0)
    checker.observe(status(1, 5, "ready", {**MESH, 2: "zz"}), at=2.0)
    assert [violation.kind for violation in checker.violations] == ["S2"]
    assert "slot 2" in checker.violations[0].detail


def test_checker_flags_links_across_epochs_and_a_ready_process_with_a_link_down():
    checker = SafetyChecker()
    mixed = status(0, 5, "forming", MESH)
    mixed["peers"][0]["epoch"] = 4
    checker.observe(mixed, at=1.0)
    down = status(1, 5, "ready", MESH)
    down["peers"][1].update(state="down", epoch=None)
    checker.observe(down, at=1.0)
    assert [violation.kind for violation in checker.violations] == ["S1", "S3"]


def real_fence(own: int, newer: int) -> dict:
    """The fenced event a daemon in await mode publishes when the controller starts a newer epoch (its JSON)."""
    model = MeshModel(
        Identity("c", 0, 2, Epoch(0), 1), [Address("127.0.0.1", 1), Address("127.0.0.1", 2)], EpochMode.AWAIT, 0.0
    )
    model.request_start(Epoch(own), 0.0)
    _, effects = model.request_start(Epoch(newer), 1.0)
    [fenced] = [effect.event for effect in effects if isinstance(effect, Publish)]
    return fenced.to_json()


def test_checker_flags_exits_the_design_forbids():
    fence = real_fence(6, 7)
    assert fence_is_proven(fence)
    assert not fence_is_proven(fence | {"newer": 5})
    assert fence_is_proven({"epoch": "1795600000123.1", "newer": "1795600000123.00000000000000ff"})
    assert fence_is_proven({"epoch": 6, "newer": None, "cause": "member_replaced"})
    checker = SafetyChecker()
    checker.exited(0, "member", 75, caused_by_runner=False, fences=[fence], at=1.0)
    checker.exited(1, "member", -9, caused_by_runner=True, fences=[], at=1.0)
    assert checker.violations == []
    checker.exited(2, "member", 75, caused_by_runner=False, fences=[], at=1.0)
    checker.exited(3, "member", -11, caused_by_runner=False, fences=[], at=1.0)
    checker.duplicate_exited(1, 0, lived=0.3, bind_timeout=2.0, at=1.0)
    checker.exit_bound({0: [75, 75], 1: [75]}, survivors=[0, 1], deaths=1, at=1.0)
    checker.stale_behaved(3, 12, [{"event": "link_up", "peer": 1}], at=1.0)
    checker.exits_after_last_fault({0: 1, 1: 2}, at=1.0)
    kinds = [violation.kind for violation in checker.violations]
    assert kinds == ["S5", "exit-code", "duplicate", "exit-bound", "stale-admitted", "exits-after-t0"]
