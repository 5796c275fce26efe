"""Fuzz campaigns against meshd's untrusted-input surfaces: the frame decoder, the handshake machine, the admin JSON.

Run through ``scripts/fuzz`` (it sets up the venv and runs ``python -m tools.fuzz``). Each target runs ``--inputs``
seeded inputs (by default 1,000,000 for the decoder, 200,000 for the others) over ``--jobs`` processes; a table
gives, per target, the inputs tried, the distinct outcomes, the crashes, the wall time and the inputs per second,
then every target's outcomes and, for each place a crash was raised, its shortest input (hex) and traceback.
``--replay HEX`` runs one input (as printed) through ``--target`` again. Exits 0 without a crash, 1 with one.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from tools.fuzz.campaign import Result, replay, run
from tools.fuzz.targets import TARGETS
from tools.report import table

# Inputs per target by default: the decoder is the cheapest per input and the first thing a stranger reaches.
DEFAULT_INPUTS = {"decoder": 1_000_000, "handshake": 200_000, "admin": 200_000}
# Outcomes listed per target, most frequent first.
SHOWN_OUTCOMES = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all", help="the surface to fuzz (all)")
    parser.add_argument("--inputs", type=int, help="inputs per target (1,000,000 decoder, 200,000 others)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every generator (0)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes (2)")
    parser.add_argument("--replay", metavar="HEX", help="run this one input through --target and stop")
    args = parser.parse_args(argv)
    if args.replay is not None and args.target == "all":
        parser.error("--replay needs a --target")
    return args


def report(results: list[Result], jobs: int, seed: int) -> str:
    """The summary table, every target's outcomes, and every crash group with its shortest input."""
    rows = [
        [
            result.target,
            f"{result.inputs:,}",
            f"{len(result.outcomes):,}",
            f"{result.crash_count:,}",
            f"{result.seconds:.1f} s",
            f"{result.inputs / result.seconds:,.0f}",
        ]
        for result in results
    ]
    header = ["target", "inputs", "distinct outcomes", "crashes", "wall time", "inputs/s"]
    parts = [f"seed {seed}, {jobs} jobs", table(header, rows)]
    for result in results:
        shown = result.outcomes.most_common(SHOWN_OUTCOMES)
        rest = len(result.outcomes) - len(shown)
        outcome_rows = [[outcome, f"{count:,}"] for outcome, count in shown]
        if rest:
            outcome_rows.append([f"({rest} more)", ""])
        parts.append(f"{result.target} outcomes:\n" + table(["outcome", "count"], outcome_rows))
    for result in results:
        for crash in sorted(result.crashes.values(), key=lambda crash: -crash.count):
            parts.append(
                f"CRASH {result.target}: {crash.count:,} x {crash.signature}\n"
                f"shortest input ({len(crash.data)} bytes): {crash.data.hex()}\n{crash.traceback}"
            )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay is not None:
        try:
            print("\n".join(replay(args.target, bytes.fromhex(args.replay))))
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    results = []
    for target in TARGETS if args.target == "all" else [args.target]:
        inputs = DEFAULT_INPUTS[target] if args.inputs is None else args.inputs
        print(f"{target}: {inputs:,} inputs on {args.jobs} jobs ...", file=sys.stderr, flush=True)
        results.append(run(target, inputs, seed=args.seed, jobs=args.jobs))
    print(report(results, args.jobs, args.seed))
    return 1 if any(result.crashes for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
