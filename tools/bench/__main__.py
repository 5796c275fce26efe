"""Benchmark meshd as real processes on loopback, beside PyTorch's gloo: start-up, formation vs N, idle cost,
recovery after kill -9, detection of a silent peer.

Run through ``scripts/bench`` (it sets up the venv and runs ``python -m tools.bench``; ``--only`` picks parts).
Every figure is printed as a markdown-style table with its target and the load average beside it:

0. floors: what this machine can do, in the same run (``tools.bench.floors``): the interpreter alone, ``import
   trio``, spawn -> a bare listening socket, N(N-1)/2 loopback connects + one round trip each, N cold starts at once;
   a summary at the end puts each figure beside its floor (a ratio) and its target;
1. start: from spawning ``python -m meshd run ...`` (interpreter and imports included) until the mesh port accepts
   a TCP connection, polled tightly on loopback; also until the admin port accepts and answers ``status``;
2. formation: N daemons on fresh loopback ports, time from the moment the last mesh port accepts until every daemon
   is ``ready`` (the wall-clock "time" of each daemon's ``ready`` event, read through an admin watch opened as soon
   as that daemon's admin port answers), and the daemons' CPU time per link meanwhile; beside it gloo's formation
   (``tools.bench.gloo``); meshes and the formation measurement live in ``tools.bench.mesh``;
3. idle: CPU time (``/proc/PID/stat``) and RSS of the daemons of a ready mesh over a quiet period;
4. recovery after kill -9 of one or all daemons with an immediate restart, both epoch modes (``tools.bench.faults``,
   on ``meshd.cluster``'s controller);
5. detection of a SIGSTOPped daemon against the heartbeat timeout (``tools.bench.faults``);
6. gloo under the same faults (``tools.bench.gloo``);
7. the deterministic simulation: many seeds per cluster size, virtual time to converge (``tools.bench.sim``);
8. hand-off to the worker (``tools.bench.handoff``): mesh ready -> the ``--exec`` worker holds every data socket,
   and an all-to-all (examples/alltoall.py) through meshd's handed sockets vs sockets the workers formed without it.

Every wait is bounded; a failed run prints the daemons' logs. Every process is killed between runs and on exit.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from meshd.admin import client as admin
from meshd.cli import count, seconds
from meshd.cluster.spawn import write_config
from meshd.config import Timeouts
from meshd.core.address import Address
from meshd.core.status import MeshState, Status
from meshd.sim.campaign import Summary
from tools.bench import faults, fence, floors, gloo, handoff, sim
from tools.bench.common import (
    CLOCK_TICKS,
    HOST,
    POLL_INTERVAL,
    STATUS_TIMEOUT,
    BenchError,
    Fleet,
    Lab,
    accepts,
    cleanup,
    cpu_ticks,
    load,
    ms,
    progress,
    rss_mib,
    table,
    verdict,
)
from tools.bench.mesh import Daemon, Formation, Mesh, bench_formation, report_formation
from tools.ports import LowPorts

# Bounds on every wait.
START_TIMEOUT = 30.0  # one daemon: spawn -> admin status answered
# A ready mesh is left alone this long before the idle measurement starts (start-up transients settle).
IDLE_SETTLE = 1.0
# Targets, printed beside the measurements.
TARGET_START = 0.100  # seconds, spawn -> mesh port accepting
TARGET_IDLE_CPU = 0.5  # percent of one core, per daemon of an idle 16-daemon mesh (heartbeat_interval 0.25 s)
TARGET_RSS = 30.0  # MiB, per daemon of the same mesh
# Timeouts of the formation meshes. meshd's defaults (1 s handshake and heartbeat timeout) suit a real network, but
# Every part, in the order they run; --only picks some.
PARTS = ("floors", "start", "formation", "idle", "recovery", "fence", "detection", "gloo", "sim", "handoff")


# ---------------------------------------------------------------------------------------------------------------
# 1. start to listening


@dataclass
class StartRun:
    listening: float  # seconds from spawn
    admin_accepting: float
    admin_answered: float


async def wait_until(condition: Callable[[], Awaitable[bool]], daemon: Daemon, deadline: float, what: str) -> float:
    """Poll ``condition`` tightly; the perf_counter time it first held."""
    while True:
        if await condition():
            return time.perf_counter()
        if daemon.exited() is not None:
            raise BenchError(f"daemon exited with {daemon.exited()} before {what}", daemon.describe())
        if time.perf_counter() > deadline:
            raise BenchError(f"no {what} within {START_TIMEOUT:.0f} s", daemon.describe())
        await trio.sleep(POLL_INTERVAL)


async def _status(address: Address) -> Status:
    return await admin.status(address, timeout=STATUS_TIMEOUT)


async def start_once(lab: Lab, run: int) -> StartRun:
    mesh, other, admin_port = lab.ports.take(3)
    peers = [Address(HOST, mesh), Address(HOST, other)]
    config = await trio.to_thread.run_sync(write_config, lab.workdir / f"start-{run}.toml", "bench", peers)
    daemon = Daemon(0, Address(HOST, mesh), Address(HOST, admin_port), lab.workdir / f"start-{run}.log")
    try:
        spawned = time.perf_counter()
        await trio.to_thread.run_sync(daemon.spawn, lab.fleet, config)
        deadline = spawned + START_TIMEOUT
        listening = await wait_until(lambda: accepts(daemon.mesh), daemon, deadline, "mesh port accepting")
        admin_accepting = await wait_until(lambda: accepts(daemon.admin), daemon, deadline, "admin port accepting")
        try:
            await _status(daemon.admin)
        except admin.CLIENT_ERRORS as exc:
            raise BenchError(f"admin status request failed: {exc!r}", daemon.describe()) from exc
        admin_answered = time.perf_counter()
        return StartRun(listening - spawned, admin_accepting - spawned, admin_answered - spawned)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lab.fleet.kill, [daemon.process] if daemon.process else [])


def bench_start(lab: Lab, runs: int) -> list[StartRun]:
    trio.run(start_once, lab, -1)  # warm-up, not counted: byte-code caches and page cache
    results = []
    for run in range(runs):
        result = trio.run(start_once, lab, run)
        progress(
            f"start {run + 1}/{runs}: listening {ms(result.listening)}, admin accepting {ms(result.admin_accepting)}, "
            f"admin answered {ms(result.admin_answered)}"
        )
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# 3. idle cost


@dataclass
class Idle:
    size: int
    seconds: float
    cpu: list[float]  # percent of one core, per daemon
    rss: list[float]  # MiB, per daemon
    ready_after: int  # daemons still ready at the end


def bench_idle(lab: Lab, size: int, seconds: float) -> Idle:
    mesh = Mesh(size, lab, f"idle-{size}")
    try:
        trio.run(mesh.form)
        progress(f"idle: {size} daemons ready; settling {IDLE_SETTLE:.0f} s, then measuring {seconds:g} s")
        time.sleep(IDLE_SETTLE)
        pids = [daemon.process.pid for daemon in mesh.daemons if daemon.process]
        before = [cpu_ticks(pid) for pid in pids]
        started = time.monotonic()
        time.sleep(seconds)
        after = [cpu_ticks(pid) for pid in pids]
        elapsed = time.monotonic() - started
        rss = [rss_mib(pid) for pid in pids]
        cpu = [100.0 * (end - begin) / CLOCK_TICKS / elapsed for begin, end in zip(before, after, strict=True)]

        async def states() -> list[MeshState]:
            return [(await _status(daemon.admin)).state for daemon in mesh.daemons]

        ready_after = trio.run(states).count(MeshState.READY)
        if any(daemon.exited() is not None for daemon in mesh.daemons):
            raise BenchError("a daemon exited during the idle measurement", mesh.logs())
        return Idle(size, elapsed, cpu, rss, ready_after)
    finally:
        mesh.kill()


# ---------------------------------------------------------------------------------------------------------------
# Report


def report_start(runs: list[StartRun]) -> str:
    rows = []
    for label, values, target in (
        ("spawn -> mesh port accepting", [run.listening for run in runs], TARGET_START),
        ("spawn -> admin port accepting", [run.admin_accepting for run in runs], None),
        ("spawn -> admin status answered", [run.admin_answered for run in runs], None),
    ):
        median = statistics.median(values)
        goal = "-" if target is None else f"<= {ms(target)}"
        mark = "-" if target is None else verdict(median, target)
        rows.append([label, ms(median), ms(min(values)), ms(max(values)), goal, mark])
    title = f"## 1. Start to listening ({len(runs)} runs, one daemon, interpreter and imports included)"
    return title + "\n\n" + table(["measure", "median", "min", "max", "target", "verdict"], rows)


def report_idle(idle: Idle) -> str:
    rows = [
        [
            "CPU, % of one core",
            f"{statistics.median(idle.cpu):.2f} %",
            f"{max(idle.cpu):.2f} %",
            f"<= {TARGET_IDLE_CPU:g} %",
            verdict(max(idle.cpu), TARGET_IDLE_CPU),
        ],
        [
            "RSS (VmRSS), MiB",
            f"{statistics.median(idle.rss):.1f}",
            f"{max(idle.rss):.1f}",
            f"<= {TARGET_RSS:g} MiB",
            verdict(max(idle.rss), TARGET_RSS),
        ],
    ]
    title = f"## 3. Idle cost ({idle.size}-daemon ready mesh, {idle.seconds:.1f} s, per daemon)"
    resolution = 100.0 / CLOCK_TICKS / idle.seconds
    note = (
        f"{idle.ready_after}/{idle.size} daemons still ready at the end. CPU from /proc/PID/stat utime+stime "
        f"({CLOCK_TICKS} ticks/s: resolution {resolution:.2f} % over this period); verdict on the max."
    )
    return title + "\n\n" + table(["measure", "median", "max", "target", "verdict"], rows) + "\n\n" + note


def revision() -> str:
    """The commit measured, and whether meshd/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "meshd"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {commit}" + (" with uncommitted changes in meshd/" if dirty else "")


def machine() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"meshd bench ({revision()}) on {platform.node()}: {os.cpu_count()} CPUs, load average {load}, "
        f"Python {platform.python_version()}, {datetime.now():%Y-%m-%d %H:%M:%S}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Command line


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes, got {text!r}") from exc
    if not values or any(value < 2 for value in values):
        raise argparse.ArgumentTypeError(f"every size must be at least 2, got {text!r}")
    return values


def parts(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PARTS)}, got {text!r}")
    return chosen


# Defaults of the full run (about 20 minutes on this 2-core machine) and of --quick (about 3 minutes).
FULL: dict[str, Any] = {
    "sizes": [2, 4, 8, 16, 32, 64],
    "repeats": 3,
    "floor_runs": 10,
    "starts": 10,
    "idle": 10.0,
    "recovery_size": 8,
    "kill_one": 100,
    "kill_all": 10,
    "detections": 5,
    "gloo_sizes": [2, 4, 8, 16, 32],
    "gloo_repeats": 1,
    "gloo_kills": 3,
    "sim_sizes": list(sim.SIZES),
    "sim_seeds": sim.SEEDS,
    "handoff_sizes": [4, 8, 16],
    "handoff_runs": 3,
    "exchange_repeats": 4,
}
QUICK: dict[str, Any] = {
    "sizes": [2, 4, 8],
    "repeats": 2,
    "floor_runs": 5,
    "starts": 3,
    "idle": 3.0,
    "recovery_size": 4,
    "kill_one": 3,
    "kill_all": 2,
    "detections": 2,
    "gloo_sizes": [2, 4],
    "gloo_repeats": 1,
    "gloo_kills": 1,
    "sim_sizes": [3, 8],
    "sim_seeds": 20,
    "handoff_sizes": [4],
    "handoff_runs": 3,
    "exchange_repeats": 3,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0],
        epilog=f"parts: {', '.join(PARTS)}. Defaults are the full run's; --quick: "
        + ", ".join(f"{key}={value}" for key, value in QUICK.items()),
    )
    parser.add_argument(
        "--only", type=parts, default=list(PARTS), metavar="PARTS", help=f"some of {','.join(PARTS)} (default all)"
    )
    parser.add_argument("--quick", action="store_true", help="fast smoke run: small sizes, few repeats")
    parser.add_argument("--sizes", type=sizes, help="meshd formation sizes (default 2,4,8,16,32,64)")
    parser.add_argument("--repeats", type=count, help="meshd formation repetitions per size (default 3)")
    parser.add_argument("--floor-runs", type=count, help="runs of each floor (default 10; crowds: a third)")
    parser.add_argument("--starts", type=count, help="start-to-listening runs (default 10)")
    parser.add_argument("--idle", type=seconds, metavar="SECONDS", help="idle measurement period (default 10)")
    parser.add_argument("--idle-size", type=count, default=16, help="daemons in the idle mesh (default 16)")
    parser.add_argument("--recovery-size", type=count, help="daemons of the recovery and detection clusters (8)")
    parser.add_argument("--kill-one", type=count, help="kill -9 of one daemon, faults per epoch mode (100)")
    parser.add_argument("--kill-all", type=count, help="kill -9 of all daemons, faults per epoch mode (10)")
    parser.add_argument("--detections", type=count, help="SIGSTOP detection runs (default 5)")
    parser.add_argument("--gloo-sizes", type=sizes, help="gloo formation sizes (default 2,4,8,16,32: ~250 MiB a rank)")
    parser.add_argument("--gloo-repeats", type=count, help="gloo formation repetitions per size (default 1)")
    parser.add_argument("--gloo-kills", type=count, help="gloo kill-one trials, each bounded at 30 s (3)")
    parser.add_argument("--sim-sizes", type=sizes, help="simulated cluster sizes (default 3,8,16)")
    parser.add_argument("--sim-seeds", type=count, help="simulation seeds per size (default 10000)")
    parser.add_argument("--handoff-sizes", type=sizes, help="hand-off and all-to-all cluster sizes (default 4,8,16)")
    parser.add_argument("--handoff-runs", type=count, help="hand-off latency runs per size (default 3)")
    parser.add_argument("--exchange-repeats", type=count, help="all-to-all runs per size and way (default 4)")
    parser.add_argument("--seed", type=int, help="seed of the port and victim choices")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.idle_size < 2 or args.recovery_size < 2:
        parser.error("--idle-size and --recovery-size must be at least 2")
    return args


@dataclass
class Results:
    """What a run measured so far, reported even when a later part fails."""

    start: list[StartRun] = field(default_factory=list)
    formation: dict[int, list[Formation]] = field(default_factory=dict)
    gloo_formation: dict[int, list[gloo.GlooFormation]] = field(default_factory=dict)
    idle: Idle | None = None
    recovery: list[faults.RecoveryRuns] = field(default_factory=list)
    in_place: fence.Results = field(default_factory=dict)  # tools.bench.fence, --on-fence restart
    detection: faults.Detection | None = None
    gloo_kills: list[gloo.GlooKill] = field(default_factory=list)
    gloo_detection: gloo.GlooDetection | None = None
    sim: list[tuple[Summary, float]] = field(default_factory=list)
    handoff: list[handoff.Handoff] = field(default_factory=list)
    python_start: list[float] = field(default_factory=list)
    exchange: list[handoff.Exchange] = field(default_factory=list)
    floors: floors.Floors | None = None

    def sections(self, args: argparse.Namespace) -> list[str]:
        found = []
        if self.floors is not None:
            found.append(floors.report_floors(self.floors))
        if self.start:
            found.append(report_start(self.start))
        if self.formation or self.gloo_formation:
            start = statistics.median(run.listening for run in self.start) if self.start else None
            found.append(report_formation(self.formation, self.gloo_formation, start))
        if self.idle is not None:
            found.append(report_idle(self.idle))
        if self.recovery:
            found.append(faults.report_recovery(self.recovery))
        if self.in_place:
            found.append(f"## 4b. Recovery with in-place restarts\n\n{fence.report(args.recovery_size, self.in_place)}")
        if self.detection is not None:
            found.append(faults.report_detection(self.detection))
        if self.gloo_kills or self.gloo_detection is not None:
            found.append(gloo.report_gloo(self.gloo_kills, args.recovery_size, self.gloo_detection))
        if self.sim:
            found.append(sim.report_sim(self.sim))
        if self.handoff or self.exchange:
            found.append(handoff.report_handoff(self.handoff, self.python_start, self.exchange))
        if self.floors is not None:
            summary = floors.report_summary(
                self.floors,
                start=statistics.median(run.listening for run in self.start) if self.start else None,
                start_target=TARGET_START,
                formation=self.formation,
                idle=None if self.idle is None else (self.idle.size, max(self.idle.cpu), max(self.idle.rss)),
                idle_targets=(TARGET_IDLE_CPU, TARGET_RSS),
                recovery=self.recovery,
                in_place=self.in_place,
            )
            if summary:
                found.append(summary)
        return found


def measure(args: argparse.Namespace, results: Results, lab: Lab) -> None:
    if "floors" in args.only:
        link_sizes = sorted({*floors.LINK_SIZES, *args.sizes})
        crowd_sizes = sorted({args.recovery_size, max(args.sizes)})
        # The idle part's mesh (default timeouts), as heartbeats alone.
        idle_mesh = (args.idle_size, Timeouts().heartbeat_interval, args.idle) if "idle" in args.only else None
        results.floors = floors.bench_floors(lab, args.floor_runs, link_sizes, crowd_sizes, idle_mesh)
    if "start" in args.only:
        results.start = bench_start(lab, args.starts)
    if "formation" in args.only:
        for size in args.sizes:
            results.formation[size] = bench_formation(lab, size, args.repeats)
    if "gloo" in args.only:
        gloo.ensure_torch()
        if "formation" in args.only:
            for size in args.gloo_sizes:
                results.gloo_formation[size] = gloo.bench_formation(lab, size, args.gloo_repeats)
    if "idle" in args.only:
        results.idle = bench_idle(lab, args.idle_size, args.idle)
    if "recovery" in args.only:
        results.recovery = faults.bench_recovery(args.recovery_size, args.kill_one, args.kill_all, lab, args.seed)
    if "fence" in args.only:
        epochs, modes = list(fence.EPOCH_MODES), ["restart"]
        workdir = lab.workdir / "fence"
        workdir.mkdir()
        results.in_place = trio.run(fence.measure, args.recovery_size, args.kill_one, epochs, modes, workdir)
    if "detection" in args.only:
        results.detection = faults.bench_detection(args.recovery_size, args.detections, lab, args.seed)
    if "gloo" in args.only:
        results.gloo_kills = gloo.bench_kill_one(lab, args.recovery_size, args.gloo_kills, args.seed)
        if "detection" in args.only:
            results.gloo_detection = gloo.bench_detection(lab, args.recovery_size, args.seed)
    if "sim" in args.only:
        results.sim = sim.bench_sim(args.sim_sizes, args.sim_seeds)
    if "handoff" in args.only:
        results.python_start = handoff.python_start(lab, args.handoff_runs * 2)
        for size in args.handoff_sizes:
            results.handoff.append(handoff.bench_handoff(lab, size, args.handoff_runs))
        for size in args.handoff_sizes:
            results.exchange.append(handoff.bench_exchange(lab, size, args.exchange_repeats))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    lab = Lab(workdir, LowPorts(random.Random(args.seed)), Fleet())
    header = machine()
    progress(header)
    progress(f"configs and logs in {workdir} (kept only if the bench fails)")
    with cleanup(lab):
        try:
            measure(args, results, lab)
        except BenchError as exc:
            lab.fleet.kill_all()
            print(f"bench failed: {exc}", file=sys.stderr)
            if exc.logs:
                print(exc.logs, file=sys.stderr)
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
            sections = results.sections(args)
            if sections:  # whatever was measured before the failure
                print(header + "\n\n" + "\n\n".join(sections) + "\n\n" + f"(incomplete: {exc})")
            return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(header + "\n")
    print("\n\n".join(results.sections(args)))
    print(f"\nload average at the end: {load()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench interrupted; every daemon it started was killed", file=sys.stderr)
        sys.exit(130)
