"""Real-process chaos for meshd: seeded trials of kills, pauses, stale-epoch restarts, duplicate starts and
partitions, in both epoch modes, on loopback and across network namespaces; recovery timed, safety checked.

Run through ``scripts/chaos`` (it sets up the venv and runs ``python -m tools.chaos``). For each network (loopback;
netns when root with ``ip`` and ``nft``) and epoch mode (fixed epochs from a controller, ``--epoch auto``),
``--trials`` trials run one after the other, each a fresh cluster of ``--size`` daemons: formation, ``--faults``
faults from the trial's seed, then a quiet period in which every process must be ready in one epoch within the
design's bound B (docs/design.md §5).
With ``--worker alltoall`` (alias ``--workers``) every daemon runs ``examples/alltoall.py`` as its worker (``meshd run
--exec``) and the trials also judge the workers (``tools.chaos.workers``): no worker exchanged data with another
generation, every slot ends with exactly one worker of the final generation, and no worker outlived its daemon.
With ``--worker bytewax`` every daemon runs the continuous bytewax flow (``examples/bytewax/launch.py``); after the
last fault the job must complete a window again in one generation within B + ``--startup``, and every result line
must be right (the example's checker); then the same seeds run against bytewax WITHOUT meshd under a supervisor
that restarts each process on its own (``tools.chaos.baseline``), and one table compares both.
Prints one line per trial and a summary table; writes ``chaos.json`` (settings, summary, every trial with its
schedule, exits, processes and violations) and ``chaos.png`` (recovery-time CDF and histogram) to ``--out``.
Exits 0 when every trial converged with no violation, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from meshd.cluster.controller import RESTART_DELAY
from meshd.cluster.spawn import FAST_TIMEOUTS
from meshd.config import Timeouts
from meshd.core.bounds import liveness_bound
from tools.chaos import baseline
from tools.chaos.faults import plan
from tools.chaos.netns import LOOPBACK, Hosts, Namespaces, clean_stale, netns_unavailable
from tools.chaos.report import (
    comparison_plot,
    comparison_rows,
    comparison_table,
    plot,
    summarize,
    table,
    worker_line,
    write_json,
)
from tools.chaos.results import OFFSET, STARTUP, available
from tools.chaos.spec import TrialSpec
from tools.chaos.trial import Trial
from tools.chaos.workers import ALLTOALL_KIND, BYTEWAX_KIND, WORKER_KINDS
from tools.chaos.workers import summary as worker_summary
from tools.ports import LowPorts

MODES = ("fixed", "auto")
NETS = ("loopback", "netns")
# S in B: `meshd run` to listening, upper bound on this loaded 2-core machine (the README measures 0.2-0.45 s).
START_TIME = 1.0
# δ in B: message delay between live processes after the last fault (loopback or a bridge: far below this).
DELTA = 0.1


def say(text: str) -> None:
    print(f"[chaos] {text}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per epoch mode and network (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first trial; trial k uses SEED+k (default 1)")
    parser.add_argument("--size", type=int, default=4, help="daemons per cluster (default 4)")
    parser.add_argument("--faults", type=int, default=4, help="faults per trial (default 4)")
    parser.add_argument("--modes", default=",".join(MODES), help="epoch modes, comma-separated (default fixed,auto)")
    parser.add_argument(
        "--net", default=None, help="networks, comma-separated: loopback,netns (default: both where netns works)"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="how long a recovered mesh must hold (default 1 s)")
    parser.add_argument("--start-time", type=float, default=START_TIME, help=f"S in B (default {START_TIME} s)")
    parser.add_argument("--out", type=Path, default=Path("chaos-out"), help="output directory (default chaos-out/)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs of passing trials too")
    parser.add_argument(
        "--worker",
        choices=WORKER_KINDS,
        default=None,
        help="every daemon runs a worker (--exec): examples/alltoall.py, or the bytewax flow (examples/bytewax/)",
    )
    parser.add_argument(
        "--workers",
        dest="worker",
        action="store_const",
        const=ALLTOALL_KIND,
        help="the same as --worker alltoall",
    )
    parser.add_argument(
        "--startup",
        type=float,
        default=STARTUP,
        help=f"--worker bytewax: start-up allowance beyond B for results to flow again (default {STARTUP} s)",
    )
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="--worker bytewax: skip the baseline trials"
    )
    parser.add_argument(
        "--baseline-limit",
        type=float,
        default=baseline.LIMIT,
        help=f"baseline: how long after the last fault results may take to flow again (default {baseline.LIMIT} s)",
    )
    args = parser.parse_args(argv)
    args.workers = args.worker is not None
    args.bytewax = args.worker == BYTEWAX_KIND
    args.baseline = args.baseline and args.bytewax
    if args.bytewax and (reason := available()):
        parser.error(f"--worker bytewax: {reason}")
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not args.modes or any(mode not in MODES for mode in args.modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.net is None:
        args.net = ["loopback"] + (["netns"] if netns_unavailable() is None else [])
    else:
        args.net = [net.strip() for net in args.net.split(",") if net.strip()]
        if not args.net or any(net not in NETS for net in args.net):
            parser.error(f"--net: choose from {', '.join(NETS)}")
        if "netns" in args.net and (reason := netns_unavailable()):
            parser.error(f"--net netns: {reason}")
    if args.trials < 1 or args.size < 2 or args.faults < 1:
        parser.error("--trials and --faults must be at least 1, --size at least 2")
    return args


def describe(record: dict[str, Any]) -> str:
    faults = "; ".join(
        f"+{fault['at']:.2f} {fault['kind']} {fault['slots']}"
        + (f" {fault['duration']:.1f}s" if fault["duration"] else "")
        + (f" e{fault['stale_epoch']}" if fault["stale_epoch"] is not None else "")
        + (f" ({fault['note']})" if fault["note"] and fault["kind"] != "pause" else "")
        for fault in record["faults"]
    )
    outcome = f"ready {record['recovery']:.2f}s after the last fault" if record["converged"] else "DID NOT CONVERGE"
    exits = {slot: codes for slot, codes in record["exits"].items() if codes}
    text = f"{record['mode']}/{record['net']} seed {record['seed']}: {faults} -> {outcome}; exits {exits}"
    if record.get("workers"):
        workers = record["workers"]
        text += (
            f"; workers: {workers['started']} started in {workers['generations']} generations, "
            f"worker exits {workers['exits']}, {workers['without_exit_event']} without a worker_exited event"
        )
    if "results" in record:  # --worker bytewax
        if record.get("progress") is not None:
            where = record["progress_window"]
            text += f"; bytewax results again {record['progress']:.2f}s after the last fault (epoch {where['epoch']})"
        else:
            text += "; bytewax NO complete window after the last fault"
        text += f", {record['results']} result lines checked"
    for violation in record["violations"]:
        text += f"\n    VIOLATION {violation['kind']}: {violation['detail']}"
    return text


def fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def campaign(args: argparse.Namespace, settings: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Run every trial, appending each record to ``trials`` as it completes."""
    logs = args.out / "logs"
    # Loopback mesh and admin ports come from below the kernel's ephemeral range, never one twice in a run.
    ports = LowPorts(random.Random(args.seed), LOOPBACK)
    for net in args.net:
        namespaces = await trio.to_thread.run_sync(Namespaces, args.size) if net == "netns" else None
        try:
            for mode in args.modes:
                for number in range(args.trials):
                    seed = args.seed + number
                    mesh = timely_free(ports, args.size) if args.bytewax else ports.take(args.size)
                    hosts = namespaces or Hosts(mesh, ports.take(args.size))
                    spec = TrialSpec(
                        index=len(trials),
                        seed=seed,
                        mode=mode,
                        size=args.size,
                        timeouts=FAST_TIMEOUTS,
                        faults=plan(seed, args.size, mode, hosts.partitions, args.faults, workers=args.workers),
                        bound=settings["bound"],
                        settle=args.settle,
                        workers=args.workers,
                        worker=args.worker or ALLTOALL_KIND,
                        startup=args.startup,
                    )
                    workdir = logs / f"{net}-{mode}-seed{seed}"
                    await trio.to_thread.run_sync(fresh_directory, workdir)
                    trial = await trio.to_thread.run_sync(Trial, spec, hosts, workdir)
                    record = await trial.run()
                    trials.append(record)
                    say(describe(record))
                    if not record["converged"] or record["violations"]:
                        tails = await trio.to_thread.run_sync(trial.logs)
                        say(f"daemon logs of the failed trial (all in {workdir}):\n{tails}")
                    elif not args.keep_logs:
                        await trio.to_thread.run_sync(functools.partial(shutil.rmtree, workdir, ignore_errors=True))
        finally:
            if namespaces is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(namespaces.close)


def timely_free(ports: LowPorts, count: int) -> list[int]:
    """``count`` loopback mesh ports whose bytewax (Timely) port, mesh port + OFFSET, is free too (and reserved)."""
    chosen: list[int] = []
    while len(chosen) < count:
        (port,) = ports.take(1)
        timely = port + OFFSET
        if timely < 32768 and timely not in ports._handed_out and ports._free(timely):
            ports._handed_out.add(timely)
            chosen.append(port)
    return chosen


async def run(
    args: argparse.Namespace,
    settings: dict[str, Any],
    trials: list[dict[str, Any]],
    base: list[dict[str, Any]] | None = None,
) -> None:
    """The campaign, ended early (and cleaned up) by SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    say(f"{signal.Signals(signum).name}: stopping after cleaning up")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await campaign(args, settings, trials)
            if args.baseline and base is not None:
                seeds = [args.seed + number for number in range(args.trials)]
                say(f"baseline: the same seeds {seeds} against bytewax without meshd, each process restarted alone")
                ports = LowPorts(random.Random(args.seed + 1), LOOPBACK)
                records = await baseline.campaign(
                    seeds, args.size, args.faults, args.baseline_limit, args.out, ports, args.keep_logs
                )
                base.extend(records)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if "netns" in args.net:
        removed = clean_stale()
        if removed:
            say(f"removed namespaces and links of dead runs: {', '.join(removed)}")
    timeouts = Timeouts(**FAST_TIMEOUTS)
    bound = math.ceil(100 * liveness_bound(timeouts, args.size, RESTART_DELAY, args.start_time, DELTA)) / 100  # B, up
    settings = {
        "size": args.size,
        "faults_per_trial": args.faults,
        "trials_per_mode_and_net": args.trials,
        "first_seed": args.seed,
        "modes": args.modes,
        "nets": args.net,
        "timeouts": FAST_TIMEOUTS,
        "restart_delay": RESTART_DELAY,
        "start_time": args.start_time,
        "delta": DELTA,
        "bound": bound,
        "settle": args.settle,
        "workers": args.workers,
        "worker": args.worker,
        "startup": args.startup if args.bytewax else None,
        "baseline_limit": args.baseline_limit if args.baseline else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
    }
    say(
        f"{args.trials} trials per mode and network: modes {args.modes}, networks {args.net}, {args.size} daemons, "
        f"{args.faults} faults per trial, first seed {args.seed}; B = {bound:.2f}s"
        + (f"; every daemon runs {args.worker} as its worker" if args.workers else "")
    )
    trials: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    try:
        trio.run(run, args, settings, trials, base)
    finally:
        rows = summarize(trials) if trials else []
        workers = worker_summary(trials) if args.workers else None
        extra = None
        if args.bytewax:
            compared = comparison_rows(trials, base)
            extra = {"comparison": compared, "baseline": base}
        write_json(args.out / "chaos.json", settings, rows, trials, workers, extra)
        if trials:
            plot(args.out / "chaos.png", trials)
            print(table(rows), flush=True)
        if workers is not None:
            say(worker_line(workers))
        if extra is not None:
            print(comparison_table(extra["comparison"]), flush=True)
            comparison_plot(args.out / "bytewax.png", extra["comparison"])
            say(f"wrote {args.out / 'bytewax.png'} (recovery-time CDF, meshd and the baseline)")
        say(f"wrote {args.out / 'chaos.json'}" + (f" and {args.out / 'chaos.png'}" if trials else ""))
    expected = len(args.net) * len(args.modes) * args.trials
    failed = [trial for trial in trials if not trial["converged"] or trial["violations"]]
    same = f"--size {args.size} --faults {args.faults}" + (f" --worker {args.worker}" if args.workers else "")
    for trial in failed:
        replay = f"scripts/chaos --seed {trial['seed']} --trials 1 --modes {trial['mode']} --net {trial['net']}"
        say(f"failed: {trial['mode']}/{trial['net']} seed {trial['seed']} (replay: {replay} {same})")
    return 0 if len(trials) == expected and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
