"""The floor: what this machine can do, measured in the same run as the figures it bounds, so that every figure
reads as a ratio to it (a shared 2-core machine moves by 2x from hour to hour; a ratio measured in one run does not).

Each floor is the least any program must do to reach the point a figure measures:

- the interpreter alone (``python -c pass``, with site, as meshd runs), ``import trio``, ``import trio,
  trio_websocket`` and meshd's lightest command (``python -m meshd --version``), each from spawn to exit;
- spawn -> a listening socket: a tiny script that binds and listens on a loopback port (bare; and after ``import
  trio``, in ``trio.run``: its RSS is the floor of an idle daemon's), the parent polling a connect exactly as the
  start part does: the floor of "spawn -> mesh port listening" (``meshd run`` listens before it loads trio);
- N*(N-1)/2 loopback connections between N listening sockets in one process, one small round trip on each, with
  plain non-blocking sockets and a selector (the kernel's floor) and with trio (``trio.open_tcp_stream``, as meshd
  dials): the floor of formation (one connect and the handshake's round trips per link), wall and CPU;
- N trio processes in a full mesh on loopback that do nothing but send a heartbeat to every peer at each tick (one
  timer) and read what arrives: the floor of an idle daemon's CPU;
- N cold starts at once, sharing the cores (``python -c "import trio"``, ``python -m meshd --version``), spawn of
  the first -> exit of the last: the floor of a recovery (a fence restarts the N-1 survivors while the replacement
  starts) and of a mesh's spawn -> all ready.

``report_summary`` puts the figures of the other parts beside their floors and the issue's targets.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from tools.bench import faults, fence
from tools.bench.common import (
    Lab,
    load,
    median,
    ms,
    percentile,
    progress,
    table,
    verdict,
)
from tools.bench.mesh import Formation
from tools.bench.probes import (
    IMPORT_TRIO,
    IMPORT_WS,
    LISTEN,
    LISTEN_TRIO,
    MESHD_VERSION,
    PYTHON,
    children_cpu,
    heartbeat_mesh,
    listening_once,
    raise_fd_limit,
    raw_links,
    to_exit,
    trio_links,
)

# Sizes whose loopback links are always measured (the formation targets are at 32 and 64).
LINK_SIZES = (8, 32, 64)
# Targets of the issue, for the summary (formation's own table prints tools.bench.mesh.TARGET_FORMATION).
TARGET_FORMATION = {64: 0.800, 32: 0.200}  # seconds, last listening -> all ready, by N
TARGET_CPU_PER_LINK = 0.001  # seconds, at N=64
TARGET_CPU_PER_LINK_SIZE = 64


@dataclass
class Floor:
    figure: str
    of: str  # the figure it is the floor of
    values: list[float] = field(default_factory=list)  # seconds of wall time, one per run
    cpu: list[float] = field(default_factory=list)  # seconds of CPU, one per run (per process for a spawn)
    links: int = 0  # links per run (loopback links), for the per-link column
    rss: float | None = None  # MiB, median over runs (listeners)
    unit: str = "s"  # of the values: "s", or "%" (of a core, one per process: the heartbeat mesh)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Floors:
    runs: int
    found: dict[str, Floor] = field(default_factory=dict)
    load: str = ""

    def get(self, key: str) -> Floor | None:
        floor = self.found.get(key)
        return floor if floor is not None and floor.values else None


# ---------------------------------------------------------------------------------------------------------------
# The part


def bench_floors(
    lab: Lab,
    runs: int,
    link_sizes: Sequence[int],
    crowd_sizes: Sequence[int],
    idle_mesh: tuple[int, float, float] | None = None,
) -> Floors:
    """Every floor, ``runs`` times each (after one warm-up run of each command, not counted); crowds of
    ``crowd_sizes`` processes ``max(1, runs // 3)`` times each; ``idle_mesh`` (size, heartbeat interval, seconds):
    the heartbeat mesh, once."""
    (lab.workdir / "floors").mkdir(exist_ok=True)
    floors = Floors(runs, load=load())
    found = floors.found

    def spawned(key: str, figure: str, of: str, command: Sequence[str], count: int, repeats: int) -> None:
        floor = found[key] = Floor(figure, of)
        for _ in range(repeats):
            wall, cpu = to_exit(lab, command, count)
            floor.values.append(wall)
            floor.cpu.append(cpu)
        progress(f"floors: {figure}: median {ms(floor.median)} ({repeats} run(s)), CPU {ms(median(floor.cpu))} each")

    for command in (PYTHON, IMPORT_TRIO, IMPORT_WS, MESHD_VERSION):
        to_exit(lab, command, 1)  # warm-up: byte-code caches and page cache
    spawned("python", "python -c pass: spawn -> exit", "every process start", PYTHON, 1, runs)
    spawned("trio", "python -c 'import trio': spawn -> exit", "a trio process's start", IMPORT_TRIO, 1, runs)
    spawned("trio_ws", "python -c 'import trio, trio_websocket': spawn -> exit", "meshd's imports", IMPORT_WS, 1, runs)
    spawned("meshd", "python -m meshd --version: spawn -> exit", "meshd's lightest command", MESHD_VERSION, 1, runs)

    for key, figure, of, script in (
        ("listen", "python, bind + listen: spawn -> port accepting", "spawn -> mesh port accepting", LISTEN),
        ("listen_trio", "python, import trio, listen: spawn -> accepting", "idle RSS per daemon", LISTEN_TRIO),
    ):
        trio.run(listening_once, lab, script, False)  # warm-up
        floor = found[key] = Floor(figure, of)
        sizes = []
        cpu_before = children_cpu()
        for _ in range(runs):
            listening, rss = trio.run(listening_once, lab, script, key == "listen_trio")
            floor.values.append(listening)
            if rss is not None:
                sizes.append(rss)
        floor.cpu = [(children_cpu() - cpu_before) / runs]
        floor.rss = statistics.median(sizes) if sizes else None
        rss_text = "" if floor.rss is None else f", RSS {floor.rss:.1f} MiB"
        progress(f"floors: {figure}: median {ms(floor.median)} ({runs} runs){rss_text}")

    if idle_mesh is not None:
        size, interval, seconds = idle_mesh
        floor = found["idle-mesh"] = Floor(
            f"{size} trio processes, heartbeats only (interval {interval:g} s): CPU per process", "idle CPU", unit="%"
        )
        floor.values = heartbeat_mesh(lab, size, interval, seconds)
        progress(f"floors: {floor.figure}: median {floor.median:.2f} %, max {max(floor.values):.2f} %")

    for size in sorted(set(link_sizes)):
        if not raise_fd_limit(size):
            progress(f"floors: loopback links N={size} skipped: the open-file limit is below {size * size} sockets")
            continue
        links = size * (size - 1) // 2
        for key, name, measure in (
            (f"raw-{size}", "sockets + selector", raw_links),
            (f"trio-{size}", "trio", lambda n: trio.run(trio_links, n)),
        ):
            raw = key.startswith("raw")
            of = f"formation N={size}: last listening -> all ready, CPU per link" if raw else "(trio's own share)"
            floor = found[key] = Floor(
                f"N={size}: {links} loopback link{'s' * (links > 1)}, connect + 1 round trip, {name}", of
            )
            floor.links = links
            measure(size)  # warm-up
            for _ in range(runs):
                wall, cpu = measure(size)
                floor.values.append(wall)
                floor.cpu.append(cpu)
            progress(
                f"floors: {floor.figure}: median {ms(floor.median)}, "
                f"{floor.median / links * 1e6:.1f} µs and {median(floor.cpu) / links * 1e6:.1f} µs CPU per link"
            )

    repeats = max(1, runs // 3)
    for size in sorted(set(crowd_sizes)):
        for key, command, what in (
            (f"crowd-trio-{size}", IMPORT_TRIO, "python -c 'import trio'"),
            (f"crowd-meshd-{size}", MESHD_VERSION, "python -m meshd --version"),
        ):
            of = f"recovery with N={size}; spawn -> all ready of N={size}" if "trio" in key else "(meshd's restarts)"
            spawned(key, f"{size} x {what} at once: first spawn -> last exit", of, command, size, repeats)
    floors.load = f"{floors.load} -> {load()}"
    return floors


# ---------------------------------------------------------------------------------------------------------------
# Reports


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def _percent(value: float) -> str:
    return f"{value:.2f} %"


def report_floors(floors: Floors) -> str:
    rows = []
    for floor in floors.found.values():
        if not floor.values:
            continue
        per_link = "-"
        if floor.links:
            per_link = f"{_us(floor.median / floor.links)} ({_us(median(floor.cpu) / floor.links)} CPU)"
        show = _percent if floor.unit == "%" else _us if floor.median < 0.001 else ms
        cpu = show(median(floor.cpu)) if floor.cpu else "-"
        rss = "-" if floor.rss is None else f"{floor.rss:.1f} MiB"
        runs = str(len(floor.values))
        rows.append([floor.figure, runs, show(floor.median), show(min(floor.values)), show(max(floor.values)), cpu])
        rows[-1] += [per_link, rss, floor.of]
    header = ["floor", "runs", "median", "min", "max", "CPU", "per link (CPU)", "RSS", "the floor of"]
    title = f"## 0. Floors: what this machine can do, measured in this run (load {floors.load})"
    note = (
        "Processes: spawn (through the bench's forking thread, as every daemon) -> exit, or -> the port accepting a "
        "polled connect (the start part's method); CPU is per process (children's utime+stime; listeners: their "
        "whole life). Links: one process, N listening sockets, one connection per pair and one 32-byte round trip "
        "on each, all in flight at once; wall and CPU from the first connect to the last reply. Crowds: N processes "
        "spawned back to back, first spawn -> last exit, sharing the cores. The summary at the end divides each "
        "figure by its floor."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note


@dataclass
class Row:
    figure: str
    measured: float
    floor: Floor | None
    floor_value: float | None  # None: no floor for this figure
    target: float | None
    unit: str = "s"  # "s" (printed in ms), "%", "MiB"

    def cells(self) -> list[str]:
        def show(value: float | None) -> str:
            if value is None:
                return "-"
            if self.unit == "s":
                return ms(value) if value >= 0.001 else _us(value)
            return f"{value:.2f} %" if self.unit == "%" else f"{value:.1f} MiB"

        ratio = "-" if not self.floor_value else f"x{self.measured / self.floor_value:.1f}"
        floor = "-" if self.floor is None else f"{show(self.floor_value)} ({self.floor.figure})"
        target = "-" if self.target is None else f"<= {show(self.target)}"
        met = "-" if self.target is None else verdict(self.measured, self.target)
        return [self.figure, show(self.measured), floor, ratio, target, met]


def report_summary(
    floors: Floors,
    *,
    start: float | None,
    start_target: float,
    formation: dict[int, list[Formation]],
    idle: tuple[int, float, float] | None,
    idle_targets: tuple[float, float],
    recovery: list[faults.RecoveryRuns],
    in_place: fence.Results,
) -> str:
    """Every figure of the parts that ran beside its floor, the ratio and the issue's target. ``start``: the median
    spawn -> mesh port accepting; ``idle``: (daemons, max CPU %, max RSS MiB)."""
    rows: list[Row] = []

    def add(figure: str, measured: float, key: str | None, target: float | None, unit: str = "s") -> None:
        floor = floors.get(key) if key else None
        value = None if floor is None else floor.rss if unit == "MiB" else floor.median
        rows.append(Row(figure, measured, floor, value, target, unit))

    if start is not None:
        add("start: spawn -> mesh port accepting, median", start, "listen", start_target)
    for size, runs in sorted(formation.items()):
        if not runs:
            continue
        wall = median(run.formation for run in runs)
        add(f"formation N={size}: last listening -> all ready, median", wall, f"raw-{size}", TARGET_FORMATION.get(size))
        own = [run.formation_own for run in runs if run.formation_own is not None]
        if own:  # the same without the imports: from the last daemon's own start (trio and meshd loaded)
            figure = f"formation N={size}: last daemon's own start -> all ready, median"
            add(figure, median(own), f"raw-{size}", TARGET_FORMATION.get(size))
        per_link = median(run.cpu_per_link for run in runs)
        key = f"raw-{size}"
        floor = floors.get(key)
        target = TARGET_CPU_PER_LINK if size == TARGET_CPU_PER_LINK_SIZE else None
        rows.append(
            Row(
                f"formation N={size}: CPU per link, median",
                per_link,
                floor,
                None if floor is None or not floor.links else median(floor.cpu) / floor.links,
                target,
            )
        )
        if floors.get(f"crowd-trio-{size}"):
            add(
                f"formation N={size}: spawn -> all ready, median",
                median(r.all_ready for r in runs),
                f"crowd-trio-{size}",
                None,
            )
    if idle is not None:
        size, cpu, rss = idle
        mesh = floors.get("idle-mesh")
        floor_cpu = None if mesh is None else max(mesh.values)  # like the figure: the busiest process
        rows.append(Row(f"idle N={size}: CPU per daemon, max", cpu, mesh, floor_cpu, idle_targets[0], "%"))
        add(f"idle N={size}: RSS per daemon, max", rss, "listen_trio", idle_targets[1], "MiB")
    for runs in recovery:
        values = [run.spawn_to_ready for run in runs.runs]
        if not values:
            continue
        targeted = runs.fault == "kill one" and runs.size == faults.TARGET_RECOVERY_SIZE
        name = f"recovery {runs.mode} {runs.fault} of {runs.size}"
        key = f"crowd-trio-{runs.size}"
        add(f"{name}: p50", median(values), key, faults.TARGET_RECOVERY_P50 if targeted else None)
        add(f"{name}: p99", percentile(values, 0.99), key, faults.TARGET_RECOVERY_P99 if targeted else None)
    for tag, trials in in_place.items():  # tools.bench.fence: survivors restart in their process, one cold start
        epochs, _ = tag.split("-")
        values = [trial.recovery for trial in trials]
        name = f"recovery {epochs} kill one of {trials[0].survivors + 1}, --on-fence restart"
        add(f"{name}: p50", median(values), "trio", faults.TARGET_RECOVERY_P50)
        add(f"{name}: p99", percentile(values, 0.99), "trio", faults.TARGET_RECOVERY_P99)
    if not rows:
        return ""
    title = "## Summary: each figure against its floor measured in this run, and its target"
    note = (
        "ratio = measured / floor. Floors (table 0): start -> a bare listener's spawn -> accepting (meshd listens "
        "before it loads trio); formation -> N(N-1)/2 loopback connects + one round trip in one process (sockets + "
        "selector), wall and CPU per link; spawn -> all ready and recovery -> N cold starts of `import trio` at once "
        "(a fence restarts the survivors while the replacement starts; with --on-fence restart only the "
        "replacement starts cold: one `import trio`); idle RSS -> a listener that imported trio, "
        "in trio.run; idle CPU -> N trio processes that only send and read heartbeats, one timer each (the busiest)."
    )
    return (
        title
        + "\n\n"
        + table(["figure", "measured", "floor", "ratio", "target", "met?"], [r.cells() for r in rows])
        + "\n\n"
        + note
    )
