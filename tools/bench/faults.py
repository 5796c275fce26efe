"""Faults on a running meshd cluster: recovery after kill -9 (one process, all processes) and detection of a
silent (SIGSTOPped) peer.

The cluster runs under ``meshd.cluster``'s controller, restarting every exited daemon at once (no restart delay), as
an orchestrator would, by the controller's rule R6 (``EpochController``):
- ``--epoch auto``: a daemon is restarted as it was;
- fixed epochs: a daemon that exits 75 is restarted with the current epoch; one that died gets a new epoch above
  every epoch given before (so a kill of all raises the epoch once per death).

Every daemon incarnation is watched through the admin websocket from the moment its admin port answers (the
controller's typed events); readiness and link-down times are the ``time`` fields of its events (the daemons' wall
clock, the same host's as the bench's).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import EpochController
from meshd.cluster.spawn import log_tail, write_config
from meshd.config import Timeouts
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.status import Fenced, GenerationMoved, LinkDown, MeshState, StateChanged
from meshd.core.wire import Epoch
from tools.bench.common import HOST, BenchError, Lab, load, median, ms, percentile, progress, table, verdict

# Bounds on every wait.
QUIET_TIMEOUT = 60.0  # a cluster: until every daemon is ready in one generation
RECOVERY_TIMEOUT = 30.0  # a fault: replacement spawned -> every daemon ready in a new generation
DETECTION_SLACK = 10.0  # SIGSTOP -> every peer reported the link down: heartbeat timeout plus this
# How often the controller checks a condition on the cluster (the figures come from event times, not from this).
CHECK_INTERVAL = 0.005
# Targets, printed beside the measurements.
TARGET_RECOVERY_P50 = 0.6  # seconds, replacement spawned -> all ready, kill -9 of one of TARGET_RECOVERY_SIZE
TARGET_RECOVERY_P99 = 0.8  # the same, p99 (both epoch modes); table 4 prints the p99's verdict, the summary both
TARGET_RECOVERY_SIZE = 8
TARGET_EXITS = 1  # exits of one surviving process per fault
LOG_DAEMONS = 4  # daemons whose log tails are shown when a fault is not recovered from
LOG_TAIL = 25


def ready_since(incarnation: Incarnation) -> tuple[float, Epoch | None] | None:
    """When the incarnation's current ready period began (daemon wall clock) and in which epoch; None while it is
    not ready, not watched yet, or gone. Folded from its watch: the snapshot, then every event."""
    status = incarnation.snapshot
    if status is None or not incarnation.running:
        return None
    ready = (status.state_since, status.epoch) if status.state is MeshState.READY else None
    for event in list(incarnation.events):
        if isinstance(event, StateChanged):
            ready = (event.time, event.epoch) if event.state is MeshState.READY else None
        elif isinstance(event, Fenced | GenerationMoved):
            ready = None
    return ready


def links_down(incarnation: Incarnation, peer: int, since: float) -> list[LinkDown]:
    return [e for e in incarnation.events if isinstance(e, LinkDown) and e.peer == peer and e.time >= since]


class ControlledCluster(Controller):
    """N daemons on loopback under the cluster harness's restarting controller, each incarnation watched."""

    def __init__(self, size: int, auto: bool, lab: Lab, tag: str) -> None:
        mesh_ports, admin_ports = lab.ports.take(size), lab.ports.take(size)
        workdir = lab.workdir / tag
        workdir.mkdir()
        peers = [Address(HOST, port) for port in mesh_ports]
        config = write_config(workdir / "cluster.toml", "bench", peers)  # meshd's default timeouts
        super().__init__(
            config=config,
            admins=[Address(HOST, port) for port in admin_ports],
            policy=EpochController(EpochMode.AUTO if auto else EpochMode.FIXED),
            workdir=workdir,
            restart_delay=0.0,
            name="bench",
        )
        self.auto = auto

    @property
    def mode(self) -> str:
        return "auto" if self.auto else "fixed"

    def current(self) -> list[Incarnation | None]:
        return [slot.current for slot in self.slots]

    def all_ready(self, stale: set[Any]) -> float | None:
        """When every current daemon became ready in one generation not in ``stale`` (with fixed epochs: the
        controller's current one); None while that is not so."""
        readiness = [None if inc is None else ready_since(inc) for inc in self.current()]
        if any(ready is None for ready in readiness):
            return None
        epochs = {ready[1] for ready in readiness if ready is not None}
        if len(epochs) != 1 or epochs & stale or (not self.auto and Epoch(int(self.policy.epoch())) not in epochs):
            return None
        return max(ready[0] for ready in readiness if ready is not None)

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
            if inc is None:
                parts.append(f"--- daemon {slot.index} (none, exits {slot.exits})")
                continue
            ready = ready_since(inc)
            state = f"pid {inc.pid}, epoch {inc.epoch}, ready {None if ready is None else ready[1]}"
            parts.append(f"--- daemon {slot.index} ({state}, exits {slot.exits}):\n{log_tail(inc.log, LOG_TAIL)}")
        return "\n".join(parts) + f"\n(every log is in {self.workdir})"


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


async def _one_fault(cluster: ControlledCluster, victims: list[int]) -> Recovery:
    await cluster.wait_for(lambda: cluster.all_ready(set()), QUIET_TIMEOUT, "ready cluster before the fault")
    readiness = [None if inc is None else ready_since(inc) for inc in cluster.current()]
    stale = {ready[1] for ready in readiness if ready is not None}
    before = [len(slot.exits) for slot in cluster.slots]
    doomed = {slot: cluster.slots[slot].current for slot in victims}
    killed = time.time()
    for inc in doomed.values():
        if inc is not None:
            cluster.kill(inc)

    def replaced() -> list[Incarnation] | None:
        current = [cluster.slots[slot].current for slot in victims]
        if any(inc is None or inc is doomed[slot] for slot, inc in zip(victims, current, strict=True)):
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


async def _run_recovery(size: int, auto: bool, trials: int, kill_all: bool, lab: Lab, seed: int | None) -> RecoveryRuns:
    fault = "kill all" if kill_all else "kill one"
    tag = f"recovery-{'auto' if auto else 'fixed'}-{'all' if kill_all else 'one'}"
    cluster = await trio.to_thread.run_sync(ControlledCluster, size, auto, lab, tag)
    rng = random.Random(seed)
    result = RecoveryRuns(cluster.mode, fault, size, load=load())
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        for trial in range(trials):
            victims = list(range(size)) if kill_all else [rng.randrange(size)]
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
        nursery.cancel_scope.cancel()  # the controller stops every daemon on its way out
    result.load = f"{result.load} -> {load()}"
    return result


def bench_recovery(size: int, trials_one: int, trials_all: int, lab: Lab, seed: int | None) -> list[RecoveryRuns]:
    results = []
    for auto in (False, True):
        for kill_all, trials in ((False, trials_one), (True, trials_all)):
            results.append(trio.run(_run_recovery, size, auto, trials, kill_all, lab, seed))
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
        downs = links_down(inc, victim, since)
        if not downs:
            return None
        seen.append((downs[0].time, downs[0].reason))
    return seen


async def _run_detection(size: int, trials: int, lab: Lab, seed: int | None) -> Detection:
    cluster = await trio.to_thread.run_sync(ControlledCluster, size, False, lab, "detection")
    defaults = Timeouts()
    result = Detection(size, defaults.heartbeat_timeout, defaults.heartbeat_interval, load=load())
    rng = random.Random(seed)
    bound = defaults.heartbeat_timeout + DETECTION_SLACK
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        for trial in range(trials):
            await cluster.wait_for(lambda: cluster.all_ready(set()), QUIET_TIMEOUT, "ready cluster")
            victim = rng.randrange(size)
            stopped_process = cluster.slots[victim].current
            assert stopped_process is not None
            peers = [inc for index, inc in enumerate(cluster.current()) if index != victim and inc is not None]
            stopped = time.time()
            os.kill(stopped_process.pid, signal.SIGSTOP)
            try:
                seen = await cluster.wait_for(
                    functools.partial(_noticed, peers, victim, stopped),
                    bound,
                    f"every peer reporting daemon {victim} down",
                )
            finally:
                os.kill(stopped_process.pid, signal.SIGCONT)
            result.delays += [when - stopped for when, _ in seen]
            result.reasons |= {why for _, why in seen}
            result.runs += 1
            delays = [when - stopped for when, _ in seen]
            progress(f"detection {trial + 1}/{trials}: SIGSTOP -> link down {ms(min(delays))}..{ms(max(delays))}")
        nursery.cancel_scope.cancel()  # the controller stops every daemon on its way out
    result.load = f"{result.load} -> {load()}"
    return result


def bench_detection(size: int, trials: int, lab: Lab, seed: int | None) -> Detection:
    return trio.run(_run_detection, size, trials, lab, seed)


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
