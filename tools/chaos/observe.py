"""Observation of a trial's daemons: every slot's status polled for the whole trial and fed to the one safety checker
(``TrialChecker``), and what the runner reads off those polls: whether the mesh converged (every slot ready in one
epoch, linked to the processes that actually run), whether it held, which worker a daemon runs now.

The polls are shared: the runner waits on them, fault injection asks them for a live worker, the worker checks read
them. This module owns them so that none of those has to reach into the runner.
"""

from __future__ import annotations

import time

import trio

from meshd.cluster.controller import Incarnation
from meshd.cluster.policy import convergence_problems
from meshd.core.status import Status, WorkerExited, WorkerStarted, WorkerState
from meshd.core.wire import Epoch
from tools.chaos.checks import TrialChecker, observation
from tools.chaos.processes import ChaosController
from tools.chaos.spec import TrialSpec
from tools.chaos.workers import proc_stat

# How often every slot is polled.
MONITOR_INTERVAL = 0.2
# Bound on one admin status request; a stopped (SIGSTOP) daemon does not answer.
STATUS_TIMEOUT = 1.0


class Observer:
    """Polls every slot of one trial (``monitor``, for the whole trial) and answers from the latest poll."""

    def __init__(self, spec: TrialSpec, controller: ChaosController, checker: TrialChecker) -> None:
        self.spec = spec
        self.controller = controller
        self.checker = checker
        self.last_status: dict[Incarnation, Status] = {}
        self.latest: list[Status | None] = [None] * spec.size
        self.latest_began = 0.0  # wall clock when the poll behind ``latest`` started
        self.polled = trio.Event()

    async def _poll(self, slot: int, incarnation: Incarnation, into: list[Status | None]) -> None:
        status = await self.controller.status(slot, STATUS_TIMEOUT)
        if status is not None and self.controller.is_ours(incarnation, status):
            into[slot] = status
            self.last_status[incarnation] = status

    async def monitor(self) -> None:
        """Poll every slot's status for the whole trial; feed each poll to the safety checker."""
        while True:
            began = time.time()
            processes = [self.controller.current(slot) for slot in range(self.spec.size)]
            found: list[Status | None] = [None] * self.spec.size
            async with trio.open_nursery() as nursery:
                for slot, incarnation in enumerate(processes):
                    if incarnation is not None and incarnation.running:
                        nursery.start_soon(self._poll, slot, incarnation, found)
            now = time.time()
            answered = [
                observation(status, incarnation.spawned)
                for status, incarnation in zip(found, processes, strict=True)
                if status is not None and incarnation is not None
            ]
            self.checker.observe(now, answered)
            same = [self.controller.current(slot) for slot in range(self.spec.size)] == processes
            stable = same and all(incarnation is not None and incarnation.running for incarnation in processes)
            self.latest = found if stable else [None] * self.spec.size
            self.latest_began = began
            self.polled.set()
            self.polled = trio.Event()
            await trio.sleep(MONITOR_INTERVAL)

    def converged(self) -> tuple[bool, list[str]]:
        """Every slot's running process ready in one epoch (the controller's with fixed epochs; sealed with auto),
        each linked to exactly the incarnations that run."""
        statuses = self.latest
        if any(status is None for status in statuses):
            return False, [f"slot {slot} did not answer" for slot, s in enumerate(statuses) if s is None]
        epoch = Epoch(int(self.controller.policy.epoch())) if self.spec.fixed else None
        problems = convergence_problems(statuses, epoch=epoch)
        return not problems, problems

    async def wait_converged(self, since: float, deadline: float) -> tuple[list[Status] | None, list[str]]:
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

    async def hold(self, statuses: list[Status]) -> list[str]:
        """After convergence: the same processes stay ready in the same epoch for ``settle`` seconds."""
        incarnations = [status.incarnation for status in statuses]
        exits_before = self.controller.exits()
        end = time.time() + self.spec.settle
        while time.time() < end:
            await self.polled.wait()
        await self.polled.wait()
        done, problems = self.converged()
        if done and [status.incarnation for status in self.latest if status] != incarnations:
            problems = ["the mesh moved to other processes"]
        if self.controller.exits() != exits_before:
            problems.append(f"exits changed from {exits_before} to {self.controller.exits()}")
        return problems

    def worker_pid(self, incarnation: Incarnation) -> int | None:
        """Worker mode: the pid of the live worker of a slot's process, from its typed events (the latest
        ``worker_started``, unless a ``worker_exited`` followed) or else its latest polled status (worker running);
        None when none is known, or when that pid is not a live child of the daemon (/proc: gone, a zombie, reused)."""
        pid: int | None = None
        for event in incarnation.events:
            if isinstance(event, WorkerStarted):
                pid = event.pid
            elif isinstance(event, WorkerExited) and event.pid == pid:
                pid = None
        status = self.last_status.get(incarnation)
        ended = {event.pid for event in incarnation.events if isinstance(event, WorkerExited)}
        if pid is None and status is not None and status.worker.state is WorkerState.RUNNING:
            pid = status.worker.pid if status.worker.pid not in ended else None
        if pid is None or not incarnation.running:
            return None
        found = proc_stat(pid)
        if found is None or found[0] in ("Z", "X") or found[1] != incarnation.pid:
            return None
        return pid
