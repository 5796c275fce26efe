"""Benchmark meshd as real processes on loopback, beside PyTorch's gloo: start-up, formation vs N, idle cost,
recovery after kill -9, detection of a silent peer.

Run through ``scripts/bench`` (it sets up the venv; ``--only`` picks parts). Every figure is printed as a
markdown-style table with its target and the load average beside it:

1. start: from spawning ``python -m meshd run ...`` (interpreter and imports included) until the mesh port accepts
   a TCP connection, polled tightly on loopback; also until the admin port accepts and answers ``status``;
2. formation: N daemons on fresh loopback ports, time from the moment the last mesh port accepts until every daemon
   is ``ready`` (the wall-clock "time" of each daemon's ``ready`` event, read through an admin watch opened as soon
   as that daemon's admin port answers), and the daemons' CPU time per link meanwhile; beside it gloo's formation
   (bench_gloo.py);
3. idle: CPU time (``/proc/PID/stat``) and RSS of the daemons of a ready mesh over a quiet period;
4. recovery after kill -9 of one or all daemons with an immediate restart, both epoch modes (bench_faults.py);
5. detection of a SIGSTOPped daemon against the heartbeat timeout (bench_faults.py);
6. gloo under the same faults (bench_gloo.py);
7. the deterministic simulation: many seeds per cluster size, virtual time to converge (bench_sim.py).

Every wait is bounded; a failed run prints the daemons' logs. Every process is killed between runs and on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import bench_faults
import bench_gloo
import bench_sim
import trio
from benchlib import (
    CLOCK_TICKS,
    HOST,
    LOG_TAIL,
    POLL_INTERVAL,
    STATUS_TIMEOUT,
    BenchError,
    PortAllocator,
    accepts,
    cleanup,
    cpu_ticks,
    kill,
    kill_all,
    load,
    meshd_command,
    ms,
    progress,
    rss_mib,
    spawn,
    table,
    verdict,
    write_config,
)

from meshd import admin
from meshd.config import Address
from meshd.sim.campaign import Summary

# Bounds on every wait.
START_TIMEOUT = 30.0  # one daemon: spawn -> admin status answered
READY_TIMEOUT = 60.0  # a mesh: spawn -> every daemon ready
# A ready mesh is left alone this long before the idle measurement starts (start-up transients settle).
IDLE_SETTLE = 1.0
# Targets, printed beside the measurements.
TARGET_START = 0.300  # seconds, spawn -> mesh port accepting
TARGET_FORMATION = 0.500  # seconds, last listening -> all ready, for TARGET_FORMATION_SIZE daemons
TARGET_FORMATION_SIZE = 64
TARGET_IDLE_CPU = 1.0  # percent of one core
TARGET_RSS = 50.0  # MiB
LOG_DAEMONS = 6  # daemons whose log tails are shown when a run fails
# Timeouts of the formation meshes. meshd's defaults (1 s handshake and heartbeat timeout) suit a real network, but
# 64 Python daemons on 2 cores get too little CPU each to answer a handshake or a heartbeat within 1 s: measured
# here at load 40, a 64-daemon mesh with the defaults timed links out as fast as it made them and was not ready
# after 60 s. These let every size form; the heartbeat interval also cuts the background load by 4.
FORMATION_TIMEOUTS = {"connect": 5.0, "handshake": 5.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 5.0}
# Every part, in the order they run; --only picks some.
PARTS = ("start", "formation", "idle", "recovery", "detection", "gloo", "sim")


@dataclass
class Daemon:
    index: int
    mesh: Address
    admin: Address
    log: Path
    process: subprocess.Popen[bytes] | None = None
    listening: float | None = None  # bench wall clock when the mesh port first accepted (poll)
    ready: float | None = None  # daemon wall clock when its current ready period began; None while not ready
    flaps: int = 0  # ready -> degraded transitions seen
    ever_ready: bool = False
    listening_seen: trio.Event = field(default_factory=trio.Event)

    cpu_listening: int = 0  # CPU ticks used when the mesh port first accepted

    def spawn(self, config: Path) -> None:
        self.process = spawn(meshd_command(config, self.index, 1, self.admin), self.log)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def logged_listening(self) -> float | None:
        """The timestamp (ms resolution, daemon wall clock) of the daemon's "listening on" log line."""
        for line in self.log_lines():
            if " listening on " in line:
                with contextlib.suppress(ValueError):
                    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        return None

    def describe(self) -> str:
        code = self.exited()
        state = "running" if code is None else f"exited with {code}"
        listening = "never seen listening" if self.listening is None else "listening"
        flaps = f", {self.flaps} ready -> degraded flaps" if self.flaps else ""
        ready = "ready" if self.ready is not None else "degraded" if self.ever_ready else "never ready"
        tail = "\n".join(f"    {line}" for line in self.log_lines()[-LOG_TAIL:]) or "    (empty log)"
        head = f"--- daemon {self.index} (mesh {self.mesh}, admin {self.admin}): {state}, {listening}, {ready}{flaps}"
        return f"{head}\n{tail}"


# ---------------------------------------------------------------------------------------------------------------
# 1. start to listening


@dataclass
class StartRun:
    listening: float  # seconds from spawn
    admin_accepting: float
    admin_answered: float


def wait_until(condition: Callable[[], bool], daemon: Daemon, deadline: float, what: str) -> float:
    """Poll ``condition`` tightly; the perf_counter time it first held."""
    while True:
        if condition():
            return time.perf_counter()
        if daemon.exited() is not None:
            raise BenchError(f"daemon exited with {daemon.exited()} before {what}", daemon.describe())
        if time.perf_counter() > deadline:
            raise BenchError(f"no {what} within {START_TIMEOUT:.0f} s", daemon.describe())
        time.sleep(POLL_INTERVAL)


async def _status(address: Address) -> dict[str, Any]:
    with trio.fail_after(STATUS_TIMEOUT):
        return await admin.request(address, {"op": "status"})


def start_once(workdir: Path, ports: PortAllocator, run: int) -> StartRun:
    mesh, other, admin_port = ports.take(3)
    config = write_config(workdir / f"start-{run}.toml", [mesh, other])
    daemon = Daemon(0, Address(HOST, mesh), Address(HOST, admin_port), workdir / f"start-{run}.log")
    try:
        spawned = time.perf_counter()
        daemon.spawn(config)
        deadline = spawned + START_TIMEOUT
        listening = wait_until(lambda: accepts(daemon.mesh), daemon, deadline, "mesh port accepting")
        admin_accepting = wait_until(lambda: accepts(daemon.admin), daemon, deadline, "admin port accepting")
        try:
            status = trio.run(_status, daemon.admin)
        except Exception as exc:
            raise BenchError(f"admin status request failed: {exc!r}", daemon.describe()) from exc
        admin_answered = time.perf_counter()
        if "state" not in status:
            raise BenchError(f"unexpected admin status answer {status!r}", daemon.describe())
        return StartRun(listening - spawned, admin_accepting - spawned, admin_answered - spawned)
    finally:
        kill([daemon.process] if daemon.process else [])


def bench_start(workdir: Path, ports: PortAllocator, runs: int) -> list[StartRun]:
    start_once(workdir, ports, -1)  # warm-up, not counted: byte-code caches and page cache
    results = []
    for run in range(runs):
        result = start_once(workdir, ports, run)
        progress(
            f"start {run + 1}/{runs}: listening {ms(result.listening)}, admin accepting {ms(result.admin_accepting)}, "
            f"admin answered {ms(result.admin_answered)}"
        )
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# 2. formation


@dataclass
class Formation:
    size: int
    last_listening: float  # spawn of the first daemon -> last mesh port accepting (poll)
    formation: float  # last mesh port accepting (poll) -> every daemon ready
    formation_logged: float | None  # last "listening on" log line -> every daemon ready (ms resolution)
    all_ready: float  # spawn of the first daemon -> every daemon ready
    flaps: int  # ready -> degraded transitions seen, all daemons together
    cpu: float  # seconds of CPU (utime+stime) of all daemons from each one's listening until all were ready
    load: str

    @property
    def cpu_per_link(self) -> float:
        return self.cpu / (self.size * (self.size - 1) / 2)


class Mesh:
    """N daemons on fresh loopback ports, sharing one config file."""

    def __init__(
        self, size: int, workdir: Path, ports: PortAllocator, tag: str, timeouts: dict[str, float] | None = None
    ) -> None:
        mesh_ports = ports.take(size)
        admin_ports = ports.take(size)
        self.config = write_config(workdir / f"{tag}.toml", mesh_ports, timeouts)
        self.daemons = [
            Daemon(
                index,
                Address(HOST, mesh_ports[index]),
                Address(HOST, admin_ports[index]),
                workdir / f"{tag}-{index}.log",
            )
            for index in range(size)
        ]
        self.spawned = 0.0
        self.failure: str | None = None
        self.all_ready = trio.Event()
        self.cpu_ready = 0  # CPU ticks of all daemons, read as soon as every one was seen ready
        self.load = load()

    def spawn(self) -> None:
        self.spawned = time.time()
        for daemon in self.daemons:
            daemon.spawn(self.config)

    def kill(self) -> None:
        kill(daemon.process for daemon in self.daemons if daemon.process)

    def logs(self) -> str:
        """The log tails of the daemons that are not ready (or of all, when every one is), at most LOG_DAEMONS."""
        troubled = [daemon for daemon in self.daemons if daemon.ready is None or daemon.exited() is not None]
        shown = (troubled or self.daemons)[:LOG_DAEMONS]
        more = len(troubled or self.daemons) - len(shown)
        omitted = f"\n({more} more not shown; every log is in {self.config.parent})" if more else ""
        return "\n".join(daemon.describe() for daemon in shown) + omitted

    def fail(self, message: str, nursery: trio.Nursery) -> None:
        if self.failure is None:
            self.failure = message
        nursery.cancel_scope.cancel()

    async def _sweep(self) -> None:
        """Poll every mesh port that does not accept yet, in turn, until all do."""
        pending = list(self.daemons)
        while pending:
            waiting = []
            for daemon in pending:
                if accepts(daemon.mesh):
                    daemon.listening = time.time()
                    daemon.cpu_listening = cpu_ticks(daemon.process.pid) if daemon.process else 0
                    daemon.listening_seen.set()
                else:
                    waiting.append(daemon)
            pending = waiting
            if pending:
                await trio.sleep(POLL_INTERVAL)

    def _update(self, daemon: Daemon, event: dict[str, Any], nursery: trio.Nursery) -> None:
        """Follow one daemon's mesh state; "all ready" is the first moment every daemon is ready at once."""
        kind = event["event"]
        state = event["status"]["state"] if kind == "snapshot" else kind
        if state == "ready":
            daemon.ready = event["status"]["state_since"] if kind == "snapshot" else event["time"]
            daemon.ever_ready = True
        elif state in ("forming", "degraded"):
            daemon.ready = None
            daemon.flaps += state == "degraded"  # for a snapshot: it was ready before the watch was open
            daemon.ever_ready |= state == "degraded"
        elif state in ("fenced", "stopping"):
            self.fail(f"daemon {daemon.index} is {state} during formation", nursery)
        if all(other.ready is not None for other in self.daemons):
            self.all_ready.set()

    async def _follow(self, daemon: Daemon, nursery: trio.Nursery) -> None:
        """Watch a daemon's events from the moment its admin port answers (retried while it is not bound yet)."""
        await daemon.listening_seen.wait()
        last_error: BaseException | None = None
        while True:
            try:
                async with contextlib.aclosing(admin.watch(daemon.admin)) as events:
                    async for event in events:
                        self._update(daemon, event, nursery)
                last_error = RuntimeError("the watch ended (daemon gone?)")
            except Exception as exc:  # refused while the admin port is not bound yet, or the daemon died
                last_error = exc
            daemon.ready = None
            if daemon.exited() is not None:
                self.fail(f"daemon {daemon.index} exited with {daemon.exited()}: {last_error!r}", nursery)
                return
            await trio.sleep(POLL_INTERVAL)

    async def _watch_processes(self, nursery: trio.Nursery) -> None:
        while True:
            for daemon in self.daemons:
                if daemon.exited() is not None:
                    self.fail(f"daemon {daemon.index} exited with {daemon.exited()}", nursery)
                    return
            await trio.sleep(0.02)

    async def form(self) -> None:
        """Spawn the daemons and wait until every one is ready; BenchError when they are not within the bound."""
        with trio.move_on_after(READY_TIMEOUT) as bound:
            async with trio.open_nursery() as nursery:
                self.spawn()
                nursery.start_soon(self._watch_processes, nursery)
                nursery.start_soon(self._sweep)
                for daemon in self.daemons:
                    nursery.start_soon(self._follow, daemon, nursery)
                await self.all_ready.wait()
                self.cpu_ready = sum(cpu_ticks(daemon.process.pid) for daemon in self.daemons if daemon.process)
                nursery.cancel_scope.cancel()
        if bound.cancelled_caught:
            listening = sum(daemon.listening is not None for daemon in self.daemons)
            ready = sum(daemon.ready is not None for daemon in self.daemons)
            ever = sum(daemon.ever_ready for daemon in self.daemons)
            flaps = sum(daemon.flaps for daemon in self.daemons)
            self.failure = (
                f"the {len(self.daemons)}-daemon mesh was not ready (every daemon at once) within "
                f"{READY_TIMEOUT:g} s: {listening} listening, {ready} ready at the end, {ever} ready at some point, "
                f"{flaps} ready -> degraded flaps"
            )
        if self.failure is not None:
            raise BenchError(self.failure, self.logs())

    def result(self) -> Formation:
        last_listening = max(daemon.listening for daemon in self.daemons if daemon.listening is not None)
        all_ready = max(daemon.ready for daemon in self.daemons if daemon.ready is not None)
        logged = [daemon.logged_listening() for daemon in self.daemons]
        formation_logged = None if None in logged else all_ready - max(t for t in logged if t is not None)
        return Formation(
            size=len(self.daemons),
            last_listening=last_listening - self.spawned,
            formation=all_ready - last_listening,
            formation_logged=formation_logged,
            all_ready=all_ready - self.spawned,
            flaps=sum(daemon.flaps for daemon in self.daemons),
            cpu=(self.cpu_ready - sum(daemon.cpu_listening for daemon in self.daemons)) / CLOCK_TICKS,
            load=f"{self.load} -> {load()}",
        )


def bench_formation(workdir: Path, ports: PortAllocator, size: int, repeats: int) -> list[Formation]:
    results = []
    for repeat in range(repeats):
        mesh = Mesh(size, workdir, ports, f"form-{size}-{repeat}", FORMATION_TIMEOUTS)
        try:
            trio.run(mesh.form)
            result = mesh.result()
        finally:
            mesh.kill()
        logged = "-" if result.formation_logged is None else ms(result.formation_logged)
        progress(
            f"formation N={size} {repeat + 1}/{repeats}: last listening {ms(result.last_listening)} after spawn, "
            f"all ready {ms(result.formation)} later (log-based {logged}), {result.flaps} ready->degraded flaps, "
            f"CPU {result.cpu:.2f} s ({ms(result.cpu_per_link)} per link), load {result.load}"
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


def bench_idle(workdir: Path, ports: PortAllocator, size: int, seconds: float) -> Idle:
    mesh = Mesh(size, workdir, ports, f"idle-{size}")
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

        async def states() -> list[str]:
            return [(await _status(daemon.admin))["state"] for daemon in mesh.daemons]

        ready_after = trio.run(states).count("ready")
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


def report_formation(
    results: dict[int, list[Formation]], gloo: dict[int, list[bench_gloo.GlooFormation]], start: float | None
) -> str:
    """meshd's formation and gloo's side by side, one row per N (medians)."""
    rows = []
    for size in sorted(set(results) | set(gloo)):
        runs = results.get(size, [])
        if runs:
            formation = statistics.median(run.formation for run in runs)
            logged_values = [run.formation_logged for run in runs if run.formation_logged is not None]
            targeted = size == TARGET_FORMATION_SIZE
            meshd = [
                str(len(runs)),
                ms(statistics.median(run.last_listening for run in runs)),
                ms(formation),
                ms(max(run.formation for run in runs)),
                ms(statistics.median(logged_values)) if logged_values else "-",
                f"{statistics.median(run.cpu for run in runs):.2f} s",
                ms(statistics.median(run.cpu_per_link for run in runs)),
                f"{statistics.median(run.flaps for run in runs):g} ({max(run.flaps for run in runs)})",
                f"<= {ms(TARGET_FORMATION)}" if targeted else "-",
                verdict(formation, TARGET_FORMATION) if targeted else "-",
            ]
        else:
            meshd = ["-"] * 10
        peer = {row[0]: row for row in bench_gloo.report_formation(gloo)}.get(str(size))
        gloo_cells = ["-"] * 4 if peer is None else [peer[1], peer[2], peer[4], peer[5]]
        loads = [runs[-1].load] if runs else []
        loads += [] if peer is None else [f"gloo {peer[6]}"]
        rows.append([str(size), *meshd, *gloo_cells, "; ".join(loads)])
    header = [
        "N",
        "runs",
        "spawn -> last listening",
        "last listening -> all ready",
        "max",
        "same, from log line",
        "CPU, all daemons",
        "CPU per link",
        "flaps (max)",
        "target",
        "verdict",
        "gloo runs",
        "gloo start per rank",
        "gloo last started -> all passed barrier",
        "max",
        "load",
    ]
    timeouts = ", ".join(f"{key} {value:g} s" for key, value in FORMATION_TIMEOUTS.items())
    start_text = "-" if start is None else ms(start)
    title = "## 2. Formation vs N, meshd and gloo (medians)"
    note = (
        f"meshd: 'last listening' is the last mesh port to accept a polled connect; a daemon's own start (spawn -> "
        f"listening, part 1) is {start_text}. 'all ready' is the first moment every daemon is ready at once (the "
        "`time` of each one's ready event); 'same, from log line' measures from the last daemon's own \"listening "
        "on\" log timestamp. CPU: utime+stime of all daemons from each one's listening until all were ready (the "
        "bench's watches included), per link = / (N(N-1)/2): it grows with N where the work per link does. "
        f"Timeouts of these meshes: {timeouts} (see FORMATION_TIMEOUTS). 'flaps': ready -> degraded during "
        "formation. gloo: 'start per rank' is spawn -> torch imported (median over ranks); formation is from the "
        "last rank's import to every rank past init_process_group + barrier() (rank 0 hosts the TCP store)."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note


def report_idle(idle: Idle) -> str:
    rows = [
        [
            "CPU, % of one core",
            f"{statistics.median(idle.cpu):.2f} %",
            f"{max(idle.cpu):.2f} %",
            f"< {TARGET_IDLE_CPU:g} %",
            verdict(max(idle.cpu), TARGET_IDLE_CPU, inclusive=False),
        ],
        [
            "RSS (VmRSS), MiB",
            f"{statistics.median(idle.rss):.1f}",
            f"{max(idle.rss):.1f}",
            f"< {TARGET_RSS:g} MiB",
            verdict(max(idle.rss), TARGET_RSS, inclusive=False),
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
    root = Path(__file__).resolve().parent.parent
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


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


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
    "starts": 10,
    "idle": 10.0,
    "recovery_size": 8,
    "kill_one": 100,
    "kill_all": 10,
    "detections": 5,
    "gloo_sizes": [2, 4, 8, 16, 32],
    "gloo_repeats": 1,
    "gloo_kills": 3,
    "sim_sizes": list(bench_sim.SIZES),
    "sim_seeds": bench_sim.SEEDS,
}
QUICK: dict[str, Any] = {
    "sizes": [2, 4, 8],
    "repeats": 2,
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
    parser.add_argument("--repeats", type=positive_int, help="meshd formation repetitions per size (default 3)")
    parser.add_argument("--starts", type=positive_int, help="start-to-listening runs (default 10)")
    parser.add_argument("--idle", type=positive_float, metavar="SECONDS", help="idle measurement period (default 10)")
    parser.add_argument("--idle-size", type=positive_int, default=16, help="daemons in the idle mesh (default 16)")
    parser.add_argument("--recovery-size", type=positive_int, help="daemons of the recovery and detection clusters (8)")
    parser.add_argument("--kill-one", type=positive_int, help="kill -9 of one daemon, faults per epoch mode (100)")
    parser.add_argument("--kill-all", type=positive_int, help="kill -9 of all daemons, faults per epoch mode (10)")
    parser.add_argument("--detections", type=positive_int, help="SIGSTOP detection runs (default 5)")
    parser.add_argument("--gloo-sizes", type=sizes, help="gloo formation sizes (default 2,4,8,16,32: ~250 MiB a rank)")
    parser.add_argument("--gloo-repeats", type=positive_int, help="gloo formation repetitions per size (default 1)")
    parser.add_argument("--gloo-kills", type=positive_int, help="gloo kill-one trials, each bounded at 30 s (3)")
    parser.add_argument("--sim-sizes", type=sizes, help="simulated cluster sizes (default 3,8,16)")
    parser.add_argument("--sim-seeds", type=positive_int, help="simulation seeds per size (default 10000)")
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
    gloo_formation: dict[int, list[bench_gloo.GlooFormation]] = field(default_factory=dict)
    idle: Idle | None = None
    recovery: list[bench_faults.RecoveryRuns] = field(default_factory=list)
    detection: bench_faults.Detection | None = None
    gloo_kills: list[bench_gloo.GlooKill] = field(default_factory=list)
    gloo_detection: bench_gloo.GlooDetection | None = None
    sim: list[tuple[Summary, float]] = field(default_factory=list)

    def sections(self, args: argparse.Namespace) -> list[str]:
        found = []
        if self.start:
            found.append(report_start(self.start))
        if self.formation or self.gloo_formation:
            start = statistics.median(run.listening for run in self.start) if self.start else None
            found.append(report_formation(self.formation, self.gloo_formation, start))
        if self.idle is not None:
            found.append(report_idle(self.idle))
        if self.recovery:
            found.append(bench_faults.report_recovery(self.recovery))
        if self.detection is not None:
            found.append(bench_faults.report_detection(self.detection))
        if self.gloo_kills or self.gloo_detection is not None:
            found.append(bench_gloo.report_gloo(self.gloo_kills, args.recovery_size, self.gloo_detection))
        if self.sim:
            found.append(bench_sim.report_sim(self.sim))
        return found


def measure(args: argparse.Namespace, results: Results, workdir: Path, ports: PortAllocator) -> None:
    if "start" in args.only:
        results.start = bench_start(workdir, ports, args.starts)
    if "formation" in args.only:
        for size in args.sizes:
            results.formation[size] = bench_formation(workdir, ports, size, args.repeats)
    if "gloo" in args.only:
        bench_gloo.ensure_torch()
        if "formation" in args.only:
            for size in args.gloo_sizes:
                results.gloo_formation[size] = bench_gloo.bench_formation(workdir, ports, size, args.gloo_repeats)
    if "idle" in args.only:
        results.idle = bench_idle(workdir, ports, args.idle_size, args.idle)
    if "recovery" in args.only:
        results.recovery = bench_faults.bench_recovery(
            args.recovery_size, args.kill_one, args.kill_all, workdir, ports, args.seed
        )
    if "detection" in args.only:
        results.detection = bench_faults.bench_detection(args.recovery_size, args.detections, workdir, ports, args.seed)
    if "gloo" in args.only:
        results.gloo_kills = bench_gloo.bench_kill_one(workdir, ports, args.recovery_size, args.gloo_kills, args.seed)
        if "detection" in args.only:
            results.gloo_detection = bench_gloo.bench_detection(workdir, ports, args.recovery_size, args.seed)
    if "sim" in args.only:
        results.sim = bench_sim.bench_sim(args.sim_sizes, args.sim_seeds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ports = PortAllocator(random.Random(args.seed))
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    header = machine()
    progress(header)
    progress(f"configs and logs in {workdir} (kept only if the bench fails)")
    with cleanup(workdir):
        try:
            measure(args, results, workdir, ports)
        except BenchError as exc:
            kill_all()
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
