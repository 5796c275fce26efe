"""Fault injection: a trial's seeded schedule (``tools.chaos.faults``) applied to its live processes, and what
became of each fault (``Applied``, in the trial's record).

The schedule is data decided before any process starts; this is where it meets processes: kill -9 (of a daemon, or
of its worker alone), SIGSTOP/SIGCONT, stale-epoch restarts, duplicate and twin starts, partitions and their heals.
It lives apart from the runner, which only starts it and reads what it applied.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import trio

from meshd.cluster.controller import Incarnation
from tools.chaos.checks import TrialChecker
from tools.chaos.faults import DUPLICATE, KILL, PARTITION, PAUSE, STALE, TWIN, WORKER, Fault
from tools.chaos.netns import Hosts
from tools.chaos.observe import Observer
from tools.chaos.processes import DUPLICATE_START, TWIN_START, ChaosController
from tools.chaos.spec import TrialSpec
from tools.chaos.workers import proc_stat

# How often a condition on one process (it listens, it exited) is checked.
EXIT_POLL = 0.02
# How long past ``timeouts.bind`` a duplicate start may take to exit before the runner kills it (start-up, which
# took up to 4 s at load average 18 on this 2-core machine, and a fenced process's drain).
DUPLICATE_GRACE = 8.0
# How long a twin may take to start listening; its fault's duration counts from then.
TWIN_START_LIMIT = 5.0


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


class Injector:
    """Applies one trial's fault schedule (``inject``); ``applied`` records every fault it applied, in order."""

    def __init__(
        self, spec: TrialSpec, hosts: Hosts, controller: ChaosController, observer: Observer, checker: TrialChecker
    ) -> None:
        self.spec = spec
        self.hosts = hosts
        self.controller = controller
        self.observer = observer
        self.checker = checker
        self.applied: list[Applied] = []
        self.cuts: list[tuple[int, ...]] = []
        self.killed_workers: set[int] = set()  # pids of the workers a ``worker`` fault killed

    async def inject(self, origin: float) -> None:
        """Apply the schedule from ``origin`` (wall clock); returns when the last fault has ended."""
        async with trio.open_nursery() as nursery:
            for fault in self.spec.faults:
                await trio.sleep(max(0.0, origin + fault.at - time.time()))
                applied = Applied(fault, started=time.time())
                self.applied.append(applied)
                if fault.kind in (KILL, STALE):
                    self._kill_slots(fault, applied)
                elif fault.kind == WORKER:
                    self._kill_workers(fault, applied)
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
                self.controller.pending_stale[slot] = fault.stale_epoch
            for duplicate in self.controller.seconds():
                if duplicate.slot == slot and duplicate.role == DUPLICATE_START:
                    self.controller.kill_second(duplicate)
            incarnation = self.controller.current(slot)
            if incarnation is not None and incarnation.running:
                victims.append(incarnation)
        for incarnation in victims:
            self.controller.kill(incarnation)
        applied.ended = time.time()
        missed = sorted(set(fault.slots) - {incarnation.slot for incarnation in victims})
        if missed:
            applied.note = f"slots {missed} were between processes"

    def _kill_workers(self, fault: Fault, applied: Applied) -> None:
        """Worker mode: kill -9 of each victim's worker alone (its daemon then exits 70, a death for the controller).
        A victim whose worker is not known now (its process between starts, its worker not started or gone) is
        skipped, and noted."""
        killed: list[str] = []
        skipped: list[int] = []
        for slot in fault.slots:
            incarnation = self.controller.current(slot)
            pid = None if incarnation is None else self.observer.worker_pid(incarnation)
            if pid is None:
                skipped.append(slot)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.killed_workers.add(pid)
                killed.append(f"slot {slot} worker pid {pid}")
        applied.ended = time.time()
        notes = [f"killed {', '.join(killed)}"] if killed else []
        if skipped:
            notes.append(f"skipped slots {skipped}: no live worker known")
        applied.note = "; ".join(notes)

    async def _pause(self, fault: Fault, applied: Applied) -> None:
        """SIGSTOP of each victim's process (in worker mode with its worker: both stopped, both continued), SIGCONT
        after the fault's duration."""
        paused = [inc for inc in map(self.controller.current, fault.slots) if inc is not None and inc.running]
        workers: dict[int, int] = {}  # daemon pid -> its worker's pid, stopped with it
        unknown: list[int] = []
        for incarnation in paused:
            worker = self.observer.worker_pid(incarnation) if self.spec.workers else None
            incarnation.process.send_signal(signal.SIGSTOP)
            if worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGSTOP)
                    workers[incarnation.pid] = worker
            elif self.spec.workers:
                unknown.append(incarnation.slot)
        await trio.sleep(fault.duration)
        for incarnation in paused:
            worker = workers.get(incarnation.pid)
            if worker is not None:
                found = proc_stat(worker)
                if found is not None and found[1] == incarnation.pid:  # still the daemon's child (no reused pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGCONT)
            if incarnation.running:
                incarnation.process.send_signal(signal.SIGCONT)
        applied.ended = time.time()
        applied.note = f"paused pids {[incarnation.pid for incarnation in paused]}"
        if self.spec.workers:
            applied.note += f" with worker pids {sorted(workers.values())}"
            if unknown:
                applied.note += f"; skipped the workers of slots {unknown}: no live worker known (daemon alone)"

    async def _until_exit_or_listening(self, incarnation: Incarnation, *, exit_only: bool) -> None:
        """Poll a second process until it exits (noting whether it got the port meanwhile), or with ``exit_only``
        false until it listens."""
        while incarnation.running:
            self.controller.note_bound(incarnation)
            if not exit_only and incarnation in self.controller.bound:
                return
            await trio.sleep(EXIT_POLL)

    async def _duplicate(self, fault: Fault, applied: Applied) -> None:
        """A second start of a live slot with the slot's epoch; the fault lasts until that process has exited."""
        (slot,) = fault.slots
        incarnation = self.controller.current(slot)
        if incarnation is None or not incarnation.running:
            applied.note = "the slot was between processes"
        else:
            duplicate = await self.controller.spawn(slot, incarnation.epoch, DUPLICATE_START)
            with trio.move_on_after(self.spec.timeouts["bind"] + DUPLICATE_GRACE):
                await self._until_exit_or_listening(duplicate, exit_only=True)
            self.controller.kill_second(duplicate)
            code = await self.controller.wait(duplicate)
            took = (
                "bound the port its slot's process had left" if self.controller.was_bound(duplicate) else "never bound"
            )
            lived = (duplicate.exited or time.time()) - duplicate.spawned
            applied.note = f"exit {code} after {lived:.2f}s, {took}"
        applied.ended = time.time()

    async def _twin(self, fault: Fault, applied: Applied) -> None:
        """A second process of a live slot in a second namespace on the slot's address, for the fault's duration
        once it listens. From then on a slot may have two live processes (beyond A5) for the safety checker."""
        (slot,) = fault.slots
        namespace = await trio.to_thread.run_sync(self.hosts.add_twin, slot)
        self.controller.twins[slot] = namespace
        self.checker.safety.duplicates = True
        twin = await self.controller.spawn(slot, self.spec.mode, TWIN_START)
        with trio.move_on_after(TWIN_START_LIMIT):
            await self._until_exit_or_listening(twin, exit_only=False)
        with trio.move_on_after(fault.duration):
            await self.controller.wait(twin)
        self.controller.kill_second(twin)
        code = await self.controller.wait(twin)
        await trio.to_thread.run_sync(self.hosts.remove_twin, namespace)
        applied.ended = time.time()
        took = "bound its address" if self.controller.was_bound(twin) else "never bound"
        lived = (twin.exited or time.time()) - twin.spawned
        applied.note = f"exit {code} after {lived:.2f}s, {took}"

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
