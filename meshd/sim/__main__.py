"""``python -m meshd.sim``: run seeds of the deterministic simulation and print what they did.

Exit status: 0 when every seed converged within the bound with no safety violation, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from meshd.sim.campaign import FAILURES_SHOWN, Summary, default_jobs, describe_failure, mode_of, run_seed, run_seeds
from meshd.sim.search import planned, search
from meshd.sim.variants import VARIANTS
from meshd.sim.world import run


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m meshd.sim",
        description="Run meshd's real daemon code over a fault-injecting simulated network in virtual time: "
        "each seed decides a schedule of faults; safety is checked after every step and the time from the "
        "last fault to every process ready in one generation is measured against the design's bound B.",
    )
    parser.add_argument("--seeds", type=positive, default=100, help="how many seeds to run (default 100)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--size", type=positive, default=8, help="processes in the cluster (default 8)")
    parser.add_argument(
        "--mode",
        choices=["fixed", "auto", "mixed"],
        default="mixed",
        help="epochs from a controller (fixed), self-minted (auto), or mixed: even seeds fixed, odd auto (default)",
    )
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="run a deliberately broken protocol variant (must fail)"
    )
    parser.add_argument("--jobs", type=positive, default=default_jobs(), help="worker processes (default: cores)")
    parser.add_argument("--replay", type=int, metavar="SEED", help="run one seed and print its schedule and trace")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the summary as JSON")
    parser.add_argument(
        "--search",
        action="store_true",
        help="instead of random seeds, run the targeted search over fault timings (meshd.sim.search); with "
        "--replay N, replay its schedule N",
    )
    parser.add_argument("--coarse", action="store_true", help="with --search: a coarser grid (the test suite's)")
    args = parser.parse_args(argv)
    if args.size < 2:
        parser.error("--size must be at least 2")
    return args


def replay(args: argparse.Namespace) -> int:
    outcome = run_seed(args.replay, args.size, args.mode, args.variant)
    print("\n".join(outcome.trace))
    if outcome.ok:
        print(
            f"seed {outcome.seed} ({mode_of(args.replay, args.mode)}): converged {outcome.converged_after:.6f}s "
            f"after the last fault; exits per slot {outcome.exits}"
        )
        return 0
    print("\n".join(describe_failure(outcome)))
    return 1


def run_search(args: argparse.Namespace) -> int:
    if args.replay is not None:
        schedule = planned(args.size, args.replay, coarse=args.coarse)
        outcome = run(schedule, args.variant)
        print("\n".join(outcome.trace))
        print("\n".join(schedule.describe()))
        print(f"{'ok' if outcome.ok else 'FAILED: ' + str(outcome.failure)}; exits per slot {outcome.exits}")
        print("\n".join(f"  {violation}" for violation in outcome.violations))
        return 0 if outcome.ok else 1
    started = time.monotonic()
    summary, failing = search(args.size, args.variant, args.jobs, coarse=args.coarse)
    print("\n".join(summary.report()))
    print(f"  wall time        {time.monotonic() - started:.1f}s on {args.jobs} worker(s)")
    for schedule, outcome in zip(failing[:FAILURES_SHOWN], summary.failures, strict=False):
        print()
        print(f"FAIL search schedule {schedule.seed}: {outcome.failure}")
        print("\n".join(schedule.describe()))
        print("\n".join(f"  {violation}" for violation in outcome.violations))
        coarse = " --coarse" if args.coarse else ""
        variant = f" --variant {args.variant}" if args.variant else ""
        print(f"  replay: python -m meshd.sim --search{coarse} --size {args.size}{variant} --replay {schedule.seed}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary.to_json(), indent=2))
    return 0 if summary.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.search:
        return run_search(args)
    if args.replay is not None:
        return replay(args)
    summary = Summary(args.size, args.mode, args.variant)
    started = time.monotonic()
    seeds = range(args.first, args.first + args.seeds)
    for outcome in run_seeds(seeds, args.size, args.mode, args.variant, args.jobs):
        summary.add(outcome)
    elapsed = time.monotonic() - started
    print("\n".join(summary.report()))
    print(
        f"  wall time        {elapsed:.1f}s on {args.jobs} worker(s), {elapsed / summary.seeds * 1000:.1f} ms per seed"
    )
    for outcome in summary.failures:
        print()
        print("\n".join(describe_failure(outcome)))
    if args.json is not None:
        args.json.write_text(json.dumps(summary.to_json() | {"wall_seconds": elapsed}, indent=2))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
