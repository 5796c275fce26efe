"""One rank of the gloo comparison in scripts/bench (see ``tools.bench.gloo``); a separate program, run by its path,
so that its start-up is torch's and Python's alone (it imports nothing of meshd or tools).

It imports torch, joins the group (``init_process_group("gloo")`` over the TCP store that rank 0 hosts), passes a
barrier, then runs one more barrier for every line on its stdin until EOF. Each step is printed as a JSON line
with the wall-clock ``time``; a failure of the group is printed as an ``error`` line and ends the rank with 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import timedelta
from typing import Any


def rank_main(argv: list[str]) -> int:
    """One gloo rank: import, join, barrier, then a barrier per stdin line; every step printed as a JSON line."""
    parser = argparse.ArgumentParser(prog="gloo_rank.py")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--store", required=True, help="HOST:PORT of rank 0's TCP store")
    parser.add_argument("--timeout", type=float, help="the group's timeout in seconds (default: gloo's, 30 min)")
    args = parser.parse_args(argv)

    def say(event: str, **details: Any) -> None:
        print(json.dumps({"event": event, "time": time.time(), "rank": args.rank, **details}), flush=True)

    import torch.distributed as dist

    say("imported")
    extra = {} if args.timeout is None else {"timeout": timedelta(seconds=args.timeout)}
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://{args.store}", rank=args.rank, world_size=args.world, **extra
        )
        say("joined")
        dist.barrier()
        say("barrier")
        for _ in sys.stdin:
            dist.barrier()
            say("barrier")
    except Exception as exc:  # every failure of the group is the measurement: report it and leave
        say("error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(rank_main(sys.argv[1:]))
