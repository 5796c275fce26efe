"""The chaos runner's view of the one safety checker (``meshd.safety``), as ``meshd.sim.checker`` is the simulation's.

The runner polls every slot's status (typed, through the admin websocket) and hands each poll to
``meshd.safety.SafetyChecker`` as one observation of the live processes: S1, S3, D, S2 and S4 as the design states
them (R4 is not checked: polls 0.2 s apart cannot time a 10 ms lag). On top, what only a runner of real processes
can judge, flagged into the same list of violations:
- S5 for an exit 75: the process's typed ``Fenced`` event proves it by its fields (``newer`` above ``epoch``, or
  ``cause`` ``member_replaced``); when its watch never saw the event, the checker's knowledge of the newest epoch
  any process held decides (``SafetyChecker.exited``); an exit code other than 0, 1 or 75 the runner did not cause;
- a stale-epoch start that links to anyone or becomes ready, or whose epoch fences anyone; a duplicate start that
  does not exit 1 after ``timeouts.bind``;
- the exit bound (docs/design.md §5): a slot that was never killed exits 75 at most once per death in the trial, and
  no slot exits 75 more than once after the last fault.

In worker mode (``--workers``: every daemon runs ``examples/alltoall.py``), also the workers' promises:
- no worker exchanged data with another generation: no typed ``worker_exited`` says exit 3 (a block or header that
  is not the one its generation's peer sends); a worker that crashed (exit 1, or 2: no mesh) is flagged too, and so
  is a daemon's exit 70 (its worker failed) unless its typed ``worker_exited`` says its worker ended by shared fate
  (exit 4: a peer's socket ended and no SIGTERM followed); an exit 70 with no ``worker_exited`` event at all is a
  violation too (the daemon publishes it, and drains its watchers, before it exits). No log line is read;
- a worker started in the daemon's own generation (with fixed epochs, the epoch the controller gave it);
- after the last fault, every slot runs exactly one worker, running in its slot's epoch, the same on every slot;
- no worker outlived its daemon by more than ``stop_grace`` + 1 s, and none outlived the trial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from meshd.core.status import (
    Fenced,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerState,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
)
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from meshd.safety import Observation, SafetyChecker, Violation

ALLOWED_EXITS = (ExitCode.OK, ExitCode.FAILURE, ExitCode.FENCED)
MEMBER_REPLACED = "member_replaced"
# examples/alltoall.py's exit codes: 3 a block or header that is not its generation's; 1 a crash, 2 no mesh; 4 a
# peer's socket ended mid-run and no SIGTERM followed within its grace (shared fate: allowed, and counted).
WORKER_CORRUPT = 3
WORKER_CRASHED = (1, 2)
WORKER_SHARED_FATE = 4


def fence_is_proven(fence: Fenced) -> bool:
    """Whether a fenced event proves its exit by its own fields: it names an epoch newer than the process's own, or
    its generation can no longer be complete (a live process of some slot is not the member it holds there)."""
    return fence.cause == MEMBER_REPLACED or (fence.newer is not None and fence.newer > fence.epoch)


def observation(status: Status, born: float) -> Observation:
    """A polled status as the safety checker's observation: ``born`` when the runner spawned the process (its own
    clock), each link that is down since the time its row says (the daemons run on the runner's host)."""
    down = {peer.index: peer.since for peer in status.peers if peer.state is PeerState.DOWN}
    return Observation(status, born, down)


def violation_json(violation: Violation) -> dict[str, object]:
    return attrs.asdict(violation)


class TrialChecker:
    """One trial's violations: the safety checker's, and the runner's own checks flagged into its list."""

    def __init__(self, *, duplicates: bool = False) -> None:
        self.safety = SafetyChecker(duplicates=duplicates)

    @property
    def violations(self) -> list[Violation]:
        return self.safety.violations

    def flag(self, kind: str, detail: str, at: float) -> None:
        self.safety.violate(kind, detail, at)

    def observe(self, now: float, observations: Sequence[Observation]) -> None:
        """One poll of the live processes (S1, S3, D, S2, S4)."""
        self.safety.observe(now, observations)

    def exited(
        self,
        who: str,
        code: int,
        caused_by_runner: bool,
        fences: Sequence[Fenced],
        last_status: Status | None,
        epoch: Epoch | None,
        at: float,
        also_allowed: Sequence[int] = (),
    ) -> None:
        """One exit: a code the design allows (or one of ``also_allowed``), and a proof before every 75 (S5).
        ``last_status`` is the process's status as last seen (None: never), ``epoch`` the one it ran in when
        known."""
        if caused_by_runner:
            return
        if code not in ALLOWED_EXITS and code not in also_allowed:
            self.flag("exit-code", f"{who} exited {code}", at)
        if code != ExitCode.FENCED:
            return
        if fences:
            if not any(fence_is_proven(fence) for fence in fences):
                self.flag("S5", f"{who} exited 75, fenced with no newer epoch: {fences[-1].reason}", at)
            return
        if last_status is not None:  # its watch missed the event: whatever epoch any process held decides
            self.safety.exited(at, attrs.evolve(last_status, epoch=epoch or last_status.epoch), code, None)
        elif epoch is None or self.safety.newest is None or not self.safety.newest > epoch:
            self.flag("S5", f"{who} exited 75 in {epoch} with no newer epoch anywhere", at)

    def stale_behaved(self, slot: int, epoch: int, events: Iterable[MeshEvent], at: float) -> None:
        """A process started with a stale epoch must never link to anyone nor become ready."""
        for event in events:
            if isinstance(event, LinkUp) or (isinstance(event, StateChanged) and event.state is MeshState.READY):
                self.flag("stale-admitted", f"slot {slot} started with stale epoch {epoch} reported {event}", at)

    def fenced_by_stale(self, fences: Iterable[Fenced], stale_epochs: set[Epoch], at: float) -> None:
        """No process may exit because of a stale-epoch start: no fence names a stale epoch."""
        for fence in fences:
            if fence.newer is not None and fence.newer in stale_epochs:
                self.flag("stale-fenced", f"a process was fenced by a stale epoch: {fence.reason}", at)

    def duplicate_exited(self, slot: int, code: int, lived: float, bind_timeout: float, at: float) -> None:
        """A second process for a live slot must fail to bind: exit 1, and only after ``timeouts.bind``."""
        if code != ExitCode.FAILURE or lived < bind_timeout:
            self.flag("duplicate", f"duplicate of slot {slot} exited {code} after {lived:.2f}s", at)

    def exits_after_last_fault(self, fenced_after: Mapping[int, int], at: float) -> None:
        """§5: once the faults stop, a slot exits 75 at most once (its process sealed, or running an old epoch, at
        t0 fences once; its successor is born into the recovery and never exits)."""
        for slot, count in sorted(fenced_after.items()):
            if count > 1:
                self.flag("exits-after-t0", f"slot {slot} exited 75 {count} times after the last fault", at)

    def exit_bound(self, exits: Mapping[int, list[int]], survivors: Iterable[int], deaths: int, at: float) -> None:
        """§5 exits per process: a slot never killed exits 75 at most once per death in the trial."""
        for slot in survivors:
            fenced = exits.get(slot, []).count(ExitCode.FENCED)
            if fenced > deaths:
                self.flag("exit-bound", f"surviving slot {slot} exited 75 {fenced} times for {deaths} deaths", at)

    # ----- worker mode

    def worker_exits(self, who: str, events: Iterable[MeshEvent], at: float) -> None:
        """A daemon's typed worker events: no worker got a block from another generation (exit 3), none crashed."""
        for event in events:
            if not isinstance(event, WorkerExited):
                continue
            if event.exit == WORKER_CORRUPT:
                self.flag(
                    "worker-mismatch",
                    f"{who}: worker pid {event.pid} of epoch {event.epoch} exited 3 (data from another generation, "
                    f"or corrupt): {event.reason}",
                    at,
                )
            elif event.exit in WORKER_CRASHED:
                self.flag("worker-failed", f"{who}: worker pid {event.pid} exited {event.exit}: {event.reason}", at)

    def worker_death(self, who: str, code: int, events: Sequence[MeshEvent], at: float) -> None:
        """A daemon exit 70 (its worker failed) is allowed only when its typed ``worker_exited`` says its worker ended
        by shared fate (exit 4). The daemon publishes that event and drains its watchers before it exits, so an exit
        70 without one is a violation: nothing typed says why its worker failed."""
        if code != ExitCode.WORKER_FAILED:
            return
        ends = [event for event in events if isinstance(event, WorkerExited)]
        if not ends:
            self.flag("worker-failed", f"{who} exited 70: no worker_exited event", at)
        elif ends[-1].exit != WORKER_SHARED_FATE:
            self.flag("worker-failed", f"{who} exited 70: {ends[-1].reason}", at)

    def worker_epoch(self, who: str, expected: Epoch | None, events: Iterable[MeshEvent], at: float) -> None:
        """A worker starts in its daemon's generation: with fixed epochs, the one its daemon was started with."""
        started = [event for event in events if isinstance(event, WorkerStarted)]
        if len(started) > 1:
            self.flag("worker-final", f"{who} started {len(started)} workers (one per daemon, ever)", at)
        for event in started:
            if expected is not None and event.epoch != expected:
                self.flag("worker-epoch", f"{who}: worker pid {event.pid} started in {event.epoch}, not {expected}", at)

    def worker_outlived(self, who: str, pid: int, late: float, at: float) -> None:
        self.flag("worker-outlived", f"{who}: worker pid {pid} still alive {late:.1f}s after its daemon exited", at)

    def workers_final(self, problems: Sequence[str], at: float) -> None:
        if problems:
            self.flag("worker-final", f"after the last fault: {'; '.join(problems)}", at)


def final_worker_problems(statuses: Sequence[Status | None], live: Mapping[int, Sequence[int]]) -> list[str]:
    """Why the slots do not each run exactly one worker of the final generation: every status (one per slot, by
    index) shows its worker running in the slot's epoch, one epoch on every slot, and the live worker processes of
    each slot (/proc: slot -> pids) are exactly that one. Empty when they do."""
    problems = []
    epochs = {status.epoch for status in statuses if status is not None}
    if len(epochs) > 1:
        problems.append(f"slots in epochs {sorted(map(str, epochs))}")
    for slot, status in enumerate(statuses):
        if status is None:
            problems.append(f"slot {slot} does not answer")
            continue
        worker = status.worker
        if worker.state is not WorkerState.RUNNING:
            problems.append(f"slot {slot}'s worker is {worker.state or 'not started'}")
        elif worker.epoch != status.epoch:
            problems.append(f"slot {slot}'s worker runs in epoch {worker.epoch}, the slot in {status.epoch}")
        pids = list(live.get(slot, ()))
        if len(pids) != 1:
            problems.append(f"slot {slot} has {len(pids)} live workers {pids}")
        elif worker.pid is not None and pids != [worker.pid]:
            problems.append(f"slot {slot}'s live worker is pid {pids[0]}, its status names pid {worker.pid}")
    return problems
