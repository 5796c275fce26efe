"""Benchmark meshd as real processes on loopback: start-up, mesh formation, idle cost.

Run through ``scripts/bench`` (it sets up the venv). Three measurements, each printed as a markdown-style table
with its target beside it:

1. start to listening: from spawning ``python -m meshd run ...`` (interpreter and imports included) until the mesh
   port accepts a TCP connection, polled tightly on loopback; also until the admin port accepts and until it
   answers a ``status`` request;
2. formation: N daemons on fresh loopback ports, time from the moment the last mesh port accepts until every daemon
   is ``ready`` (the wall-clock "time" of each daemon's ``ready`` event, read through an admin watch opened as soon
   as that daemon's admin port answers);
3. idle cost: CPU time (``/proc/PID/stat`` utime+stime) and RSS (``/proc/PID/status`` VmRSS) of the daemons of a
   ready mesh over a quiet period.

Every wait is bounded; a mesh that does not become ready in time fails the run with the daemons' logs. All
daemons are killed between repetitions and on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from meshd import admin
from meshd.config import Address

HOST = "127.0.0.1"
# Fresh ports come from below the kernel's ephemeral range, so that no outgoing connection can hold one.
PORT_RANGE = (20000, 32000)
# Sleep between two connect attempts on a port that does not accept yet.
POLL_INTERVAL = 0.0005
# Bounds on every wait.
START_TIMEOUT = 30.0  # one daemon: spawn -> admin status answered
READY_TIMEOUT = 60.0  # a mesh: spawn -> every daemon ready
STATUS_TIMEOUT = 5.0  # one admin request on a running daemon
# A ready mesh is left alone this long before the idle measurement starts (start-up transients settle).
IDLE_SETTLE = 1.0
# Targets, printed beside the measurements.
TARGET_START = 0.300  # seconds, spawn -> mesh port accepting
TARGET_FORMATION = 0.100  # seconds, last listening -> all ready, for TARGET_FORMATION_SIZE daemons
TARGET_FORMATION_SIZE = 16
TARGET_IDLE_CPU = 1.0  # percent of one core
TARGET_RSS = 50.0  # MiB
LOG_TAIL = 25  # lines of each daemon's log shown when a run fails
LOG_DAEMONS = 6  # daemons whose log tails are shown when a run fails

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failed run; ``logs`` holds the daemon logs worth showing."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Ports and processes


class PortAllocator:
    """Loopback ports never handed out twice in one bench run, each checked free with a test bind."""

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.randrange(*PORT_RANGE)
        self._used: set[int] = set()

    @staticmethod
    def _free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                return False
        return True

    def take(self, count: int) -> list[int]:
        ports: list[int] = []
        for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
            if len(ports) == count:
                return ports
            port = self._next
            self._next = self._next + 1 if self._next + 1 < PORT_RANGE[1] else PORT_RANGE[0]
            if port not in self._used and self._free(port):
                self._used.add(port)
                ports.append(port)
        if len(ports) == count:
            return ports
        raise BenchError(f"ran out of free loopback ports in {PORT_RANGE[0]}..{PORT_RANGE[1]}")


# Every daemon process this bench started and has not reaped yet; killed on any exit path.
LIVE: set[subprocess.Popen[bytes]] = set()


def kill(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL the processes and reap them."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        LIVE.discard(process)


def kill_all() -> None:
    kill(list(LIVE))


# The temporary directory of this bench run, removed when the run is interrupted by a signal.
WORKDIR: list[Path] = []


def _die_on_signal(signum: int, _: Any) -> None:
    kill_all()
    for directory in WORKDIR:
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(128 + signum)


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

    def spawn(self, config: Path) -> None:
        command = [sys.executable, "-m", "meshd", "run", "--config", str(config), "--index", str(self.index)]
        command += ["--epoch", "1", "--admin", str(self.admin)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        LIVE.add(self.process)

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


def write_config(path: Path, mesh_ports: list[int]) -> Path:
    peers = ", ".join(f'"{HOST}:{port}"' for port in mesh_ports)
    path.write_text(f'[cluster]\nname = "bench"\npeers = [{peers}]\n', encoding="utf-8")
    return path


def accepts(address: Address) -> bool:
    """Whether a TCP connection to ``address`` is accepted right now (closed at once)."""
    with socket.socket() as probe:
        probe.settimeout(0.25)
        try:
            probe.connect((address.host, address.port))
        except OSError:
            return False
    return True


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


class Mesh:
    """N daemons on fresh loopback ports, sharing one config file."""

    def __init__(self, size: int, workdir: Path, ports: PortAllocator, tag: str) -> None:
        mesh_ports = ports.take(size)
        admin_ports = ports.take(size)
        self.config = write_config(workdir / f"{tag}.toml", mesh_ports)
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
        )


def bench_formation(workdir: Path, ports: PortAllocator, size: int, repeats: int) -> list[Formation]:
    results = []
    for repeat in range(repeats):
        mesh = Mesh(size, workdir, ports, f"form-{size}-{repeat}")
        try:
            trio.run(mesh.form)
            result = mesh.result()
        finally:
            mesh.kill()
        logged = "-" if result.formation_logged is None else ms(result.formation_logged)
        progress(
            f"formation N={size} {repeat + 1}/{repeats}: last listening {ms(result.last_listening)} after spawn, "
            f"all ready {ms(result.formation)} later (log-based {logged}), {result.flaps} ready->degraded flaps"
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


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on; the command may contain spaces
    return int(fields[11]) + int(fields[12])  # fields 14 (utime) and 15 (stime)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no VmRSS for process {pid}")


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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(value: float, target: float, *, inclusive: bool = True) -> str:
    met = value <= target if inclusive else value < target
    return "ok" if met else f"MISS (x{value / target:.1f})"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


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


def report_formation(results: dict[int, list[Formation]]) -> str:
    rows = []
    for size, runs in results.items():
        formation = statistics.median(run.formation for run in runs)
        logged_values = [run.formation_logged for run in runs if run.formation_logged is not None]
        logged = ms(statistics.median(logged_values)) if logged_values else "-"
        target = f"<= {ms(TARGET_FORMATION)}" if size == TARGET_FORMATION_SIZE else "-"
        mark = verdict(formation, TARGET_FORMATION) if size == TARGET_FORMATION_SIZE else "-"
        rows.append(
            [
                str(size),
                str(len(runs)),
                ms(statistics.median(run.last_listening for run in runs)),
                ms(formation),
                ms(min(run.formation for run in runs)),
                ms(max(run.formation for run in runs)),
                logged,
                ms(statistics.median(run.all_ready for run in runs)),
                f"{statistics.median(run.flaps for run in runs):g} ({max(run.flaps for run in runs)})",
                target,
                mark,
            ]
        )
    header = [
        "N",
        "runs",
        "spawn -> last listening",
        "last listening -> all ready",
        "min",
        "max",
        "same, from log line",
        "spawn -> all ready",
        "flaps (max)",
        "target",
        "verdict",
    ]
    title = "## 2. Formation (medians; 'last listening' = the last mesh port to accept a polled connect)"
    note = (
        "'all ready' is the first moment every daemon is ready at once (each daemon's ready time is the wall-clock "
        "time of its ready event). 'same, from log line' measures from the last daemon's own \"listening on\" log "
        "timestamp (ms resolution) instead of the poll. 'flaps' counts ready -> degraded transitions during "
        "formation, all daemons together."
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=sizes, help="formation mesh sizes (default 2,4,8,16,32)")
    parser.add_argument("--repeats", type=positive_int, help="formation repetitions per size (default 5)")
    parser.add_argument("--starts", type=positive_int, help="start-to-listening runs (default 10)")
    parser.add_argument("--idle", type=positive_float, metavar="SECONDS", help="idle measurement period (default 10)")
    parser.add_argument("--idle-size", type=positive_int, default=16, help="daemons in the idle mesh (default 16)")
    parser.add_argument("--seed", type=int, help="seed of the port choice")
    parser.add_argument(
        "--quick", action="store_true", help="fast smoke run: sizes 2,4,8, repeats 2, 3 starts, idle 3 s"
    )
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = (
        {"sizes": [2, 4, 8], "repeats": 2, "starts": 3, "idle": 3.0}
        if args.quick
        else {"sizes": [2, 4, 8, 16, 32], "repeats": 5, "starts": 10, "idle": 10.0}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.idle_size < 2:
        parser.error("--idle-size must be at least 2")
    return args


@contextlib.contextmanager
def cleanup(workdir: Path) -> Iterator[None]:
    """Kill every daemon on any way out, SIGTERM and SIGHUP included; an interrupted run removes ``workdir``."""
    WORKDIR.append(workdir)
    previous = {signum: signal.signal(signum, _die_on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except BaseException:  # Ctrl-C and the like (a failed measurement returns instead, keeping the logs)
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        kill_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        WORKDIR.remove(workdir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ports = PortAllocator(random.Random(args.seed))
    sections: list[str] = []
    formation: dict[int, list[Formation]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    header = machine()
    progress(header)
    progress(f"configs and daemon logs in {workdir} (kept only if the bench fails)")
    with cleanup(workdir):
        try:
            sections.append(report_start(bench_start(workdir, ports, args.starts)))
            for size in args.sizes:
                formation[size] = bench_formation(workdir, ports, size, args.repeats)
            sections.append(report_formation(formation))
            formation = {}
            sections.append(report_idle(bench_idle(workdir, ports, args.idle_size, args.idle)))
        except BenchError as exc:
            kill_all()
            print(f"bench failed: {exc}", file=sys.stderr)
            if exc.logs:
                print(exc.logs, file=sys.stderr)
            print(f"configs and daemon logs kept in {workdir}", file=sys.stderr)
            if formation:
                sections.append(report_formation(formation))
            if sections:  # whatever was measured before the failure
                print(header + "\n\n" + "\n\n".join(sections) + "\n\n" + f"(incomplete: {exc})")
            return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(header + "\n")
    print("\n\n".join(sections))
    print(f"\nload average at the end: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench interrupted; every daemon it started was killed", file=sys.stderr)
        sys.exit(130)
