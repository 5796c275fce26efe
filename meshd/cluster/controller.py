"""N daemons kept running under the controller's rule, each incarnation followed through its admin websocket.

Supervision, stated where it is implemented: every slot has a restart loop; a daemon that exits is restarted after
``restart_delay`` with the epoch the policy gives (R6), except that a daemon that exits 1 or 2 (a port that stays
busy, a bad configuration) cannot be helped by a restart: the controller records why and stops the cluster. Every
process it starts dies with it (PR_SET_PDEATHSIG), however the controller ends.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path

import trio
from attrs import define, field

from meshd.admin import client as admin
from meshd.admin.messages import Snapshot
from meshd.cluster.policy import EpochController
from meshd.cluster.spawn import log_tail, run_argv, start
from meshd.core.address import Address
from meshd.core.status import MeshEvent, Status, WorkerExited
from meshd.errors import ConfigError, ExitCode
from meshd.secret import read_token

# Pause before restarting an exited daemon, as a process supervisor would (keeps a crash loop from spinning).
RESTART_DELAY = 0.2
# How often a process is checked for having exited (a waitpid that does not block).
EXIT_POLL = 0.01
# Pause between attempts to open a new process's admin watch (it answers once it has bound its ports).
WATCH_RETRY = 0.02
# Bound on one status request; a stopped (SIGSTOP) daemon does not answer.
STATUS_TIMEOUT = 1.0
# How long stopping daemons get after SIGTERM before they are killed.
STOP_TIMEOUT = 5.0
# Exit codes a restart cannot cure: the controller stops the cluster with the daemon's own message.
UNRECOVERABLE = (ExitCode.FAILURE, ExitCode.USAGE)
# How much of such a daemon's log the failure quotes.
FAILURE_LOG_LINES = 8


@define(eq=False)
class Incarnation:
    """One start of a daemon in a slot, and what its admin watch told about it."""

    slot: int
    epoch: int | str  # what --epoch said
    process: subprocess.Popen[bytes]
    log: Path
    spawned: float  # wall clock just before the start
    role: str = "member"  # the slot's process; tools start others (a stale start, a duplicate, a twin)
    code: int | None = None
    exited: float | None = None  # wall clock
    killed: bool = False  # the controller sent SIGKILL (a fault, or the end)
    stopping: bool = False  # the controller sent SIGTERM (the end)
    snapshot: Status | None = None  # its own status, the first its watch got (so it bound its ports)
    events: list[MeshEvent] = field(factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def incarnation(self) -> int | None:
        return None if self.snapshot is None else self.snapshot.incarnation


@define
class SlotRecord:
    index: int
    admin: Address
    history: list[Incarnation] = field(factory=list)
    exits: list[int] = field(factory=list)
    done: bool = False  # its daemon stopped because its worker finished its job (exit 0): not restarted

    @property
    def current(self) -> Incarnation | None:
        members = [incarnation for incarnation in self.history if incarnation.role == "member"]
        return members[-1] if members else None


class Controller:
    """Keeps one daemon per slot running; subclasses may change how a daemon is started (``command``) and what an
    exit means before the restart (``exited``)."""

    def __init__(
        self,
        *,
        config: Path,
        admins: Sequence[Address],
        policy: EpochController,
        workdir: Path,
        restart_delay: float = RESTART_DELAY,
        extra_args: Sequence[str] = (),
        follow: bool = True,
        name: str | None = None,
    ) -> None:
        self.config = config
        self.name = name  # the cluster name in the config: a daemon answering under another name is not ours
        self.policy = policy
        self.workdir = workdir
        self.restart_delay = restart_delay
        self.extra_args = tuple(extra_args)
        self.follow_events = follow
        self.slots = [SlotRecord(index, address) for index, address in enumerate(admins)]
        self.admin_token = admin_token_of(config)  # what every admin call presents
        self.stopping = False
        self.failure: str | None = None  # why the cluster cannot run (a daemon exited 1 or 2)
        self.failure_code: int | None = None  # that daemon's exit code
        self.failed = trio.Event()
        self.job_done = trio.Event()  # every slot's worker finished its job (each daemon then exited 0)
        self._nursery: trio.Nursery | None = None
        # One long-lived thread forks every daemon: PR_SET_PDEATHSIG fires when the forking thread ends, so it must
        # live as long as the controller (trio's worker threads come and go).
        self._forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshd-cluster-spawn")
        self._serial = 0
        self._launched: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.slots)

    # ----- starting and following daemons

    def command(self, slot: int, epoch: int | str, role: str) -> list[str]:
        """The command line of a daemon (a tool running daemons in network namespaces wraps it)."""
        return run_argv(self.config, slot, epoch, self.slots[slot].admin, ("--log-format", "json", *self.extra_args))

    async def spawn(self, slot: int, epoch: int | str, role: str = "member") -> Incarnation:
        """Start a daemon for ``slot``, record it, and follow its events."""
        self._serial += 1
        log = self.workdir / f"{self._serial:03d}-d{slot}-{role}.log"
        argv = self.command(slot, epoch, role)
        spawned = time.time()
        # Shielded: a process started while the controller is cancelled must still be recorded (and stopped).
        with trio.CancelScope(shield=True):
            process = await trio.to_thread.run_sync(lambda: self._forker.submit(start, argv, log).result())
        incarnation = Incarnation(slot, epoch, process, log, spawned, role)
        self.slots[slot].history.append(incarnation)
        if self.follow_events and self._nursery is not None:
            self._nursery.start_soon(self.follow, incarnation)
        return incarnation

    async def follow(self, incarnation: Incarnation) -> None:
        """Collect the incarnation's events from its admin watch, opened as soon as it answers, until it ends.

        A snapshot from an older process still answering on the slot's admin port is told apart by its start time,
        one of another cluster by its name and index.
        """
        address = self.slots[incarnation.slot].admin
        while incarnation.running and incarnation.snapshot is None:
            with contextlib.suppress(*admin.CLIENT_ERRORS):
                async with aclosing(admin.events(address, token=self.admin_token)) as messages:
                    async for message in messages:
                        if not isinstance(message, Snapshot):
                            incarnation.events.append(message)
                            continue
                        if not incarnation.running or not self.is_ours(incarnation, message.status):
                            break
                        incarnation.snapshot = message.status
            await trio.sleep(WATCH_RETRY)

    def is_ours(self, incarnation: Incarnation, status: Status) -> bool:
        """Whether ``status`` can come from ``incarnation``: the slot's index in our cluster, started after the spawn,
        and, once its watch told which incarnation it is, that one."""
        return (
            status.index == incarnation.slot
            and (self.name is None or status.cluster == self.name)
            and status.started >= incarnation.spawned
            and incarnation.incarnation in (None, status.incarnation)
        )

    async def wait(self, incarnation: Incarnation) -> int:
        while (code := incarnation.process.poll()) is None:
            await trio.sleep(EXIT_POLL)
        if incarnation.code is None:
            incarnation.code, incarnation.exited = code, time.time()
        return code

    def kill(self, incarnation: Incarnation) -> None:
        """kill -9, as a fault."""
        if incarnation.running:
            incarnation.killed = True
            with contextlib.suppress(ProcessLookupError):
                incarnation.process.send_signal(signal.SIGKILL)

    # ----- the restart loops

    async def run(
        self, launch: Iterable[int] | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the restart loops of the ``launch`` slots (default every slot; ``launch`` starts others later) until
        cancelled; the daemons are stopped on the way out. Started once each of those slots has its first process."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for slot in range(self.size) if launch is None else launch:
                    self._launched.add(slot)
                    await nursery.start(self.keep_running, slot)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()
            self._forker.shutdown(wait=False)

    def launch(self, slot: int) -> None:
        """Start the slot's restart loop now (once per slot), in the nursery of ``run``."""
        assert self._nursery is not None, "launch() runs inside run()"
        if slot in self._launched:
            raise ValueError(f"slot {slot} was launched already")
        self._launched.add(slot)
        self._nursery.start_soon(self.keep_running, slot)

    def start_epoch(self, slot: int) -> tuple[int | str, str]:
        """The epoch and role of a slot's next start (a tool may start a slot stale on purpose)."""
        return self.policy.epoch(), "member"

    async def keep_running(self, slot: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The orchestrator of one slot: start its daemon, restart it after every exit with the policy's epoch.
        Started once the first process runs."""
        record = self.slots[slot]
        started = False
        while not self.stopping:
            epoch, role = self.start_epoch(slot)
            incarnation = await self.spawn(slot, epoch, role)
            if not started:
                task_status.started()
                started = True
            code = await self.wait(incarnation)
            if self.stopping:
                return
            record.exits.append(code)
            await self.exited(incarnation, code)
            if code in UNRECOVERABLE:
                self.fail(f"daemon {slot} exited {code}:\n{log_tail(incarnation.log, FAILURE_LOG_LINES)}", code)
                return
            if code == ExitCode.OK and _job_done(incarnation):
                record.done = True
                if all(other.done for other in self.slots):
                    self.job_done.set()
                return
            death = self.policy.exited(incarnation.epoch, code)
            await self.restarting(incarnation, code, death)
            await trio.sleep(self.restart_delay)
        if not started:  # stopped before its first start
            task_status.started()

    async def exited(self, incarnation: Incarnation, code: int) -> None:
        """Hook: a slot's daemon exited (before the policy and the restart)."""

    async def restarting(self, incarnation: Incarnation, code: int, death: bool) -> None:
        """Hook: the policy accounted for the exit (``death``: not a fence; the next epoch is the policy's), and the
        slot restarts after ``restart_delay``. Not called for an exit that stops the cluster."""

    def fail(self, why: str, code: int = ExitCode.FAILURE) -> None:
        """Stop the cluster: record the first reason, and set ``failed``."""
        if self.failure is None:
            self.failure = why
            self.failure_code = int(code)
            self.failed.set()

    # ----- observation

    async def status(self, slot: int, timeout: float = STATUS_TIMEOUT) -> Status | None:
        """The slot's status, or None when nothing answers in time (or the answer is not meshd's). It may come from
        a process the controller did not start there (``is_ours`` tells)."""
        with contextlib.suppress(*admin.CLIENT_ERRORS):
            return await admin.status(self.slots[slot].admin, timeout=timeout, token=self.admin_token)
        return None

    async def statuses(self, timeout: float = STATUS_TIMEOUT) -> list[Status | None]:
        """Every slot's status, asked all at once."""
        found: list[Status | None] = [None] * self.size

        async def ask(slot: int) -> None:
            found[slot] = await self.status(slot, timeout)

        async with trio.open_nursery() as nursery:
            for slot in range(self.size):
                nursery.start_soon(ask, slot)
        return found

    def incarnations(self) -> list[int | None]:
        """The incarnation each slot's current daemon reported (None until its watch got its snapshot)."""
        return [None if slot.current is None else slot.current.incarnation for slot in self.slots]

    def exits(self) -> dict[int, list[int]]:
        return {slot.index: list(slot.exits) for slot in self.slots}

    def processes(self) -> list[Incarnation]:
        return [incarnation for slot in self.slots for incarnation in slot.history]

    # ----- the end

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every running daemon (stopped ones are continued first), then SIGKILL what is left."""
        self.stopping = True
        running = [incarnation for incarnation in self.processes() if incarnation.running]
        for incarnation in running:
            incarnation.stopping = True
            with contextlib.suppress(ProcessLookupError):
                incarnation.process.send_signal(signal.SIGCONT)
                incarnation.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            for incarnation in running:
                await self.wait(incarnation)
        for incarnation in running:
            if incarnation.running:
                self.kill(incarnation)
                await self.wait(incarnation)


def admin_token_of(config: Path) -> str | None:
    """The token the daemons of ``config`` want from admin clients (its ``admin.token_file``), or None."""
    from meshd import config as configuration

    try:
        token_file = configuration.load(config).admin.token_file
        return None if token_file is None else read_token(Path(token_file))
    except ConfigError:
        return None  # the daemons say what is wrong with the config as they start, and the cluster stops then


def _job_done(incarnation: Incarnation) -> bool:
    """Whether the daemon's last word on its worker was a finished job (a ``worker_exited`` with exit 0)."""
    ends = [event for event in incarnation.events if isinstance(event, WorkerExited)]
    return bool(ends) and ends[-1].exit == 0
