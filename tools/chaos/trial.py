"""One chaos trial: real ``meshd run`` processes under the cluster harness, a seeded fault schedule, a quiet period.

The daemons run under ``meshd.cluster``'s controller (``ChaosController``): its restart loops, its epoch rule R6
(``EpochController``: with fixed epochs a death gets a new epoch above all, an exit 75 restarts with the current one;
with ``--epoch auto`` every daemon is simply restarted), its admin watch of every process from the moment it answers
(typed events), and its way of stopping and killing. The chaos part adds where daemons live (``Hosts``), stale,
duplicate and twin starts, and the faults. Every slot's status is polled for the whole trial and fed to the one
safety checker (``meshd.safety``, through ``TrialChecker``). After the last fault ends (t0) the trial waits for every
slot to be ready in one epoch, linked to the processes that actually run (``convergence_problems``), for at most
the design's bound B; then the mesh must hold for ``settle`` seconds. Every daemon is stopped (or killed) when the
trial ends, however it ends, and dies with the runner in any case.

No fact comes from a log line: whether a second process got its mesh port is read from the kernel (it holds a
listening socket: ``listens``), polled while it lives; fences are the typed ``Fenced`` events of the admin watch.

With ``workers`` every daemon runs ``examples/alltoall.py`` (``--exec``, through the controller's extra arguments);
``tools.chaos.workers`` follows the workers (typed worker events, statuses, /proc) and the checks judge them; what
the workers print goes to the daemons' logs for a human to read, never to the checks. With the bytewax worker
(``--worker bytewax``) the job's result lines are the exception: they are the application's output, and
``tools.chaos.results`` judges them with the example's own checker (no meshd fact is read from them).

This module runs the trial and judges its processes at the end; its parts are the spec (``tools.chaos.spec``), the
processes and their controller (``processes``), the polls (``observe``), the faults (``inject``) and the workers
(``worker_mode``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import trio

from meshd.cluster.controller import Incarnation
from meshd.cluster.spawn import log_tail, write_config
from meshd.core.status import Fenced
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from tools.chaos.checks import TrialChecker, violation_json
from tools.chaos.faults import KILL, STALE, TWIN, WORKER
from tools.chaos.inject import Injector
from tools.chaos.netns import Hosts, NetError
from tools.chaos.observe import Observer
from tools.chaos.processes import DUPLICATE_START, STALE_START, ChaosController
from tools.chaos.spec import TrialSpec
from tools.chaos.worker_mode import WorkerMode

# How long the admin watches of stopped processes may take to read their last events and end.
WATCH_DRAIN = 5.0
# Lines of each daemon's log shown when a trial fails.
LOG_TAIL_LINES = 15


class Trial:
    """Runs one trial in ``workdir`` (config and daemon logs) on ``hosts``."""

    def __init__(self, spec: TrialSpec, hosts: Hosts, workdir: Path) -> None:
        self.spec = spec
        self.hosts = hosts
        name = f"chaos-{spec.index}"
        peers = [hosts.mesh(index) for index in range(spec.size)]
        remote_admin = not all(hosts.admin(index).loopback for index in range(spec.size))
        config = write_config(workdir / "cluster.toml", name, peers, spec.timeouts, admin_token=remote_admin)
        self.controller = ChaosController(spec, hosts, workdir, config, name)
        self.checker = TrialChecker()
        self.observer = Observer(spec, self.controller, self.checker)
        self.injector = Injector(spec, hosts, self.controller, self.observer, self.checker)
        self.t0: float | None = None  # wall clock when the last fault ended
        self.workers = (
            WorkerMode(spec, self.controller, self.observer, self.checker, name, [str(peer) for peer in peers])
            if spec.workers
            else None
        )

    def exits(self) -> dict[int, list[int]]:
        """Every slot's exit codes before the end of the trial (its own processes: members and stale starts)."""
        return self.controller.exits()

    async def stop(self) -> list[str]:
        """Kill the second processes, then stop the slots' processes as the controller does (SIGTERM, SIGKILL after
        a while); why it was unclean."""
        for second in self.controller.seconds():
            if second.running:
                self.controller.kill_second(second)
        running = [incarnation for incarnation in self.controller.members() if incarnation.running]
        await self.controller.stop()
        notes = [
            f"slot {incarnation.slot} pid {incarnation.pid} ignored SIGTERM for a while: killed"
            for incarnation in running
            if incarnation.killed
        ]
        # Every process has exited; its watch still has to read the events it published last (the trial's nursery,
        # and the watches in it, are cancelled next).
        if not await self.controller.watches_ended(WATCH_DRAIN):
            notes.append(f"an admin watch did not end within {WATCH_DRAIN:.0f}s of its process's exit")
        return notes

    def logs(self) -> str:
        """The tail of every daemon's log, for a failed trial."""
        parts = []
        for inc in sorted(self.controller.processes(), key=lambda inc: inc.spawned):
            head = f"--- slot {inc.slot} {inc.role} epoch {inc.epoch} pid {inc.pid} exit {inc.code}: {inc.log}"
            parts.append(head + "\n" + log_tail(inc.log, LOG_TAIL_LINES))
        return "\n".join(parts)

    async def run(self) -> dict[str, Any]:
        """The whole trial; its record for the JSON report."""
        spec = self.spec
        record: dict[str, Any] = {"index": spec.index, "seed": spec.seed, "mode": spec.mode, "net": self.hosts.kind}
        record.update(size=spec.size, bound=spec.bound, violations=[], converged=False, recovery=None)
        notes: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                started = time.time()
                await nursery.start(self.controller.run)
                nursery.start_soon(self.observer.monitor)
                if self.workers is not None:
                    nursery.start_soon(self.workers.watch_workers)
                formed, problems = await self.observer.wait_converged(started, started + spec.bound)
                if formed is None:
                    why = f"no ready mesh within B = {spec.bound:.1f}s: {problems}"
                    self.checker.flag("formation", why, time.time())
                else:
                    record["formed_in"] = round(max(s.state_since for s in formed) - started, 3)
                    origin = time.time()
                    await self.injector.inject(origin)
                    t0 = self.t0 = max([origin, *(applied.ended or origin for applied in self.injector.applied)])
                    record.update(origin=origin, t0=round(t0 - origin, 3))
                    recovered, problems = await self.observer.wait_converged(t0, t0 + spec.bound)
                    if recovered is None:
                        self.checker.flag("liveness", f"not ready within B = {spec.bound:.1f}s: {problems}", t0)
                    else:
                        ready_at = max(status.state_since for status in recovered)
                        record.update(converged=True, recovery=round(max(0.0, ready_at - t0), 3))
                        if ready_at - t0 > spec.bound:
                            self.checker.flag("liveness", f"ready {ready_at - t0:.2f}s after t0, beyond B", ready_at)
                        record["epoch"] = recovered[0].to_json()["epoch"]
                        held = await self.observer.hold(recovered)
                        if held:
                            self.checker.flag("unstable", f"the recovered mesh did not hold: {held}", time.time())
                        if self.workers is not None:
                            await self.workers.final_workers()
                            if spec.bytewax:
                                await self.workers.bytewax_progress(t0, record)
                    record["faults"] = [applied.to_json(origin) for applied in self.injector.applied]
                    record["not_applied"] = [f.to_json() for f in spec.faults[len(self.injector.applied) :]]
                notes = await self.stop()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.controller.stop()  # however the trial ended (done already when it ended well)
                with contextlib.suppress(NetError):
                    await trio.to_thread.run_sync(self.hosts.heal)  # no partition outlives the trial
                if self.workers is not None:
                    await self.workers.end_workers()
        for note in notes:
            self.checker.flag("stop", note, time.time())
        if self.controller.failure is not None:
            self.checker.flag("controller", self.controller.failure, time.time())
        self._check_processes()
        if self.workers is not None:
            record["workers"] = self.workers.check_workers(time.time(), self.injector.killed_workers)
            if spec.bytewax:
                self.workers.check_results(record)
        record.setdefault("faults", [])
        record.setdefault("not_applied", [fault.to_json() for fault in spec.faults])
        record["exits"] = {str(slot): codes for slot, codes in self.exits().items()}
        record["deaths"] = self.deaths()
        record["processes"] = [self._process_json(inc) for inc in sorted(self.controller.processes(), key=_spawned)]
        record["violations"] = [violation_json(violation) for violation in self.checker.violations]
        record["converged"] = record["converged"] and not any(
            v.kind in ("formation", "liveness") for v in self.checker.violations
        )
        return record

    def _process_json(self, incarnation: Incarnation) -> dict[str, Any]:
        return {
            "slot": incarnation.slot,
            "role": incarnation.role,
            "epoch": incarnation.epoch,
            "pid": incarnation.pid,
            "spawned": incarnation.spawned,
            "code": incarnation.code,
            "lived": None if incarnation.exited is None else round(incarnation.exited - incarnation.spawned, 3),
            "killed_by_runner": incarnation.killed,
            "watched": incarnation.snapshot is not None,
            "events": len(incarnation.events),
        }

    def deaths(self) -> int:
        """Exits that were not fences (kills, bind failures) of the slots' processes before the end of the trial,
        duplicates that held a slot's port included."""
        members = sum(code != ExitCode.FENCED for codes in self.exits().values() for code in codes)
        seconds = [inc for inc in self.controller.seconds() if inc.role == DUPLICATE_START and inc.code is not None]
        return members + sum(inc.code != ExitCode.FENCED for inc in seconds if self.controller.was_bound(inc))

    def _epoch(self, incarnation: Incarnation, fences: list[Fenced]) -> Epoch | None:
        """The epoch a process ran in at its end, as far as the runner knows."""
        if fences:
            return fences[-1].epoch
        if incarnation in self.observer.last_status:
            return self.observer.last_status[incarnation].epoch
        if incarnation.snapshot is not None:
            return incarnation.snapshot.epoch
        return Epoch(incarnation.epoch) if isinstance(incarnation.epoch, int) else None

    def _check_processes(self) -> None:
        now = time.time()
        stale_epochs = {Epoch(int(inc.epoch)) for inc in self.controller.members() if inc.role == STALE_START}
        for inc in self.controller.processes():
            code = inc.code if inc.code is not None else inc.process.poll()
            if code is None:  # cannot be: every process was stopped or killed and waited for
                self.checker.flag("stop", f"slot {inc.slot} {inc.role} pid {inc.pid} outlived the trial", now)
                continue
            if inc.role == DUPLICATE_START and not self.controller.was_bound(inc):
                if not inc.killed and not inc.stopping:
                    lived = (inc.exited or now) - inc.spawned
                    self.checker.duplicate_exited(inc.slot, code, lived, self.spec.timeouts["bind"], now)
                continue
            if inc.role == STALE_START:
                self.checker.stale_behaved(inc.slot, int(inc.epoch), inc.events, now)
            if not inc.stopping:
                fences = [event for event in inc.events if isinstance(event, Fenced)]
                status = self.observer.last_status.get(inc, inc.snapshot)
                who = f"slot {inc.slot} ({inc.role})"
                # Worker mode: a daemon whose worker failed exits 70 (a death for the controller); the worker checks
                # judge whether that failure was allowed (shared fate) or a violation.
                allowed = (ExitCode.WORKER_FAILED,) if self.workers is not None else ()
                epoch = self._epoch(inc, fences)
                self.checker.exited(who, code, inc.killed, fences, status, epoch, now, also_allowed=allowed)
                self.checker.fenced_by_stale(fences, stale_epochs, now)
        hit = {
            s
            for applied in self.injector.applied
            if applied.fault.kind in (KILL, STALE, WORKER)
            for s in applied.fault.slots
        }
        survivors = [slot for slot in range(self.spec.size) if slot not in hit]
        if not any(applied.fault.kind == TWIN for applied in self.injector.applied):
            # While a twin lives, a slot has two live processes (beyond A1): each may fence the other's generation
            # any number of times. Only the bound after the last fault applies then.
            self.checker.exit_bound(self.exits(), survivors, self.deaths(), now)
        if self.t0 is not None:
            t0 = self.t0
            late = [
                inc
                for inc in self.controller.members()
                if inc.code == ExitCode.FENCED and not inc.stopping and (inc.exited or 0) > t0
            ]
            self.checker.exits_after_last_fault(
                {slot: sum(inc.slot == slot for inc in late) for slot in range(self.spec.size)}, now
            )


def _spawned(incarnation: Incarnation) -> float:
    return incarnation.spawned
