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
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import EpochController, convergence_problems
from meshd.cluster.spawn import log_tail, run_argv, write_config
from meshd.core.generation import EpochMode
from meshd.core.status import Fenced, Status, WorkerExited, WorkerStarted, WorkerState
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from tools.chaos.checks import TrialChecker, final_worker_problems, observation, violation_json
from tools.chaos.faults import (
    BASE_EPOCH,
    DUPLICATE,
    KILL,
    PARTITION,
    PAUSE,
    STALE,
    TWIN,
    WORKER,
    Fault,
)
from tools.chaos.netns import Hosts, NetError
from tools.chaos.results import READ_INTERVAL, STARTUP, first_complete, parsed, verdict
from tools.chaos.workers import (
    ALLTOALL_KIND,
    BYTEWAX_KIND,
    OUTLIVE_SLACK,
    WATCH_INTERVAL,
    WorkerWatch,
    _stat,
    exec_args,
)

# How often a condition on one process (it listens, it exited) is checked, and how often every slot is polled.
EXIT_POLL = 0.02
MONITOR_INTERVAL = 0.2
# Bound on one admin status request; a stopped (SIGSTOP) daemon does not answer.
STATUS_TIMEOUT = 1.0
# How long past ``timeouts.bind`` a duplicate start may take to exit before the runner kills it (start-up, which
# took up to 4 s at load average 18 on this 2-core machine, and a fenced process's drain).
DUPLICATE_GRACE = 8.0
# How long a twin may take to start listening; its fault's duration counts from then.
TWIN_START_LIMIT = 5.0
# How long the admin watches of stopped processes may take to read their last events and end.
WATCH_DRAIN = 5.0
# Lines of each daemon's log shown when a trial fails.
LOG_TAIL_LINES = 15
# Roles of the processes a trial starts: the slot's own (a member, or a member started with a stale epoch), and
# second processes of a live slot (a duplicate on the same host, a twin in a second namespace on its address).
MEMBER, STALE_START, DUPLICATE_START, TWIN_START = "member", "stale", "duplicate", "twin"
# /proc/net/tcp's state column for a listening socket.
TCP_LISTEN = "0A"
# Worker mode: how long after the recovered mesh held every slot may take to show its one worker of the final
# generation running (a worker starts once its daemon is ready and its data connections exist: well under this).
WORKER_START_LIMIT = 5.0


def listens(pid: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket (a daemon does once it bound its mesh port): its socket
    inodes against the listening sockets of its network namespace, both from /proc. False once it is gone."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        if not inodes:
            return False
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as sockets:
                next(sockets)  # the header
                for row in sockets:
                    fields = row.split()
                    if fields[3] == TCP_LISTEN and fields[9] in inodes:
                        return True
    except OSError:
        return False
    return False


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
    workers: bool = False  # every daemon runs a worker (``worker``: examples/alltoall.py, or the bytewax job)
    worker: str = ALLTOALL_KIND
    startup: float = STARTUP  # bytewax: the engine's start-up allowance beyond B for results to flow again


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


class ChaosController(Controller):
    """The cluster harness's controller, with the chaos runner's starts: a slot may be restarted with a stale epoch
    on purpose, every daemon runs where ``hosts`` puts it, a twin in its own namespace; before a slot restarts, its
    duplicates are retired (one may hold the port the slot's process left)."""

    def __init__(self, trial: Trial, config: Path, name: str) -> None:
        mode = EpochMode.AUTO if trial.spec.mode == "auto" else EpochMode.FIXED
        admins = [trial.hosts.admin(index) for index in range(trial.spec.size)]
        policy = EpochController(mode, current=BASE_EPOCH)
        extra = exec_args(trial.spec.worker) if trial.spec.workers else ()
        super().__init__(
            config=config, admins=admins, policy=policy, workdir=trial.workdir, name=name, extra_args=extra
        )
        self.trial = trial
        self.pending_stale: dict[int, int] = {}  # slot -> the stale epoch its next start gets
        self.twins: dict[int, str] = {}  # slot -> the namespace of its twin
        self.watches: dict[int, trio.Event] = {}  # id(incarnation) -> set once its admin watch ended

    def command(self, slot: int, epoch: int | str, role: str) -> list[str]:
        hosts = self.trial.hosts
        if role == TWIN_START:
            argv = run_argv(
                self.config, slot, epoch, hosts.twin_admin(slot), ("--log-format", "json", *self.extra_args)
            )
            return hosts.command_in(self.twins[slot], argv)
        return hosts.command(slot, super().command(slot, epoch, role))

    def start_epoch(self, slot: int) -> tuple[int | str, str]:
        stale = self.pending_stale.pop(slot, None)
        return super().start_epoch(slot) if stale is None else (stale, STALE_START)

    async def follow(self, incarnation: Incarnation) -> None:
        """Only the slot's own processes are watched: a duplicate shares its admin port with the slot's process (and
        would make the watch retry against that one for its whole life), a twin answers on an admin port of its own.
        Whether either got the port is read from the kernel instead (``listens``)."""
        if incarnation.role in (MEMBER, STALE_START):
            ended = self.watches[id(incarnation)] = trio.Event()
            try:
                await super().follow(incarnation)
            finally:
                ended.set()

    async def watches_ended(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until the admin watch of every watched process ended: it read every event its
        process published before it exited (a daemon drains its watchers before it ends)."""
        with trio.move_on_after(timeout):
            for ended in list(self.watches.values()):
                await ended.wait()
            return True
        return False

    async def exited(self, incarnation: Incarnation, code: int) -> None:
        await self.trial.retire_duplicates(incarnation.slot)


class Trial:
    """Runs one trial in ``workdir`` (config and daemon logs) on ``hosts``."""

    def __init__(self, spec: TrialSpec, hosts: Hosts, workdir: Path) -> None:
        self.spec = spec
        self.hosts = hosts
        self.workdir = workdir
        name = f"chaos-{spec.index}"
        peers = [hosts.mesh(index) for index in range(spec.size)]
        remote_admin = not all(hosts.admin(index).loopback for index in range(spec.size))
        config = write_config(workdir / "cluster.toml", name, peers, spec.timeouts, admin_token=remote_admin)
        self.controller = ChaosController(self, config, name)
        self.checker = TrialChecker()
        self.bound: set[Incarnation] = set()  # second processes seen holding a listening socket
        self.last_status: dict[Incarnation, Status] = {}
        self.cuts: list[tuple[int, ...]] = []
        self.latest: list[Status | None] = [None] * spec.size
        self.latest_began = 0.0  # wall clock when the poll behind ``latest`` started
        self.polled = trio.Event()
        self.applied: list[Applied] = []
        self.t0: float | None = None  # wall clock when the last fault ended
        self.workers = WorkerWatch(name, [str(peer) for peer in peers], kind=spec.worker) if spec.workers else None
        self.killed_workers: set[int] = set()  # pids of the workers a ``worker`` fault killed

    @property
    def bytewax(self) -> bool:
        return self.spec.workers and self.spec.worker == BYTEWAX_KIND

    @property
    def fixed(self) -> bool:
        return self.spec.mode == "fixed"

    # ----- processes

    def current(self, slot: int) -> Incarnation | None:
        """The slot's own process (a member, or one started stale), the latest started."""
        own = [inc for inc in self.controller.slots[slot].history if inc.role in (MEMBER, STALE_START)]
        return own[-1] if own else None

    def members(self) -> list[Incarnation]:
        return [inc for inc in self.controller.processes() if inc.role in (MEMBER, STALE_START)]

    def seconds(self) -> list[Incarnation]:
        """Second processes of live slots: duplicates and twins."""
        return [inc for inc in self.controller.processes() if inc.role in (DUPLICATE_START, TWIN_START)]

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
        found = _stat(pid)
        if found is None or found[0] in ("Z", "X") or found[1] != incarnation.pid:
            return None
        return pid

    def was_bound(self, incarnation: Incarnation) -> bool:
        """Whether a second process got its slot's mesh port (it was seen holding a listening socket)."""
        return incarnation in self.bound

    def note_bound(self, incarnation: Incarnation) -> None:
        if incarnation.running and listens(incarnation.pid):
            self.bound.add(incarnation)

    def kill_second(self, incarnation: Incarnation) -> None:
        """Kill a duplicate or a twin, noting first whether it got the port."""
        self.note_bound(incarnation)
        self.controller.kill(incarnation)

    async def retire_duplicates(self, slot: int) -> None:
        """Before a slot's restart, kill its duplicates: one may have bound the port its process freed, and the
        restart must not fail to bind. One that did was a process of the slot, and the controller saw it die."""
        for duplicate in self.seconds():
            if duplicate.slot == slot and duplicate.role == DUPLICATE_START and duplicate.code is None:
                self.kill_second(duplicate)
                code = await self.controller.wait(duplicate)
                if self.was_bound(duplicate):
                    self.controller.policy.exited(duplicate.epoch, code)

    # ----- observation

    async def _poll(self, slot: int, incarnation: Incarnation, into: list[Status | None]) -> None:
        status = await self.controller.status(slot, STATUS_TIMEOUT)
        if status is not None and self.controller.is_ours(incarnation, status):
            into[slot] = status
            self.last_status[incarnation] = status

    async def monitor(self) -> None:
        """Poll every slot's status for the whole trial; feed each poll to the safety checker."""
        while True:
            began = time.time()
            processes = [self.current(slot) for slot in range(self.spec.size)]
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
            same = [self.current(slot) for slot in range(self.spec.size)] == processes
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
        epoch = Epoch(int(self.controller.policy.epoch())) if self.fixed else None
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
        exits_before = self.exits()
        end = time.time() + self.spec.settle
        while time.time() < end:
            await self.polled.wait()
        await self.polled.wait()
        done, problems = self.converged()
        if done and [status.incarnation for status in self.latest if status] != incarnations:
            problems = ["the mesh moved to other processes"]
        if self.exits() != exits_before:
            problems.append(f"exits changed from {exits_before} to {self.exits()}")
        return problems

    # ----- workers

    async def watch_workers(self) -> None:
        """Worker mode, for the whole trial: note every worker (events, statuses, /proc); after each daemon exit,
        flag a worker of it that is still alive ``stop_grace`` + 1 s later."""
        assert self.workers is not None
        while True:
            await self._look_at_workers()
            await trio.sleep(WATCH_INTERVAL)

    async def _look_at_workers(self) -> list[Any]:
        assert self.workers is not None
        daemons = self.controller.processes()
        seen = await trio.to_thread.run_sync(self.workers.look, daemons, dict(self.last_status))
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
            await self.polled.wait()
            seen = await self._look_at_workers()
            live: dict[int, list[int]] = {}
            for process in seen:
                if process.index is not None:
                    live.setdefault(process.index, []).append(process.pid)
            problems = final_worker_problems(self.latest, live)
            if not problems or time.time() > deadline:
                break
        self.checker.workers_final(problems, time.time())

    async def end_workers(self) -> None:
        """Worker mode, once every daemon is gone: each daemon's workers gone within ``stop_grace`` + 1 s of its
        exit (polled until then), and no worker of the trial alive at all; leftovers are flagged and killed."""
        assert self.workers is not None
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

    def _check_results(self, record: dict[str, Any]) -> None:
        """Every result line any generation printed is right (recomputed from its key and window), none twice."""
        count, errors = verdict(self.result_logs())
        record["results"] = count
        record["startup"] = self.spec.startup
        record.setdefault("progress", None)
        for error in errors[:10]:
            self.checker.flag("worker-result", error, time.time())
        if len(errors) > 10:
            self.checker.flag("worker-result", f"{len(errors) - 10} more wrong result lines", time.time())

    def _check_workers(self, now: float) -> dict[str, Any]:
        """The typed worker events of every daemon, judged; the trial's worker figures."""
        assert self.workers is not None
        generations: set[str] = set()
        exits: dict[str, int] = {}
        started = 0
        for inc in self.controller.processes():
            who = f"slot {inc.slot} ({inc.role}, pid {inc.pid})"
            if not self.bytewax:  # alltoall.py's exit codes (3: another generation's data; 4: shared fate)
                self.checker.worker_exits(who, inc.events, now)
            expected = Epoch(int(inc.epoch)) if self.fixed and inc.role == MEMBER else None
            self.checker.worker_epoch(who, expected, inc.events, now)
            if inc.code is not None and not inc.killed and not inc.stopping:
                ends = [event for event in inc.events if isinstance(event, WorkerExited)]
                if inc.code == ExitCode.WORKER_FAILED and ends and ends[-1].pid in self.killed_workers:
                    # A ``worker`` fault killed this daemon's worker: its exit 70 is expected, with a typed
                    # worker_exited showing the kill (exit -9).
                    if ends[-1].exit != -signal.SIGKILL:
                        why = f"{who} exited 70 after its worker was killed, whose exit was {ends[-1].exit}, not -9"
                        self.checker.flag("worker-failed", why, now)
                elif not self.bytewax:
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
            for duplicate in self.seconds():
                if duplicate.slot == slot and duplicate.role == DUPLICATE_START:
                    self.kill_second(duplicate)
            incarnation = self.current(slot)
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
            incarnation = self.current(slot)
            pid = None if incarnation is None else self.worker_pid(incarnation)
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
        paused = [inc for inc in map(self.current, fault.slots) if inc is not None and inc.running]
        workers: dict[int, int] = {}  # daemon pid -> its worker's pid, stopped with it
        unknown: list[int] = []
        for incarnation in paused:
            worker = self.worker_pid(incarnation) if self.workers is not None else None
            incarnation.process.send_signal(signal.SIGSTOP)
            if worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGSTOP)
                    workers[incarnation.pid] = worker
            elif self.workers is not None:
                unknown.append(incarnation.slot)
        await trio.sleep(fault.duration)
        for incarnation in paused:
            worker = workers.get(incarnation.pid)
            if worker is not None:
                found = _stat(worker)
                if found is not None and found[1] == incarnation.pid:  # still the daemon's child (no reused pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGCONT)
            if incarnation.running:
                incarnation.process.send_signal(signal.SIGCONT)
        applied.ended = time.time()
        applied.note = f"paused pids {[incarnation.pid for incarnation in paused]}"
        if self.workers is not None:
            applied.note += f" with worker pids {sorted(workers.values())}"
            if unknown:
                applied.note += f"; skipped the workers of slots {unknown}: no live worker known (daemon alone)"

    async def _until_exit_or_listening(self, incarnation: Incarnation, *, exit_only: bool) -> None:
        """Poll a second process until it exits (noting whether it got the port meanwhile), or with ``exit_only``
        false until it listens."""
        while incarnation.running:
            self.note_bound(incarnation)
            if not exit_only and incarnation in self.bound:
                return
            await trio.sleep(EXIT_POLL)

    async def _duplicate(self, fault: Fault, applied: Applied) -> None:
        """A second start of a live slot with the slot's epoch; the fault lasts until that process has exited."""
        (slot,) = fault.slots
        incarnation = self.current(slot)
        if incarnation is None or not incarnation.running:
            applied.note = "the slot was between processes"
        else:
            duplicate = await self.controller.spawn(slot, incarnation.epoch, DUPLICATE_START)
            with trio.move_on_after(self.spec.timeouts["bind"] + DUPLICATE_GRACE):
                await self._until_exit_or_listening(duplicate, exit_only=True)
            self.kill_second(duplicate)
            code = await self.controller.wait(duplicate)
            took = "bound the port its slot's process had left" if self.was_bound(duplicate) else "never bound"
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
        self.kill_second(twin)
        code = await self.controller.wait(twin)
        await trio.to_thread.run_sync(self.hosts.remove_twin, namespace)
        applied.ended = time.time()
        took = "bound its address" if self.was_bound(twin) else "never bound"
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

    # ----- the end

    def exits(self) -> dict[int, list[int]]:
        """Every slot's exit codes before the end of the trial (its own processes: members and stale starts)."""
        return self.controller.exits()

    async def stop(self) -> list[str]:
        """Kill the second processes, then stop the slots' processes as the controller does (SIGTERM, SIGKILL after
        a while); why it was unclean."""
        for second in self.seconds():
            if second.running:
                self.kill_second(second)
        running = [incarnation for incarnation in self.members() if incarnation.running]
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
                nursery.start_soon(self.monitor)
                if self.workers is not None:
                    nursery.start_soon(self.watch_workers)
                formed, problems = await self.wait_converged(started, started + spec.bound)
                if formed is None:
                    why = f"no ready mesh within B = {spec.bound:.1f}s: {problems}"
                    self.checker.flag("formation", why, time.time())
                else:
                    record["formed_in"] = round(max(s.state_since for s in formed) - started, 3)
                    origin = time.time()
                    await self.inject(origin)
                    t0 = self.t0 = max([origin, *(applied.ended or origin for applied in self.applied)])
                    record.update(origin=origin, t0=round(t0 - origin, 3))
                    recovered, problems = await self.wait_converged(t0, t0 + spec.bound)
                    if recovered is None:
                        self.checker.flag("liveness", f"not ready within B = {spec.bound:.1f}s: {problems}", t0)
                    else:
                        ready_at = max(status.state_since for status in recovered)
                        record.update(converged=True, recovery=round(max(0.0, ready_at - t0), 3))
                        if ready_at - t0 > spec.bound:
                            self.checker.flag("liveness", f"ready {ready_at - t0:.2f}s after t0, beyond B", ready_at)
                        record["epoch"] = recovered[0].to_json()["epoch"]
                        held = await self.hold(recovered)
                        if held:
                            self.checker.flag("unstable", f"the recovered mesh did not hold: {held}", time.time())
                        if self.workers is not None:
                            await self.final_workers()
                        if self.bytewax:
                            await self.bytewax_progress(t0, record)
                    record["faults"] = [applied.to_json(origin) for applied in self.applied]
                    record["not_applied"] = [f.to_json() for f in spec.faults[len(self.applied) :]]
                notes = await self.stop()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.controller.stop()  # however the trial ended (done already when it ended well)
                with contextlib.suppress(NetError):
                    await trio.to_thread.run_sync(self.hosts.heal)  # no partition outlives the trial
                if self.workers is not None:
                    await self.end_workers()
        for note in notes:
            self.checker.flag("stop", note, time.time())
        if self.controller.failure is not None:
            self.checker.flag("controller", self.controller.failure, time.time())
        self._check_processes()
        if self.workers is not None:
            record["workers"] = self._check_workers(time.time())
        if self.bytewax:
            self._check_results(record)
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
        seconds = [inc for inc in self.seconds() if inc.role == DUPLICATE_START and inc.code is not None]
        return members + sum(inc.code != ExitCode.FENCED for inc in seconds if self.was_bound(inc))

    def _epoch(self, incarnation: Incarnation, fences: list[Fenced]) -> Epoch | None:
        """The epoch a process ran in at its end, as far as the runner knows."""
        if fences:
            return fences[-1].epoch
        if incarnation in self.last_status:
            return self.last_status[incarnation].epoch
        if incarnation.snapshot is not None:
            return incarnation.snapshot.epoch
        return Epoch(incarnation.epoch) if isinstance(incarnation.epoch, int) else None

    def _check_processes(self) -> None:
        now = time.time()
        stale_epochs = {Epoch(int(inc.epoch)) for inc in self.members() if inc.role == STALE_START}
        for inc in self.controller.processes():
            code = inc.code if inc.code is not None else inc.process.poll()
            if code is None:  # cannot be: every process was stopped or killed and waited for
                self.checker.flag("stop", f"slot {inc.slot} {inc.role} pid {inc.pid} outlived the trial", now)
                continue
            if inc.role == DUPLICATE_START and not self.was_bound(inc):
                if not inc.killed and not inc.stopping:
                    lived = (inc.exited or now) - inc.spawned
                    self.checker.duplicate_exited(inc.slot, code, lived, self.spec.timeouts["bind"], now)
                continue
            if inc.role == STALE_START:
                self.checker.stale_behaved(inc.slot, int(inc.epoch), inc.events, now)
            if not inc.stopping:
                fences = [event for event in inc.events if isinstance(event, Fenced)]
                status = self.last_status.get(inc, inc.snapshot)
                who = f"slot {inc.slot} ({inc.role})"
                # Worker mode: a daemon whose worker failed exits 70 (a death for the controller); the worker checks
                # judge whether that failure was allowed (shared fate) or a violation.
                allowed = (ExitCode.WORKER_FAILED,) if self.workers is not None else ()
                epoch = self._epoch(inc, fences)
                self.checker.exited(who, code, inc.killed, fences, status, epoch, now, also_allowed=allowed)
                self.checker.fenced_by_stale(fences, stale_epochs, now)
        hit = {
            s for applied in self.applied if applied.fault.kind in (KILL, STALE, WORKER) for s in applied.fault.slots
        }
        survivors = [slot for slot in range(self.spec.size) if slot not in hit]
        if not any(applied.fault.kind == TWIN for applied in self.applied):
            # While a twin lives, a slot has two live processes (beyond A1): each may fence the other's generation
            # any number of times. Only the bound after the last fault applies then.
            self.checker.exit_bound(self.exits(), survivors, self.deaths(), now)
        if self.t0 is not None:
            t0 = self.t0
            late = [
                inc
                for inc in self.members()
                if inc.code == ExitCode.FENCED and not inc.stopping and (inc.exited or 0) > t0
            ]
            self.checker.exits_after_last_fault(
                {slot: sum(inc.slot == slot for inc in late) for slot in range(self.spec.size)}, now
            )


def _spawned(incarnation: Incarnation) -> float:
    return incarnation.spawned
