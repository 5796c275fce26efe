"""Meshes of real daemons on loopback, for the benchmark: spawning them, watching them through the admin
websocket (typed events), and the formation measurement (last listening -> all ready, CPU per link) with its table."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from meshd.admin import client as admin
from meshd.admin.messages import Snapshot, WatchMessage
from meshd.cluster.spawn import log_tail, run_argv, write_config
from meshd.core.address import Address
from meshd.core.status import Fenced, MeshState, StateChanged
from tools.bench import gloo
from tools.bench.common import (
    CLOCK_TICKS,
    HOST,
    LOG_TAIL,
    POLL_INTERVAL,
    BenchError,
    Fleet,
    Lab,
    accepts,
    cpu_ticks,
    load,
    ms,
    progress,
    table,
    verdict,
)

# Bound on every wait of a mesh: spawn -> every daemon ready.
READY_TIMEOUT = 60.0  # a mesh: spawn -> every daemon ready
# Target, printed beside the measurement.
TARGET_FORMATION = 0.800  # seconds, last listening -> all ready, for TARGET_FORMATION_SIZE daemons
TARGET_FORMATION_SIZE = 64
LOG_DAEMONS = 6  # daemons whose log tails are shown when a run fails
# 64 Python daemons on 2 cores get too little CPU each to answer a handshake or a heartbeat within 1 s: measured
# here at load 40, a 64-daemon mesh with the defaults timed links out as fast as it made them and was not ready
# after 60 s. These let every size form; the heartbeat interval also cuts the background load by 4.
FORMATION_TIMEOUTS = {"connect": 5.0, "handshake": 5.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 5.0}


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
    started: float | None = None  # the daemon's own start stamp (its status's ``started``, daemon wall clock)

    cpu_listening: int = 0  # CPU ticks used when the mesh port first accepted

    def spawn(self, fleet: Fleet, config: Path) -> None:
        self.process = fleet.start(run_argv(config, self.index, 1, self.admin), self.log)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def describe(self) -> str:
        code = self.exited()
        state = "running" if code is None else f"exited with {code}"
        listening = "never seen listening" if self.listening is None else "listening"
        flaps = f", {self.flaps} ready -> degraded flaps" if self.flaps else ""
        ready = "ready" if self.ready is not None else "degraded" if self.ever_ready else "never ready"
        tail = log_tail(self.log, LOG_TAIL)
        head = f"--- daemon {self.index} (mesh {self.mesh}, admin {self.admin}): {state}, {listening}, {ready}{flaps}"
        return f"{head}\n{tail}"


# ---------------------------------------------------------------------------------------------------------------
# 2. formation


@dataclass
class Formation:
    size: int
    last_listening: float  # spawn of the first daemon -> last mesh port accepting (poll)
    formation: float  # last mesh port accepting (poll) -> every daemon ready
    formation_own: float | None  # the last daemon's own start stamp (its status's ``started``) -> every daemon ready
    all_ready: float  # spawn of the first daemon -> every daemon ready
    flaps: int  # ready -> degraded transitions seen, all daemons together
    cpu: float  # seconds of CPU (utime+stime) of all daemons from each one's listening until all were ready
    load: str

    @property
    def cpu_per_link(self) -> float:
        return self.cpu / (self.size * (self.size - 1) / 2)


class Mesh:
    """N daemons on fresh loopback ports, sharing one config file."""

    def __init__(self, size: int, lab: Lab, tag: str, timeouts: dict[str, float] | None = None) -> None:
        mesh_ports = lab.ports.take(size)
        admin_ports = lab.ports.take(size)
        workdir = lab.workdir
        peers = [Address(HOST, port) for port in mesh_ports]
        self.config = write_config(workdir / f"{tag}.toml", "bench", peers, timeouts)
        self.fleet = lab.fleet
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
            daemon.spawn(self.fleet, self.config)

    def kill(self) -> None:
        self.fleet.kill(daemon.process for daemon in self.daemons if daemon.process)

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
                if await accepts(daemon.mesh):
                    daemon.listening = time.time()
                    daemon.cpu_listening = cpu_ticks(daemon.process.pid) if daemon.process else 0
                    daemon.listening_seen.set()
                else:
                    waiting.append(daemon)
            pending = waiting
            if pending:
                await trio.sleep(POLL_INTERVAL)

    def _update(self, daemon: Daemon, message: WatchMessage, nursery: trio.Nursery) -> None:
        """Follow one daemon's mesh state; "all ready" is the first moment every daemon is ready at once."""
        match message:
            case Snapshot(status=status):
                state, since = status.state, status.state_since
                daemon.started = status.started
            case StateChanged(state=state, time=since):
                pass
            case Fenced(time=since):
                state = MeshState.FENCED
            case _:
                return  # links come and go: only the mesh state counts
        if state is MeshState.READY:
            daemon.ready = since
            daemon.ever_ready = True
        elif state in (MeshState.FORMING, MeshState.DEGRADED):
            daemon.ready = None
            daemon.flaps += state is MeshState.DEGRADED  # for a snapshot: it was ready before the watch was open
            daemon.ever_ready |= state is MeshState.DEGRADED
        elif state in (MeshState.FENCED, MeshState.STOPPING):
            self.fail(f"daemon {daemon.index} is {state} during formation", nursery)
        if all(other.ready is not None for other in self.daemons):
            self.all_ready.set()

    async def _follow(self, daemon: Daemon, nursery: trio.Nursery) -> None:
        """Watch a daemon's events from the moment its admin port answers (retried while it is not bound yet)."""
        await daemon.listening_seen.wait()
        last_error: BaseException | None = None
        while True:
            try:
                async with contextlib.aclosing(admin.events(daemon.admin)) as messages:
                    async for message in messages:
                        self._update(daemon, message, nursery)
                last_error = RuntimeError("the watch ended (daemon gone?)")
            except admin.CLIENT_ERRORS as exc:  # refused while the admin port is not bound yet, or the daemon died
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
                await trio.to_thread.run_sync(self.spawn)
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
        own = [daemon.started for daemon in self.daemons]
        formation_own = None if None in own else all_ready - max(t for t in own if t is not None)
        return Formation(
            size=len(self.daemons),
            last_listening=last_listening - self.spawned,
            formation=all_ready - last_listening,
            formation_own=formation_own,
            all_ready=all_ready - self.spawned,
            flaps=sum(daemon.flaps for daemon in self.daemons),
            cpu=(self.cpu_ready - sum(daemon.cpu_listening for daemon in self.daemons)) / CLOCK_TICKS,
            load=f"{self.load} -> {load()}",
        )


def bench_formation(lab: Lab, size: int, repeats: int) -> list[Formation]:
    results = []
    for repeat in range(repeats):
        mesh = Mesh(size, lab, f"form-{size}-{repeat}", FORMATION_TIMEOUTS)
        try:
            trio.run(mesh.form)
            result = mesh.result()
        finally:
            mesh.kill()
        own = "-" if result.formation_own is None else ms(result.formation_own)
        progress(
            f"formation N={size} {repeat + 1}/{repeats}: last listening {ms(result.last_listening)} after spawn, "
            f"all ready {ms(result.formation)} later ({own} from the last daemon's own start), "
            f"{result.flaps} ready->degraded flaps, "
            f"CPU {result.cpu:.2f} s ({ms(result.cpu_per_link)} per link), load {result.load}"
        )
        results.append(result)
    return results


def report_formation(
    results: dict[int, list[Formation]], gloo_runs: dict[int, list[gloo.GlooFormation]], start: float | None
) -> str:
    """meshd's formation and gloo's side by side, one row per N (medians)."""
    rows = []
    for size in sorted(set(results) | set(gloo_runs)):
        runs = results.get(size, [])
        if runs:
            formation = statistics.median(run.formation for run in runs)
            own_values = [run.formation_own for run in runs if run.formation_own is not None]
            targeted = size == TARGET_FORMATION_SIZE
            meshd = [
                str(len(runs)),
                ms(statistics.median(run.last_listening for run in runs)),
                ms(formation),
                ms(max(run.formation for run in runs)),
                ms(statistics.median(own_values)) if own_values else "-",
                f"{statistics.median(run.cpu for run in runs):.2f} s",
                ms(statistics.median(run.cpu_per_link for run in runs)),
                f"{statistics.median(run.flaps for run in runs):g} ({max(run.flaps for run in runs)})",
                f"<= {ms(TARGET_FORMATION)}" if targeted else "-",
                verdict(formation, TARGET_FORMATION) if targeted else "-",
            ]
        else:
            meshd = ["-"] * 10
        peer = {row[0]: row for row in gloo.report_formation(gloo_runs)}.get(str(size))
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
        "same, from daemon start",
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
        "`time` of each one's ready event); 'same, from daemon start' measures from the last daemon's own start "
        "stamp (its status's `started`, on its own clock: when its daemon began to run). CPU: utime+stime of all "
        "daemons from each one's listening until all were ready (the "
        "bench's watches included), per link = / (N(N-1)/2): it grows with N where the work per link does. "
        f"Timeouts of these meshes: {timeouts} (see FORMATION_TIMEOUTS). 'flaps': ready -> degraded during "
        "formation. gloo: 'start per rank' is spawn -> torch imported (median over ranks); formation is from the "
        "last rank's import to every rank past init_process_group + barrier() (rank 0 hosts the TCP store)."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note
