"""The deterministic simulation (meshd.sim): its network, its reproducibility, a few hundred seeds, and proof that
it catches broken protocol variants.

The simulations run in worker processes (each seed is its own trio.run with a virtual clock), so these are plain
synchronous tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys

import pytest
import trio
import trio.testing

from meshd.core.address import Address
from meshd.sim.campaign import Summary, run_seed, run_seeds
from meshd.sim.network import Attachment, SimNetwork
from meshd.sim.schedule import generate
from meshd.sim.variants import FIX_REVERTED, VARIANTS

A = Address("10.0.0.1", 7000)
B = Address("10.0.0.2", 7000)
LATENCY = (0.001, 0.001)


def run_virtual(scenario):
    """Run ``scenario(net, nursery)`` on a fresh simulated network in virtual time."""

    async def main():
        net = SimNetwork(random.Random(0), LATENCY)
        async with trio.open_nursery() as nursery:
            net.attach(nursery)
            await scenario(net, nursery)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def connected_pair(net):
    a, b = Attachment(0, A), Attachment(1, B)
    (listener,) = await net.listen(b)
    dialer = await net.connect(a, B)
    accepted = await listener.accept()
    return a, b, dialer, accepted


def test_a_partition_is_silence_and_segments_arrive_after_the_heal():
    async def scenario(net, nursery):
        _, _, dialer, accepted = await connected_pair(net)
        net.cut(A, B)
        await dialer.send_all(b"hello")
        with trio.move_on_after(5) as waited:
            await accepted.receive_some()
        assert waited.cancelled_caught  # silence, no reset, for as long as the cut lasts
        healed = trio.current_time()
        net.mend(A, B)
        assert await accepted.receive_some() == b"hello"
        assert trio.current_time() - healed <= 2 * LATENCY[1] + 1e-9

    run_virtual(scenario)


def test_data_sent_to_a_closed_end_is_answered_with_a_reset():
    async def scenario(net, nursery):
        _, _, dialer, accepted = await connected_pair(net)
        await accepted.aclose()
        assert await dialer.receive_some() == b""  # the FIN
        await dialer.send_all(b"anyone?")
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(1):
            while True:  # b"" (the FIN again) until the reset comes back
                assert await dialer.receive_some() == b""
                await trio.sleep(LATENCY[1] / 4)

    run_virtual(scenario)


def test_a_paused_process_sends_nothing_and_its_close_waits_for_the_resume():
    async def scenario(net, nursery):
        a, _, dialer, accepted = await connected_pair(net)
        net.pause(a)

        async def send_late():
            with contextlib.suppress(trio.ClosedResourceError):  # closed before the process could run again
                await dialer.send_all(b"late")

        nursery.start_soon(send_late)
        await trio.testing.wait_all_tasks_blocked()
        await dialer.aclose()
        with trio.move_on_after(3) as waited:
            await accepted.receive_some()
        assert waited.cancelled_caught
        net.resume(a)
        with trio.fail_after(1):
            assert await accepted.receive_some() == b""  # its close went out at the resume; the send never did

    run_virtual(scenario)


def test_a_close_made_while_paused_goes_out_when_the_process_is_killed():
    async def scenario(net, nursery):
        a, _, dialer, accepted = await connected_pair(net)
        net.pause(a)
        await dialer.aclose()
        net.kill(a, silent=False)  # its kernel closes what the stopped process could not
        with trio.fail_after(1):
            assert await accepted.receive_some() == b""

    run_virtual(scenario)


def test_a_crashed_host_answers_nothing():
    async def scenario(net, nursery):
        _, b, dialer, _ = await connected_pair(net)
        net.kill(b, silent=True)
        await dialer.send_all(b"x")
        with trio.move_on_after(5) as waited:
            await dialer.receive_some()
        assert waited.cancelled_caught

    run_virtual(scenario)


def trace_digest(seed: int, size: int, mode: str) -> str:
    outcome = run_seed(seed, size, mode, None)
    return hashlib.sha256("\n".join(outcome.trace).encode()).hexdigest()


def test_a_seed_replays_the_same_trace_in_this_process_and_in_another():
    seed, size = 7, 5
    first = run_seed(seed, size, "auto", None)
    second = run_seed(seed, size, "auto", None)
    assert len(first.trace) > 100  # a real run: starts, links, faults, readiness
    assert first.trace == second.trace
    code = (
        "import hashlib; from meshd.sim.campaign import run_seed; "
        f"o = run_seed({seed}, {size}, 'auto', None); "
        "print(hashlib.sha256('\\n'.join(o.trace).encode()).hexdigest())"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == hashlib.sha256("\n".join(first.trace).encode()).hexdigest()


def test_different_seeds_make_different_schedules_and_traces():
    assert generate(1, 4, "fixed") != generate(2, 4, "fixed")
    assert trace_digest(1, 4, "fixed") != trace_digest(2, 4, "fixed")


@pytest.mark.parametrize(("size", "seeds"), [(3, 200), (6, 100)])
def test_every_seed_converges_within_the_bound_with_no_violation(size, seeds):
    summary = Summary(size, "mixed", None)
    for outcome in run_seeds(range(seeds), size, "mixed", None, jobs=2):
        summary.add(outcome)
    assert summary.ok, "\n".join(summary.report() + [str(o.violations) for o in summary.failures])
    assert summary.converged == seeds
    assert summary.by_mode == {"fixed": seeds // 2, "auto": seeds // 2}
    assert summary.exit_codes[75] > 0  # the faults did make survivors fence: these runs exercised recoveries


# For each broken variant: what the simulation must report for it, and how many seeds it may take to find one.
# variant -> (the kinds of failure that are its signature, seeds to try). Ready without comparing views shows either as
# two ready meshes with different views (S2) or as a process ready while a peer's link is down (R4): both are what
# view agreement exists to prevent; which one a seed hits first depends on the schedule.
EXPECTED_CATCH = {
    "no-epoch-check": (("S1: slot",), 10),
    "classic-no-redial": (("did not converge",), 10),
    "no-view-agreement": (("with different views", "R4: slot"), 120),
}


# The variants reverting a rule of the fix of the first design are caught elsewhere (their tests name them): the
# targeted search (tests/test_findings.py: first-design), the replay of finding 5 (full-views-only), the models
# back to back in the state each rule is for (tests/test_mesh_model.py: no-leave, no-consent, hello-alone).
CAUGHT_ELSEWHERE = {"first-design", *FIX_REVERTED}


def test_every_broken_variant_has_an_expectation():
    assert set(EXPECTED_CATCH) | CAUGHT_ELSEWHERE == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(EXPECTED_CATCH))
def test_the_simulation_catches_a_broken_variant(variant):
    """A harness that cannot catch a wedge proves nothing: each variant must yield a failing seed, of its kind."""
    expected, seeds = EXPECTED_CATCH[variant]
    failing = None
    for outcome in run_seeds(range(seeds), 4, "mixed", variant, jobs=2):
        if not outcome.ok:
            failing = outcome
            break
    assert failing is not None, f"{variant}: no failing seed among {seeds}"
    report = (failing.failure or "") + " ".join(failing.violations)
    assert any(kind in report for kind in expected), (failing.failure, failing.violations)
    # The same seed with the real protocol passes: the variant's rule is what broke it.
    assert run_seed(failing.seed, 4, "mixed", None).ok


def run_sim_command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meshd.sim", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_command_line_prints_the_figures_and_fails_on_a_broken_variant():
    good = run_sim_command("--seeds", "6", "--size", "3", "--jobs", "1")
    assert good.returncode == 0, good.stdout + good.stderr
    fields = ("seeds run        6", "converged        6", "p50", "p99", "max", "exits per process", "failing seeds")
    for field in fields:
        assert field in good.stdout, good.stdout
    bad = run_sim_command("--seeds", "3", "--size", "4", "--variant", "no-epoch-check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILING SEEDS" in bad.stdout and "replay: python -m meshd.sim --replay" in bad.stdout


def test_a_replay_prints_the_trace_and_the_verdict():
    replay = run_sim_command("--replay", "3", "--size", "3", "--mode", "fixed")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "pid 0 slot" in replay.stdout and "last fault over" in replay.stdout
    assert "seed 3 (fixed): converged" in replay.stdout
