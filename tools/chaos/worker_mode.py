"""A trial in worker mode (``--workers``): its workers followed while it runs and judged when it ends.

``tools.chaos.workers`` knows workers (``WorkerWatch``: typed worker events, statuses, /proc); this module is what
one trial does with that: flag a worker that outlives its daemon, wait for one worker per slot after recovery, kill
and flag leftovers at the end, and judge every daemon's typed worker events. With the bytewax worker
(``--worker bytewax``) also the job's own result lines, judged by the example's checker (``tools.chaos.results``).
It lives apart from the runner, which calls it only in worker mode.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import trio

from meshd.core.status import WorkerExited
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from tools.chaos.checks import TrialChecker, final_worker_problems
from tools.chaos.observe import Observer
from tools.chaos.processes import MEMBER, ChaosController
from tools.chaos.results import READ_INTERVAL, first_complete, parsed, verdict
from tools.chaos.spec import TrialSpec
from tools.chaos.workers import OUTLIVE_SLACK, WATCH_INTERVAL, WorkerWatch

# How long after the recovered mesh held every slot may take to show its one worker of the final generation running
# (a worker starts once its daemon is ready and its data connections exist: well under this).
WORKER_START_LIMIT = 5.0


class WorkerMode:
    """The workers of one trial (cluster ``name``, whose daemons' mesh addresses are ``peers``)."""

    def __init__(
        self,
        spec: TrialSpec,
        controller: ChaosController,
        observer: Observer,
        checker: TrialChecker,
        name: str,
        peers: list[str],
    ) -> None:
        self.spec = spec
        self.controller = controller
        self.observer = observer
        self.checker = checker
        self.workers = WorkerWatch(name, peers, kind=spec.worker)

    async def watch_workers(self) -> None:
        """For the whole trial: note every worker (events, statuses, /proc); after each daemon exit, flag a worker
        of it that is still alive ``stop_grace`` + 1 s later."""
        while True:
            await self._look_at_workers()
            await trio.sleep(WATCH_INTERVAL)

    async def _look_at_workers(self) -> list[Any]:
        daemons = self.controller.processes()
        seen = await trio.to_thread.run_sync(self.workers.look, daemons, dict(self.observer.last_status))
        now = time.time()
        for worker in self.workers.judge_exits(now):
            daemon = worker.daemon
            assert daemon is not None and daemon.exited is not None
            who = f"slot {daemon.slot} ({daemon.role}, pid {daemon.pid}, exit {daemon.code})"
            self.checker.worker_outlived(who, worker.pid, now - daemon.exited, now)
        return seen

    async def final_workers(self) -> None:
        """After the recovered mesh held: every slot runs exactly one worker, running in the slot's epoch, one epoch
        everywhere (its status) and one live process per slot (/proc); waited for up to WORKER_START_LIMIT."""
        deadline = time.time() + WORKER_START_LIMIT
        problems: list[str] = []
        while True:
            await self.observer.polled.wait()
            seen = await self._look_at_workers()
            live: dict[int, list[int]] = {}
            for process in seen:
                if process.index is not None:
                    live.setdefault(process.index, []).append(process.pid)
            problems = final_worker_problems(self.observer.latest, live)
            if not problems or time.time() > deadline:
                break
        self.checker.workers_final(problems, time.time())

    async def end_workers(self) -> None:
        """Once every daemon is gone: each daemon's workers gone within ``stop_grace`` + 1 s of its exit (polled
        until then), and no worker of the trial alive at all; leftovers are flagged and killed."""
        exits = [inc.exited for inc in self.controller.processes() if inc.exited is not None]
        limit = max(exits, default=time.time()) + self.workers.stop_grace + OUTLIVE_SLACK
        while True:
            seen = await self._look_at_workers()
            if not seen or time.time() > limit:
                break
            await trio.sleep(WATCH_INTERVAL)
        for process in await trio.to_thread.run_sync(self.workers.kill_leftovers):
            detail = f"worker pid {process.pid} of slot {process.index} (epoch {process.epoch}) outlived the trial"
            self.checker.flag("worker-outlived", detail + ": killed", time.time())

    def check_workers(self, now: float, killed_workers: set[int]) -> dict[str, Any]:
        """The typed worker events of every daemon, judged (``killed_workers``: the pids a ``worker`` fault
        killed); the trial's worker figures."""
        generations: set[str] = set()
        exits: dict[str, int] = {}
        started = 0
        for inc in self.controller.processes():
            who = f"slot {inc.slot} ({inc.role}, pid {inc.pid})"
            if not self.spec.bytewax:  # alltoall.py's exit codes (3: another generation's data; 4: shared fate)
                self.checker.worker_exits(who, inc.events, now)
            expected = Epoch(int(inc.epoch)) if self.spec.fixed and inc.role == MEMBER else None
            self.checker.worker_epoch(who, expected, inc.events, now)
            if inc.code is not None and not inc.killed and not inc.stopping:
                ends = [event for event in inc.events if isinstance(event, WorkerExited)]
                if inc.code == ExitCode.WORKER_FAILED and ends and ends[-1].pid in killed_workers:
                    # A ``worker`` fault killed this daemon's worker: its exit 70 is expected, with a typed
                    # worker_exited showing the kill (exit -9).
                    if ends[-1].exit != -signal.SIGKILL:
                        why = f"{who} exited 70 after its worker was killed, whose exit was {ends[-1].exit}, not -9"
                        self.checker.flag("worker-failed", why, now)
                elif not self.spec.bytewax:
                    self.checker.worker_death(who, inc.code, inc.events, now)
                elif inc.code == ExitCode.WORKER_FAILED and not any(isinstance(e, WorkerExited) for e in inc.events):
                    # bytewax has no shared-fate code (a survivor panics when a peer dies): any worker exit is
                    # allowed, but a daemon exit 70 must still say, typed, that its worker ended.
                    self.checker.flag("worker-failed", f"{who} exited 70: no worker_exited event", now)
            epochs = [str(event.epoch) for _, event in self.workers.started_events([inc])]
            generations.update(epochs)
            started += len(epochs)
            for _, event in self.workers.exited_events([inc]):
                key = str(event.exit)
                exits[key] = exits.get(key, 0) + 1
        known = len(self.workers.workers)
        return {
            "started": max(started, known),
            "generations": len(generations),
            "exits": dict(sorted(exits.items())),
            # Workers with no worker_exited event: those of killed daemons (a kill -9 publishes none), and any missed.
            "without_exit_event": max(started, known) - sum(exits.values()),
        }

    # ----- the bytewax job (--worker bytewax): its own result lines, judged by the example's checker

    def result_logs(self) -> list[Path]:
        """Where the workers' stdout went: the daemons' logs (the application's output; no meshd fact is read)."""
        return [inc.log for inc in self.controller.processes()]

    async def bytewax_progress(self, t0: float, record: dict[str, Any]) -> None:
        """After the recovered mesh: the job completes a window again (every key, every partition, every result
        right) in the final generation within B + ``startup`` of the last fault's end."""
        epoch = str(record.get("epoch"))
        deadline = t0 + self.spec.bound + self.spec.startup
        while True:
            lines = await trio.to_thread.run_sync(parsed, self.result_logs())
            found = first_complete(lines, t0, epochs={epoch})
            if found is not None or time.time() > deadline:
                break
            await trio.sleep(READ_INTERVAL)
        if found is None or found.at > deadline:
            record["progress"] = None
            why = f"no complete window of generation {epoch} within B + {self.spec.startup:.0f}s of the last fault"
            self.checker.flag("worker-progress", why, time.time())
        else:
            record["progress"] = round(max(0.0, found.at - t0), 3)
            record["progress_window"] = {"epoch": found.epoch, "window": found.window, "processes": found.processes}

    def check_results(self, record: dict[str, Any]) -> None:
        """Every result line any generation printed is right (recomputed from its key and window), none twice."""
        count, errors = verdict(self.result_logs())
        record["results"] = count
        record["startup"] = self.spec.startup
        record.setdefault("progress", None)
        for error in errors[:10]:
            self.checker.flag("worker-result", error, time.time())
        if len(errors) > 10:
            self.checker.flag("worker-result", f"{len(errors) - 10} more wrong result lines", time.time())
