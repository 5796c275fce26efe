"""Flood one daemon of a ready local meshd cluster with strangers and check that the mesh does not notice.

Run through ``scripts/flood`` (it sets up the venv and runs ``python -m tools.flood``). A cluster of ``--size``
daemons (epoch 1, a cluster secret, meshd's default timeouts, or the test suite's with ``--fast``) is started on
loopback and waited for; every daemon's admin watch is subscribed; then daemon ``--index`` is flooded with
``--connections`` connections on its mesh port (``--target mesh``: silent, slow, garbage, forged hello), its admin
port (``--target admin``: silent, slow HTTP, garbage, oversize request after a valid upgrade, idle websocket) or
both one after the other, at most ``--concurrency`` open at once. After 2 x heartbeat_timeout of quiet, a table per
port: connections attempted, taken on then closed by the daemon, closed unheard, shed (status ``handshakes_shed`` or
``admin_rejected`` delta), ``auth_failures`` delta, links lost and other disturbance events on any daemon, every
daemon's state, the longest status round trip during the flood, the target's RSS before / peak (sampled every
50 ms) / after, its log lines, the wall time; then how each kind of connection ended. ``--json [PATH]`` also writes
the figures as JSON (to stdout without PATH). Exits 0 when no link went down, every daemon stayed ready with its
links, and no stranger's connection outlived the daemon's bound; 1 otherwise; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import trio

from meshd.cluster.spawn import FAST_TIMEOUTS
from meshd.config import Timeouts
from tools.flood.campaign import FloodError, LocalCluster, TargetRun, endings_table, flood_target, say, summary_table
from tools.flood.campaign import workdir as make_workdir
from tools.flood.clients import KINDS
from tools.flood.observe import raise_fd_limit

PORTS = ("mesh", "admin")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3, help="daemons in the cluster (default 3)")
    parser.add_argument("--index", type=int, default=0, help="the daemon flooded (default 0)")
    parser.add_argument("--connections", type=int, default=2000, help="connections per port (default 2000)")
    parser.add_argument("--target", choices=[*PORTS, "both"], default="both", help="the port flooded (default both)")
    parser.add_argument(
        "--kinds",
        help=f"kinds of strangers, comma-separated (default all: mesh {','.join(KINDS['mesh'])}; "
        f"admin {','.join(KINDS['admin'])})",
    )
    parser.add_argument("--concurrency", type=int, default=500, help="connections open at once, at most (default 500)")
    parser.add_argument("--idle-seconds", type=float, default=1.0, help="how long an idle admin client holds (1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the garbage (default 0)")
    parser.add_argument("--fast", action="store_true", help="the test suite's timeouts (handshake 0.5 s, heartbeat "
                        "timeout 0.5 s) instead of meshd's defaults")  # fmt: skip
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory (configs, logs)")
    args = parser.parse_args(argv)
    if args.size < 2:
        parser.error("--size must be at least 2")
    if not 0 <= args.index < args.size:
        parser.error("--index must name a daemon of the cluster")
    if args.connections < 0 or args.concurrency < 1:
        parser.error("--connections must be >= 0 and --concurrency >= 1")
    args.ports = list(PORTS) if args.target == "both" else [args.target]
    args.kinds_of = {}
    wanted = None if args.kinds is None else [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    for port in args.ports:
        kinds = list(KINDS[port]) if wanted is None else [kind for kind in wanted if kind in KINDS[port]]
        if not kinds:
            parser.error(f"none of --kinds is a kind of the {port} port ({', '.join(KINDS[port])})")
        args.kinds_of[port] = kinds
    if wanted is not None:
        unknown = set(wanted) - {kind for port in args.ports for kind in KINDS[port]}
        if unknown:
            parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    return args


async def campaign(args: argparse.Namespace, directory: Path) -> list[TargetRun]:
    timeouts = Timeouts(**FAST_TIMEOUTS) if args.fast else Timeouts()
    cluster = LocalCluster(args.size, directory, timeouts)
    try:
        cluster.start()
        say(f"{args.size} daemons starting in {directory}")
        await cluster.wait_ready()
        say("cluster ready")
        runs = []
        for port in args.ports:
            runs.append(
                await flood_target(
                    cluster,
                    port,
                    index=args.index,
                    connections=args.connections,
                    kinds=args.kinds_of[port],
                    concurrency=args.concurrency,
                    seed=args.seed,
                    idle_seconds=args.idle_seconds,
                )
            )
        return runs
    except FloodError as exc:
        exc.logs = exc.logs or cluster.logs()
        raise
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    limit = raise_fd_limit()
    if limit < args.concurrency + 64:
        say(f"warning: RLIMIT_NOFILE is {limit}, under --concurrency {args.concurrency} plus what the tool holds")
    directory = make_workdir()
    try:
        runs = trio.run(campaign, args, directory)
    except FloodError as exc:
        print(f"FAILED: {exc}\n{exc.logs}", file=sys.stderr)
        print(f"(logs kept in {directory})", file=sys.stderr)
        return 1
    problems = [problem for run in runs for problem in run.problems()]
    for run in runs:
        print(summary_table(run))
        print()
        print(endings_table(run))
        print()
    if args.json is not None:
        text = json.dumps({"runs": [run.to_json() for run in runs], "problems": problems}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if problems:
        print("FAILED:\n" + "\n".join(f"- {problem}" for problem in problems))
        print(f"(logs kept in {directory})")
        return 1
    print("OK: no link went down, every daemon stayed ready with its links, no stranger outlived its bound")
    if args.keep:
        print(f"(logs kept in {directory})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
