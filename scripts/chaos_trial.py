"""One chaos trial: real ``meshd run`` processes under a restarting controller, a seeded fault schedule, a quiet period.

The controller follows the design's rule R6 with fixed epochs (``meshd.orchestrator.EpochController``: a death
gets a new epoch above all, an exit 75 restarts with the current one) and simply restarts with ``--epoch auto``.
Every slot process is watched through the admin websocket from the moment it answers, and every slot's status is
polled and fed to the safety checker for the whole trial. After the last fault ends (t0) the trial waits for every
slot to be ready in one epoch, linked to the processes that actually run, for at most the design's bound B; then
the mesh must hold for ``settle`` seconds. Every daemon is killed when the trial ends, however it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import signal
import subprocess
import sys
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from meshd.admin import client as admin
from meshd.errors import AdminUnreachable
from meshd.orchestrator import RESTART_DELAY, EpochController
from scripts.chaos_faults import BASE_EPOCH, DUPLICATE, KILL, PARTITION, PAUSE, STALE, TWIN, Fault
from scripts.chaos_netns import Hosts, NetError
from scripts.chaos_safety import EXIT_FENCED, SafetyChecker

# How often exited processes are noticed, and how often every slot's status is polled.
EXIT_POLL = 0.02
MONITOR_INTERVAL = 0.2
# Bound on one admin status request; a stopped (SIGSTOP) daemon does not answer.
STATUS_TIMEOUT = 1.0
# Pause between attempts to open a new process's admin watch.
WATCH_RETRY = 0.05
# How long stopping daemons get to exit after SIGTERM at the end of a trial before they are killed.
STOP_TIMEOUT = 5.0
# What an admin request or watch raises when its daemon is not there, stopped, or dies while answering.
ADMIN_ERRORS = (AdminUnreachable, OSError, ConnectionClosed, HandshakeError, trio.BrokenResourceError)
# The log line of a daemon that bound its mesh port.
LISTENING = '"message": "listening on '
# How long past ``timeouts.bind`` a duplicate start may take to exit before the runner kills it (start-up, which
# took up to 4 s at load average 18 on this 2-core machine, and a fenced process's drain).
DUPLICATE_GRACE = 8.0
# How long a twin may take to start listening; its fault's duration counts from then.
TWIN_START_LIMIT = 5.0
# Lines of each daemon's log shown when a trial fails.
LOG_TAIL_LINES = 15
# prctl(PR_SET_PDEATHSIG): a daemon is killed when the runner dies, even by kill -9.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _die_with_runner() -> None:
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class TrialSpec:
    index: int
    seed: int
    mode: str  # "fixed" or "auto"
    size: int
    timeouts: dict[str, float]
    faults: list[Fault]
    bound: float  # the design's B for this configuration, seconds
    settle: float  # how long a converged mesh must then hold, seconds


@dataclass(eq=False)
class Process:
    """One ``meshd run`` process of a trial, with what its admin watch reported."""

    slot: int
    role: str  # "member" (the slot's process), "stale" (a stale-epoch start), "duplicate" or "twin" (second starts)
    epoch: int | str
    popen: subprocess.Popen[bytes]
    log: Path
    spawned: float  # wall clock just before the spawn
    code: int | None = None
    exited: float | None = None
    killed: bool = False  # the runner sent SIGKILL (a fault, or the end of the trial)
    stopping: bool = False  # the runner sent SIGTERM at the end of the trial
    watched: bool = False  # the admin watch got its snapshot from this process
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def bound(self) -> bool:
        """Whether it got its mesh port (a duplicate does when the slot's process left during its bind period)."""
        return LISTENING in self.log.read_text(encoding="utf-8", errors="replace")

    def fences(self) -> list[dict[str, Any]]:
        """Fenced events from the watch, or their fields from the JSON log when the watch did not get to see one."""
        fences = [event for event in self.events if event["event"] == "fenced"]
        if fences:
            return fences
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                if "cause" in record:
                    fences.append(record)
        return fences

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "role": self.role,
            "epoch": self.epoch,
            "pid": self.popen.pid,
            "spawned": self.spawned,
            "code": self.code,
            "lived": None if self.exited is None else round(self.exited - self.spawned, 3),
            "killed_by_runner": self.killed,
            "watched": self.watched,
            "events": len(self.events),
        }


@dataclass
class Applied:
    fault: Fault
    started: float | None = None  # wall clock
    ended: float | None = None
    note: str = ""

    def to_json(self, origin: float) -> dict[str, Any]:
        def relative(stamp: float | None) -> float | None:
            return None if stamp is None else round(stamp - origin, 3)

        times = {"started": relative(self.started), "ended": relative(self.ended)}
        return {**self.fault.to_json(), **times, "note": self.note}


class Trial:
    """Runs one trial in ``workdir`` (config and daemon logs) on ``hosts``."""

    def __init__(self, spec: TrialSpec, hosts: Hosts, workdir: Path) -> None:
        self.spec = spec
        self.hosts = hosts
        self.workdir = workdir
        self.config = self._write_config()
        self.epochs = EpochController(BASE_EPOCH)
        self.history: list[list[Process]] = [[] for _ in range(spec.size)]
        self.duplicates: list[Process] = []
        self.pending_stale: dict[int, int] = {}
        self.cuts: list[tuple[int, ...]] = []
        self.checker = SafetyChecker()
        self.stopping = False
        self.latest: list[dict[str, Any] | None] = [None] * spec.size
        self.latest_began = 0.0  # wall clock when the poll behind ``latest`` started
        self.polled = trio.Event()
        self.applied: list[Applied] = []
        self.t0: float | None = None  # wall clock when the last fault ended
        self._nursery: trio.Nursery | None = None

    def _write_config(self) -> Path:
        peers = ", ".join(f'"{self.hosts.mesh(index)}"' for index in range(self.spec.size))
        timeouts = "\n".join(f"{key} = {value!r}" for key, value in self.spec.timeouts.items())
        text = f'[cluster]\nname = "chaos-{self.spec.index}"\npeers = [{peers}]\n\n[timeouts]\n{timeouts}\n'
        path = self.workdir / "cluster.toml"
        path.write_text(text, encoding="utf-8")
        return path

    # ----- processes

    def current(self, slot: int) -> Process | None:
        return self.history[slot][-1] if self.history[slot] else None

    def spawn(self, slot: int, epoch: int | str, role: str, twin: str | None = None) -> Process:
        """Start ``meshd run`` for ``slot`` where it lives, or in namespace ``twin`` with the twin's admin port."""
        serial = len(self._all())
        log = self.workdir / f"{serial:03d}-d{slot}-{role}.log"
        argv = [
            sys.executable, "-m", "meshd", "run",
            "--config", str(self.config),
            "--index", str(slot),
            "--epoch", str(epoch),
            "--admin", str(self.hosts.admin(slot) if twin is None else self.hosts.twin_admin(slot)),
            "--log-format", "json",
        ]  # fmt: skip
        command = self.hosts.command(slot, argv) if twin is None else self.hosts.command_in(twin, argv)
        spawned = time.time()
        with log.open("wb") as out:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_runner,  # spawned from the main thread, which lives as long as the runner
            )
        return Process(slot, role, epoch, popen, log, spawned)

    async def wait_exit(self, process: Process) -> int:
        while (code := process.popen.poll()) is None:
            await trio.sleep(EXIT_POLL)
        process.code, process.exited = code, time.time()
        return code

    def kill(self, process: Process) -> None:
        if process.running:
            process.killed = True
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGKILL)

    async def keep_running(self, slot: int) -> None:
        """The orchestrator of one slot: start its process, restart it after every exit with the policy's epoch."""
        assert self._nursery is not None
        while not self.stopping:
            stale = self.pending_stale.pop(slot, None)
            epoch: int | str = "auto" if self.spec.mode == "auto" else self.epochs.current
            process = self.spawn(slot, epoch if stale is None else stale, "member" if stale is None else "stale")
            self.history[slot].append(process)
            self._nursery.start_soon(self.follow, process)
            code = await self.wait_exit(process)
            if self.stopping:
                return
            await self._retire_duplicates(slot)
            if self.spec.mode == "fixed":
                self.epochs.exited(int(process.epoch), code)
            await trio.sleep(RESTART_DELAY)

    async def _retire_duplicates(self, slot: int) -> None:
        """Before a slot's restart, kill its duplicates: one may have bound the port its process freed, and the
        restart must not fail to bind. One that did was a process of the slot, and the controller saw it die."""
        for duplicate in self.duplicates:
            if duplicate.slot == slot and duplicate.role == "duplicate" and duplicate.code is None:
                self.kill(duplicate)
                code = await self.wait_exit(duplicate)
                if self.spec.mode == "fixed" and duplicate.bound():
                    self.epochs.exited(int(duplicate.epoch), code)

    async def follow(self, process: Process) -> None:
        """Collect the process's events from its admin watch, opened as soon as it answers, until it ends."""
        address = self.hosts.admin(process.slot)
        while process.running and not process.watched:
            try:
                async with aclosing(admin.watch(address)) as events:
                    async for event in events:
                        if event["event"] != "snapshot":
                            process.events.append(event)
                        elif process.running and event["status"]["started"] >= process.spawned:
                            process.watched = True
                        else:
                            break  # the previous process of the slot, still answering
            except* ADMIN_ERRORS:
                pass  # not answering yet, or gone: the loop condition decides
            await trio.sleep(WATCH_RETRY)

    # ----- observation

    async def _status(self, process: Process, into: list[dict[str, Any] | None], position: int) -> None:
        status: dict[str, Any] = {}
        with trio.move_on_after(STATUS_TIMEOUT):
            try:
                status = await admin.request(self.hosts.admin(process.slot), {"op": "status"})
            except* ADMIN_ERRORS:
                pass  # not answering (starting, stopped or gone): no status this round
        if status.get("started", 0) >= process.spawned and "peers" in status:
            into[position] = status

    async def monitor(self) -> None:
        """Poll every slot's status for the whole trial; feed each to the safety checker."""
        while True:
            began = time.time()
            processes = [self.current(slot) for slot in range(self.spec.size)]
            found: list[dict[str, Any] | None] = [None] * self.spec.size
            async with trio.open_nursery() as nursery:
                for position, process in enumerate(processes):
                    if process is not None and process.running:
                        nursery.start_soon(self._status, process, found, position)
            now = time.time()
            for status in found:
                if status is not None:
                    self.checker.observe(status, now)
            same = [self.current(slot) for slot in range(self.spec.size)] == processes
            stable = same and all(process is not None and process.running for process in processes)
            self.latest = found if stable else [None] * self.spec.size
            self.latest_began = began
            self.polled.set()
            self.polled = trio.Event()
            await trio.sleep(MONITOR_INTERVAL)

    def converged(self) -> tuple[bool, list[str]]:
        """Every slot's running process ready in one epoch (the controller's with fixed epochs; sealed with auto),
        each linked to exactly the incarnations that run."""
        problems: list[str] = []
        statuses = self.latest
        if any(status is None for status in statuses):
            return False, [f"slot {slot} did not answer" for slot, s in enumerate(statuses) if s is None]
        running = {status["index"]: status["incarnation"] for status in statuses if status is not None}
        epochs = {str(status["epoch"]) for status in statuses if status is not None}
        if len(epochs) != 1:
            problems.append(f"epochs {sorted(epochs)}")
        elif self.spec.mode == "fixed" and epochs != {str(self.epochs.current)}:
            problems.append(f"epoch {epochs} is not the controller's {self.epochs.current}")
        for status in statuses:
            assert status is not None
            if status["state"] != "ready" or (self.spec.mode == "auto" and not status["sealed"]):
                problems.append(f"slot {status['index']} is {status['state']}")
            for peer in status["peers"]:
                if peer["state"] != "up" or peer["incarnation"] != running.get(peer["index"]):
                    problems.append(f"slot {status['index']} sees slot {peer['index']} {peer['state']}")
        return not problems, problems

    async def wait_converged(self, since: float, deadline: float) -> tuple[list[dict[str, Any]] | None, list[str]]:
        """The statuses of the first poll begun after ``since`` that shows convergence, or None with the last
        problems once polls begin after ``deadline``."""
        problems: list[str] = ["no poll yet"]
        while self.latest_began <= deadline:
            with trio.move_on_after(max(0.0, deadline - time.time()) + STATUS_TIMEOUT + MONITOR_INTERVAL):
                await self.polled.wait()
            if self.latest_began < since:
                continue
            done, problems = self.converged()
            if done:
                return [status for status in self.latest if status is not None], []
        return None, problems

    async def hold(self, statuses: list[dict[str, Any]]) -> list[str]:
        """After convergence: the same processes stay ready in the same epoch for ``settle`` seconds."""
        incarnations = [status["incarnation"] for status in statuses]
        exits_before = self.exits()
        end = time.time() + self.spec.settle
        while time.time() < end:
            await self.polled.wait()
        await self.polled.wait()
        done, problems = self.converged()
        if done and [status["incarnation"] for status in self.latest if status] != incarnations:
            problems = ["the mesh moved to other processes"]
        if self.exits() != exits_before:
            problems.append(f"exits changed from {exits_before} to {self.exits()}")
        return problems

    # ----- faults

    async def inject(self, origin: float) -> None:
        """Apply the schedule from ``origin`` (wall clock); returns when the last fault has ended."""
        async with trio.open_nursery() as nursery:
            for fault in self.spec.faults:
                await trio.sleep(max(0.0, origin + fault.at - time.time()))
                applied = Applied(fault, started=time.time())
                self.applied.append(applied)
                if fault.kind in (KILL, STALE):
                    self._kill_slots(fault, applied)
                elif fault.kind == PAUSE:
                    nursery.start_soon(self._pause, fault, applied)
                elif fault.kind == DUPLICATE:
                    nursery.start_soon(self._duplicate, fault, applied)
                elif fault.kind == PARTITION:
                    await self._cut(fault.slots)
                    nursery.start_soon(self._heal_later, fault, applied)
                elif fault.kind == TWIN:
                    nursery.start_soon(self._twin, fault, applied)

    def _kill_slots(self, fault: Fault, applied: Applied) -> None:
        victims = []
        for slot in fault.slots:
            if fault.stale_epoch is not None:
                self.pending_stale[slot] = fault.stale_epoch
            for duplicate in self.duplicates:
                if duplicate.slot == slot and duplicate.role == "duplicate":
                    self.kill(duplicate)
            process = self.current(slot)
            if process is not None and process.running:
                victims.append(process)
        for process in victims:
            self.kill(process)
        applied.ended = time.time()
        missed = sorted(set(fault.slots) - {process.slot for process in victims})
        if missed:
            applied.note = f"slots {missed} were between processes"

    async def _pause(self, fault: Fault, applied: Applied) -> None:
        paused = [p for p in map(self.current, fault.slots) if p is not None and p.running]
        for process in paused:
            process.popen.send_signal(signal.SIGSTOP)
        await trio.sleep(fault.duration)
        for process in paused:
            if process.running:
                process.popen.send_signal(signal.SIGCONT)
        applied.ended = time.time()
        applied.note = f"paused pids {[process.popen.pid for process in paused]}"

    async def _duplicate(self, fault: Fault, applied: Applied) -> None:
        """A second start of a live slot with the slot's epoch; the fault lasts until that process has exited."""
        (slot,) = fault.slots
        process = self.current(slot)
        if process is None or not process.running:
            applied.note = "the slot was between processes"
        else:
            duplicate = self.spawn(slot, process.epoch, "duplicate")
            self.duplicates.append(duplicate)
            with trio.move_on_after(self.spec.timeouts["bind"] + DUPLICATE_GRACE):
                await self.wait_exit(duplicate)
            if duplicate.code is None:
                self.kill(duplicate)
                await self.wait_exit(duplicate)
            took = "bound the port its slot's process had left" if duplicate.bound() else "never bound"
            applied.note = f"exit {duplicate.code} after {duplicate.exited - duplicate.spawned:.2f}s, {took}"
        applied.ended = time.time()

    async def _twin(self, fault: Fault, applied: Applied) -> None:
        """A second process of a live slot in a second namespace on the slot's address, for the fault's duration
        once it listens."""
        (slot,) = fault.slots
        namespace = await trio.to_thread.run_sync(self.hosts.add_twin, slot)
        twin = self.spawn(slot, self.spec.mode, "twin", twin=namespace)
        self.duplicates.append(twin)
        with trio.move_on_after(TWIN_START_LIMIT):
            while twin.running and not twin.bound():
                await trio.sleep(EXIT_POLL)
        with trio.move_on_after(fault.duration):
            await self.wait_exit(twin)
        self.kill(twin)
        await self.wait_exit(twin)
        await trio.to_thread.run_sync(self.hosts.remove_twin, namespace)
        applied.ended = time.time()
        took = "bound its address" if twin.bound() else "never bound"
        applied.note = f"exit {twin.code} after {twin.exited - twin.spawned:.2f}s, {took}"

    async def _cut(self, side: tuple[int, ...]) -> None:
        self.cuts.append(side)
        await trio.to_thread.run_sync(self.hosts.partition, side, self.spec.size)

    async def _heal_later(self, fault: Fault, applied: Applied) -> None:
        await trio.sleep(fault.duration)
        self.cuts.remove(fault.slots)
        await trio.to_thread.run_sync(self.hosts.heal)
        for side in self.cuts:
            await trio.to_thread.run_sync(self.hosts.partition, side, self.spec.size)
        applied.ended = time.time()

    # ----- the end

    def exits(self) -> dict[int, list[int]]:
        return {
            slot: [process.code for process in processes if process.code is not None and not process.stopping]
            for slot, processes in enumerate(self.history)
        }

    async def stop(self) -> list[str]:
        """SIGTERM every slot process, kill what does not exit in time and every duplicate; why it was unclean."""
        self.stopping = True
        problems: list[str] = []
        running = [process for processes in self.history for process in processes if process.running]
        for process in running:
            process.stopping = True
            process.popen.send_signal(signal.SIGCONT)
            process.popen.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for process in running:
                await self.wait_exit(process)
        for process in [*running, *self.duplicates]:
            if process.running:
                if process.role != "duplicate":
                    problems.append(f"slot {process.slot} pid {process.popen.pid} ignored SIGTERM for {STOP_TIMEOUT}s")
                self.kill(process)
            process.popen.wait()
            if process.code is None:
                process.code, process.exited = process.popen.returncode, time.time()
        return problems

    def logs(self) -> str:
        """The tail of every daemon's log, for a failed trial."""
        parts = []
        for process in sorted([*self._members(), *self.duplicates], key=lambda p: p.spawned):
            lines = process.log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
            head = f"--- slot {process.slot} {process.role} epoch {process.epoch} pid {process.popen.pid} "
            parts.append(head + f"exit {process.code}: {process.log}\n" + "\n".join(lines))
        return "\n".join(parts)

    def kill_everything(self) -> None:
        """However the trial ended: no process of it survives, and no partition outlives it."""
        for process in [*self._members(), *self.duplicates]:
            self.kill(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(NetError):
            self.hosts.heal()

    async def run(self) -> dict[str, Any]:
        """The whole trial; its record for the JSON report."""
        spec = self.spec
        record: dict[str, Any] = {"index": spec.index, "seed": spec.seed, "mode": spec.mode, "net": self.hosts.kind}
        record.update(size=spec.size, bound=spec.bound, violations=[], converged=False, recovery=None)
        notes: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                started = time.time()
                for slot in range(spec.size):
                    nursery.start_soon(self.keep_running, slot)
                nursery.start_soon(self.monitor)
                formed, problems = await self.wait_converged(started, started + spec.bound)
                if formed is None:
                    why = f"no ready mesh within B = {spec.bound:.1f}s: {problems}"
                    self.checker.flag("formation", why, time.time())
                else:
                    record["formed_in"] = round(max(s["state_since"] for s in formed) - started, 3)
                    origin = time.time()
                    await self.inject(origin)
                    t0 = self.t0 = max([origin, *(applied.ended or origin for applied in self.applied)])
                    record.update(origin=origin, t0=round(t0 - origin, 3))
                    recovered, problems = await self.wait_converged(t0, t0 + spec.bound)
                    if recovered is None:
                        self.checker.flag("liveness", f"not ready within B = {spec.bound:.1f}s: {problems}", t0)
                    else:
                        ready_at = max(status["state_since"] for status in recovered)
                        record.update(converged=True, recovery=round(max(0.0, ready_at - t0), 3))
                        if ready_at - t0 > spec.bound:
                            self.checker.flag("liveness", f"ready {ready_at - t0:.2f}s after t0, beyond B", ready_at)
                        record["epoch"] = recovered[0]["epoch"]
                        held = await self.hold(recovered)
                        if held:
                            self.checker.flag("unstable", f"the recovered mesh did not hold: {held}", time.time())
                    record["faults"] = [applied.to_json(origin) for applied in self.applied]
                    record["not_applied"] = [f.to_json() for f in spec.faults[len(self.applied) :]]
                notes = await self.stop()
                nursery.cancel_scope.cancel()
        finally:
            self.kill_everything()
        for note in notes:
            self.checker.flag("stop", note, time.time())
        self._check_processes()
        record.setdefault("faults", [])
        record.setdefault("not_applied", [fault.to_json() for fault in spec.faults])
        record["exits"] = {str(slot): codes for slot, codes in self.exits().items()}
        record["deaths"] = self.deaths()
        record["processes"] = [process.to_json() for process in sorted(self._all(), key=lambda p: p.spawned)]
        record["violations"] = [violation.to_json() for violation in self.checker.violations]
        record["converged"] = record["converged"] and not any(
            v.kind in ("formation", "liveness") for v in self.checker.violations
        )
        return record

    def _members(self) -> list[Process]:
        return [process for processes in self.history for process in processes]

    def _all(self) -> list[Process]:
        return [*self._members(), *self.duplicates]

    def deaths(self) -> int:
        """Exits that were not fences (kills, bind failures) of the slots' processes before the end of the trial,
        duplicates that held a slot's port included."""
        members = sum(code != EXIT_FENCED for codes in self.exits().values() for code in codes)
        return members + sum(d.code != EXIT_FENCED for d in self.duplicates if d.code is not None and d.bound())

    def _check_processes(self) -> None:
        now = time.time()
        stale_epochs = {int(process.epoch) for process in self._members() if process.role == "stale"}
        for process in self._all():
            code = process.code if process.code is not None else process.popen.returncode
            if process.role == "duplicate" and not process.bound():
                if not process.killed:
                    lived = (process.exited or now) - process.spawned
                    self.checker.duplicate_exited(process.slot, code, lived, self.spec.timeouts["bind"], now)
                continue
            if process.role == "stale":
                self.checker.stale_behaved(process.slot, int(process.epoch), process.events, now)
            if not process.stopping:
                fences = process.fences()
                self.checker.exited(process.slot, process.role, code, process.killed, fences, now)
                self.checker.fenced_by_stale(fences, stale_epochs, now)
        hit = {slot for applied in self.applied if applied.fault.kind in (KILL, STALE) for slot in applied.fault.slots}
        survivors = [slot for slot in range(self.spec.size) if slot not in hit]
        if not any(applied.fault.kind == TWIN for applied in self.applied):
            # While a twin lives, a slot has two live processes (beyond A1): each may fence the other's generation
            # any number of times. Only the bound after the last fault applies then.
            self.checker.exit_bound(self.exits(), survivors, self.deaths(), now)
        if self.t0 is not None:
            t0 = self.t0
            late = [p for p in self._members() if p.code == EXIT_FENCED and not p.stopping and (p.exited or 0) > t0]
            self.checker.exits_after_last_fault(
                {slot: sum(p.slot == slot for p in late) for slot in range(self.spec.size)}, now
            )
