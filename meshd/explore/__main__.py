"""``python -m meshd.explore``: search every state of a small cluster under the real rules; exit 1 on a violation."""

from __future__ import annotations

import argparse
import sys

from meshd.core.generation import EpochMode
from meshd.explore.search import explore
from meshd.explore.world import FAULT_KINDS
from meshd.sim.variants import VARIANTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshd.explore", description=__doc__)
    parser.add_argument("--size", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--mode", choices=["auto", "fixed"], default="auto")
    parser.add_argument("--faults", type=int, default=1, help="faults in a run: kill -9, zombie, timeout (default 1)")
    parser.add_argument(
        "--kinds",
        default=",".join(sorted(FAULT_KINDS)),
        help="the faults allowed, comma-separated among kill, zombie, timeout, linger (default: all)",
    )
    parser.add_argument("--no-crossed", action="store_true", help="one exchange per pair at a time (smaller)")
    parser.add_argument("--max-states", type=int, default=2_000_000, help="give up (and fail) beyond this many states")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="a deliberately broken rule (must fail)")
    args = parser.parse_args(argv)
    broken = VARIANTS[args.variant]() if args.variant else None
    if broken is not None:
        broken.__enter__()
    try:
        kinds = frozenset(kind for kind in args.kinds.split(",") if kind)
        if not kinds <= FAULT_KINDS:
            parser.error(f"--kinds: unknown fault kind(s) {sorted(kinds - FAULT_KINDS)}")
        report = explore(
            args.size,
            EpochMode(args.mode),
            args.faults,
            kinds=kinds,
            crossed=not args.no_crossed,
            max_states=args.max_states,
        )
    finally:
        if broken is not None:
            broken.__exit__(None, None, None)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
