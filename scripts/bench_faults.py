"""Faults on a running meshd cluster: recovery after kill -9 (one process, all processes) and detection of a
silent (SIGSTOPped) peer.

The cluster runs under a controller that restarts every exited daemon at once, as an orchestrator would:
- ``--epoch auto``: a daemon is restarted as it was;
- fixed epochs (the rule of ``meshd cluster``, design R6/A4): a daemon that exits 75 is restarted with the current
  epoch; one that died gets a new epoch above every epoch given, unless the current epoch is already newer than
  the one it ran (deaths of one fault, such as a kill of all, share one new epoch: no slot starts twice in one).

Every daemon incarnation is watched through the admin websocket from the moment its admin port answers; readiness
and link-down times are the ``time`` fields of its events (the daemons' wall clock, the same host's as the bench's).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from benchlib import (
    HOST,
    LIVE,
    BenchError,
    PortAllocator,
    kill,
    load,
    log_tail,
    median,
    meshd_command,
    ms,
    percentile,
    progress,
    spawn,
    table,
    verdict,
    write_config,
)

from meshd.admin import client as admin
from meshd.config import Timeouts
from meshd.core.address import Address
from meshd.errors import ExitCode

# Bounds on every wait.
QUIET_TIMEOUT = 60.0  # a cluster: until every daemon is ready in one generation
RECOVERY_TIMEOUT = 30.0  # a fault: replacement spawned -> every daemon ready in a new generation
DETECTION_SLACK = 10.0  # SIGSTOP -> every peer reported the link down: heartbeat timeout plus this
# How often the controller checks a condition on the cluster (the figures come from event times, not from this).
CHECK_INTERVAL = 0.005
# Pause between attempts to open the watch of a daemon whose admin port is not bound yet.
WATCH_RETRY = 0.005
# Targets, printed beside the measurements.
TARGET_RECOVERY_P99 = 1.0  # seconds, replacement spawned -> all ready, kill -9 of one of TARGET_RECOVERY_SIZE
TARGET_RECOVERY_SIZE = 8
TARGET_EXITS = 1  # exits of one surviving process per fault
LOG_DAEMONS = 4  # daemons whose log tails are shown when a fault is not recovered from


@dataclass(eq=False)
class Incarnation:
    """One start of a daemon in a slot, and what its watch told about it."""

    epoch: int | str  # the --epoch argument
    process: subprocess.Popen[bytes]
    spawned: float  # bench wall clock
    ready_at: float | None = None  # daemon wall clock when its current ready period began; None while not ready
    ready_epoch: Any = None  # the epoch it is ready in
    links_down: list[tuple[float, int, str]] = field(default_factory=list)  # (time, peer, reason)


@dataclass
class Slot:
    index: int
    mesh: Address
    admin: Address
    log: Path
    current: Incarnation | None = None
    exits: list[int] = field(default_factory=list)


class ControlledCluster:
    """N daemons on loopback under a restarting controller, each incarnation watched."""

    def __init__(self, size: int, auto: bool, workdir: Path, ports: PortAllocator, tag: str) -> None:
        mesh_ports, admin_ports = ports.take(size), ports.take(size)
        self.config = write_config(workdir / f"{tag}.toml", mesh_ports)  # meshd's default timeouts
        self.auto = auto
        self.epoch = 1
        self.slots = [
            Slot(
                index,
                Address(HOST, mesh_ports[index]),
                Address(HOST, admin_ports[index]),
                workdir / f"{tag}-{index}.log",
            )
            for index in range(size)
        ]
        self.failure: str | None = None

    @property
    def mode(self) -> str:
        return "auto" if self.auto else "fixed"

    def start(self, nursery: trio.Nursery) -> None:
        for slot in self.slots:
            nursery.start_soon(self.keep_running, slot, nursery)

    def _spawn(self, slot: Slot, nursery: trio.Nursery) -> Incarnation:
        epoch: int | str = "auto" if self.auto else self.epoch
        process = spawn(meshd_command(self.config, slot.index, epoch, slot.admin), slot.log)
        incarnation = Incarnation(epoch, process, time.time())
        slot.current = incarnation
        nursery.start_soon(self._follow, incarnation, slot.admin)
        return incarnation

    async def keep_running(self, slot: Slot, nursery: trio.Nursery) -> None:
        """Start the slot's daemon and restart it at once whenever it exits, with the epoch the policy says."""
        while True:
            incarnation = self._spawn(slot, nursery)
            code = await trio.to_thread.run_sync(incarnation.process.wait, abandon_on_cancel=True)
            LIVE.discard(incarnation.process)
            slot.exits.append(code)
            if code not in (ExitCode.FENCED, -signal.SIGKILL):
                self.failure = self.failure or f"daemon {slot.index} exited with {code}"
            if not self.auto and code != ExitCode.FENCED and incarnation.epoch == self.epoch:
                self.epoch += 1

    async def _follow(self, incarnation: Incarnation, address: Address) -> None:
        """Follow one incarnation's events from the moment its admin port answers until it exits."""
        while incarnation.process.poll() is None:
            with contextlib.suppress(Exception):  # refused while the port is not bound yet, or the daemon died
                async with contextlib.aclosing(admin.watch(address)) as events:
                    async for event in events:
                        self._update(incarnation, event)
            incarnation.ready_at = None
            await trio.sleep(WATCH_RETRY)
        incarnation.ready_at = None

    @staticmethod
    def _update(incarnation: Incarnation, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "snapshot":
            status = event["status"]
            ready = status["state"] == "ready"
            incarnation.ready_at = status["state_since"] if ready else None
            incarnation.ready_epoch = status["epoch"]
        elif kind == "ready":
            incarnation.ready_at, incarnation.ready_epoch = event["time"], event["epoch"]
        elif kind in ("forming", "degraded", "fenced", "stopping", "generation"):
            incarnation.ready_at = None
        elif kind == "link_down":
            incarnation.links_down.append((event["time"], event["peer"], event["reason"]))

    def all_ready(self, stale: set[Any]) -> float | None:
        """When every current daemon became ready in one generation not in ``stale`` (with fixed epochs: the
        controller's current one); None while that is not so."""
        current = [slot.current for slot in self.slots]
        if any(inc is None or inc.ready_at is None or inc.process.poll() is not None for inc in current):
            return None
        epochs = {inc.ready_epoch for inc in current if inc is not None}
        if len(epochs) != 1 or epochs & stale or (not self.auto and self.epoch not in epochs):
            return None
        return max(inc.ready_at for inc in current if inc is not None and inc.ready_at is not None)

    async def wait_for(self, condition: Callable[[], Any], bound: float, what: str) -> Any:
        """Poll ``condition`` until it returns something other than None or False; BenchError after ``bound``."""
        with trio.move_on_after(bound):
            while True:
                if self.failure is not None:
                    raise BenchError(f"{self.mode} cluster: {self.failure} while waiting for {what}", self.logs())
                found = condition()
                if found is not None and found is not False:
                    return found
                await trio.sleep(CHECK_INTERVAL)
        raise BenchError(f"{self.mode} cluster: no {what} within {bound:g} s", self.logs())

    def logs(self) -> str:
        parts = []
        for slot in self.slots[:LOG_DAEMONS]:
            inc = slot.current
            state = "none" if inc is None else f"pid {inc.process.pid}, epoch {inc.epoch}, ready {inc.ready_epoch}"
            parts.append(f"--- daemon {slot.index} ({state}, exits {slot.exits}):\n{log_tail(slot.log)}")
        return "\n".join(parts) + f"\n(every log is in {self.config.parent})"

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [slot.current.process for slot in self.slots if slot.current is not None]


# ---------------------------------------------------------------------------------------------------------------
# Recovery


@dataclass
class Recovery:
    spawn_to_ready: float  # the (last) replacement spawned -> every daemon ready in a new generation
    kill_to_ready: float  # kill -9 sent -> the same
    restart_to_ready: float  # the last start of any daemon (a fenced survivor's restart, usually) -> the same
    survivor_exits: list[int]  # exits of each surviving process (kill-one) or of each replacement (kill-all)


@dataclass
class RecoveryRuns:
    mode: str
    fault: str  # "kill one" or "kill all"
    size: int
    runs: list[Recovery] = field(default_factory=list)
    failed: int = 0  # faults not recovered from within RECOVERY_TIMEOUT
    load: str = ""


async def _one_fault(cluster: ControlledCluster, victims: list[Slot]) -> Recovery:
    await cluster.wait_for(lambda: cluster.all_ready(set()), QUIET_TIMEOUT, "ready cluster before the fault")
    stale = {slot.current.ready_epoch for slot in cluster.slots if slot.current is not None}
    before = [len(slot.exits) for slot in cluster.slots]
    doomed = {slot.index: slot.current for slot in victims}
    killed = time.time()
    for inc in doomed.values():
        if inc is not None:
            inc.process.kill()

    def replaced() -> list[Incarnation] | None:
        current = [slot.current for slot in victims]
        if any(inc is None or inc is doomed[slot.index] for slot, inc in zip(victims, current, strict=True)):
            return None
        return [inc for inc in current if inc is not None]

    replacements = await cluster.wait_for(replaced, RECOVERY_TIMEOUT, "replacement spawned")
    spawned = max(inc.spawned for inc in replacements)
    ready = await cluster.wait_for(lambda: cluster.all_ready(stale), RECOVERY_TIMEOUT, "recovery")
    killed_slots = set(doomed)
    exits = [
        len(slot.exits) - before[slot.index] - (slot.index in killed_slots)
        for slot in cluster.slots
        if slot.index not in killed_slots or len(victims) == len(cluster.slots)
    ]
    last_start = max(slot.current.spawned for slot in cluster.slots if slot.current is not None)
    return Recovery(ready - spawned, ready - killed, ready - last_start, exits)


async def _run_recovery(
    size: int, auto: bool, trials: int, kill_all: bool, workdir: Path, ports: PortAllocator, seed: int | None
) -> RecoveryRuns:
    fault = "kill all" if kill_all else "kill one"
    tag = f"recovery-{'auto' if auto else 'fixed'}-{'all' if kill_all else 'one'}"
    cluster = ControlledCluster(size, auto, workdir, ports, tag)
    rng = random.Random(seed)
    result = RecoveryRuns(cluster.mode, fault, size, load=load())
    try:
        async with trio.open_nursery() as nursery:
            cluster.start(nursery)
            for trial in range(trials):
                victims = list(cluster.slots) if kill_all else [rng.choice(cluster.slots)]
                try:
                    run = await _one_fault(cluster, victims)
                except BenchError as exc:
                    if cluster.failure is not None:
                        raise
                    result.failed += 1
                    progress(f"recovery {cluster.mode} {fault} {trial + 1}/{trials}: NOT RECOVERED: {exc}\n{exc.logs}")
                    continue
                result.runs.append(run)
                progress(
                    f"recovery {cluster.mode} {fault} N={size} {trial + 1}/{trials}: spawn -> all ready "
                    f"{ms(run.spawn_to_ready)}, kill -> all ready {ms(run.kill_to_ready)}, exits {run.survivor_exits}"
                )
            nursery.cancel_scope.cancel()
    finally:
        kill(cluster.processes())
    result.load = f"{result.load} -> {load()}"
    return result


def bench_recovery(
    size: int, trials_one: int, trials_all: int, workdir: Path, ports: PortAllocator, seed: int | None
) -> list[RecoveryRuns]:
    results = []
    for auto in (False, True):
        for kill_all, trials in ((False, trials_one), (True, trials_all)):
            results.append(trio.run(_run_recovery, size, auto, trials, kill_all, workdir, ports, seed))
    return results


def report_recovery(results: list[RecoveryRuns]) -> str:
    rows = []
    for runs in results:
        spawn_to_ready = [run.spawn_to_ready for run in runs.runs]
        kill_to_ready = [run.kill_to_ready for run in runs.runs]
        exits = [count for run in runs.runs for count in run.survivor_exits]
        targeted = runs.fault == "kill one" and runs.size == TARGET_RECOVERY_SIZE
        if spawn_to_ready:
            p99 = percentile(spawn_to_ready, 0.99)
            restart = median(run.restart_to_ready for run in runs.runs)
            figures = [ms(median(spawn_to_ready)), ms(p99), ms(max(spawn_to_ready)), ms(median(kill_to_ready))]
            figures.append(ms(restart))
            mark = verdict(p99, TARGET_RECOVERY_P99) if targeted else "-"
            most = max(exits, default=0)
            exits_text = f"{most} (mean {sum(exits) / max(len(exits), 1):.2f})"
            exits_mark = verdict(most, TARGET_EXITS) if runs.fault == "kill one" else "-"
        else:
            figures, mark, exits_text, exits_mark = ["-"] * 5, "-", "-", "-"
        rows.append(
            [
                runs.mode,
                runs.fault,
                str(runs.size),
                f"{len(runs.runs)}/{len(runs.runs) + runs.failed}",
                *figures,
                f"<= {ms(TARGET_RECOVERY_P99)}" if targeted else "-",
                mark,
                exits_text,
                exits_mark,
                runs.load,
            ]
        )
    header = [
        "epochs",
        "fault",
        "N",
        "recovered",
        "p50",
        "p99",
        "max",
        "kill -> all ready p50",
        "last start -> all ready p50",
        "p99 target",
        "verdict",
        "exits per process, max",
        "verdict",
        "load",
    ]
    title = "## 4. Recovery after kill -9 with an immediate restart (replacement spawned -> every daemon ready)"
    note = (
        "p50/p99/max from the spawn of the replacement (kill all: of the last replacement) to the first moment every "
        "daemon is ready in one new generation (the `time` of each one's ready event), the survivors' exits (75) and "
        "restarts included. 'last start': from the last daemon start of the fault (usually a fenced survivor's "
        "restart): the part that is the survivors' own start-up and re-formation. 'exits per process': of each "
        "surviving process per fault (kill all: of each replacement after its start), target <= 1 for kill one. "
        "meshd's default timeouts. p99 is nearest-rank: with fewer than 100 faults it is the maximum."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note


# ---------------------------------------------------------------------------------------------------------------
# Detection of a silent peer


@dataclass
class Detection:
    size: int
    heartbeat_timeout: float
    heartbeat_interval: float
    delays: list[float] = field(default_factory=list)  # SIGSTOP -> a peer's link_down event, every peer of every run
    runs: int = 0
    reasons: set[str] = field(default_factory=set)
    load: str = ""


def _noticed(peers: list[Incarnation], victim: int, since: float) -> list[tuple[float, str]] | None:
    """The first link_down of ``victim`` after ``since`` at every peer, as (time, reason); None until all have one."""
    seen = []
    for inc in peers:
        downs = [(when, why) for when, peer, why in inc.links_down if peer == victim and when >= since]
        if not downs:
            return None
        seen.append(downs[0])
    return seen


async def _run_detection(size: int, trials: int, workdir: Path, ports: PortAllocator, seed: int | None) -> Detection:
    cluster = ControlledCluster(size, False, workdir, ports, "detection")
    defaults = Timeouts()
    result = Detection(size, defaults.heartbeat_timeout, defaults.heartbeat_interval, load=load())
    rng = random.Random(seed)
    bound = defaults.heartbeat_timeout + DETECTION_SLACK
    try:
        async with trio.open_nursery() as nursery:
            cluster.start(nursery)
            for trial in range(trials):
                await cluster.wait_for(lambda: cluster.all_ready(set()), QUIET_TIMEOUT, "ready cluster")
                victim = rng.choice(cluster.slots)
                assert victim.current is not None
                peers = [slot.current for slot in cluster.slots if slot is not victim and slot.current is not None]
                stopped = time.time()
                os.kill(victim.current.process.pid, signal.SIGSTOP)
                try:
                    seen = await cluster.wait_for(
                        functools.partial(_noticed, peers, victim.index, stopped),
                        bound,
                        f"every peer reporting daemon {victim.index} down",
                    )
                finally:
                    os.kill(victim.current.process.pid, signal.SIGCONT)
                result.delays += [when - stopped for when, _ in seen]
                result.reasons |= {why for _, why in seen}
                result.runs += 1
                delays = [when - stopped for when, _ in seen]
                progress(f"detection {trial + 1}/{trials}: SIGSTOP -> link down {ms(min(delays))}..{ms(max(delays))}")
            nursery.cancel_scope.cancel()
    finally:
        kill(cluster.processes())
    result.load = f"{result.load} -> {load()}"
    return result


def bench_detection(size: int, trials: int, workdir: Path, ports: PortAllocator, seed: int | None) -> Detection:
    return trio.run(_run_detection, size, trials, workdir, ports, seed)


def report_detection(found: Detection) -> str:
    header = ["N", "runs", "heartbeat_timeout", "heartbeat_interval", "p50", "p99", "max", "load"]
    delays = found.delays
    rows = [
        [
            str(found.size),
            str(found.runs),
            ms(found.heartbeat_timeout),
            ms(found.heartbeat_interval),
            ms(median(delays)),
            ms(percentile(delays, 0.99)),
            ms(max(delays)),
            found.load,
        ]
    ]
    title = "## 5. Detection of a silent peer (SIGSTOP of one daemon -> each peer's link_down event)"
    note = (
        "One sample per peer and run. Expected: between heartbeat_timeout - heartbeat_interval and heartbeat_timeout "
        "(plus scheduling delay), since a peer counts the silence from the last heartbeat it received before the "
        f"stop. Reasons seen: {'; '.join(sorted(found.reasons))}."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note
