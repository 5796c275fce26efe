"""Worker mode of the chaos runner (``--workers``): every daemon runs ``examples/alltoall.py`` as its worker
(``meshd run --exec``), and the trial follows every worker through the daemons' typed events and through /proc.

What is followed, per trial (``WorkerWatch``):
- every worker the daemons started: the typed ``worker_started``/``worker_exited`` events of each daemon's admin
  watch (pid, epoch, exit code), the ``worker`` object of every polled status, and the kernel's own list of
  processes (/proc: an ``alltoall.py`` whose MESHD_CLUSTER and MESHD_PEERS are this trial's, so a concurrent run's
  workers are never taken for ours), which also finds a worker whose daemon was killed before its watch saw the
  start;
- after every daemon exit, whether each of its workers is gone within ``stop_grace`` + 1 s (a killed daemon's
  worker dies by PR_SET_PDEATHSIG; a fenced or stopped daemon reaps its worker, and publishes its typed
  ``worker_exited``, before it exits).

No fact comes from a log line: what a worker did is its typed exit code (3 for a block from another generation),
where it runs is the kernel's (/proc).

The judgement is ``tools.chaos.checks`` (``TrialChecker.worker_*``), into the trial's one list of violations.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.cluster.controller import Incarnation
from meshd.core.status import Status, WorkerExited, WorkerStarted

ROOT = Path(__file__).resolve().parent.parent.parent
ALLTOALL = ROOT / "examples" / "alltoall.py"
# alltoall.py's --every: it prints a progress line every EVERY rounds (into its daemon's log; never read here).
EVERY = 50
# How long past ``stop_grace`` a worker may outlive its daemon (the kernel's SIGKILL, a reap) before it is a violation.
OUTLIVE_SLACK = 1.0
# The default ``worker.stop_grace`` (meshd.config.WorkerConfig); the chaos config does not change it.
STOP_GRACE = 2.0
# How often the watch looks at /proc and at exited daemons.
WATCH_INTERVAL = 0.1


# The kinds of worker (``--worker``): the all-to-all example, or the bytewax job (examples/bytewax/launch.py, which
# execs ``python -m bytewax.run``).
ALLTOALL_KIND, BYTEWAX_KIND = "alltoall", "bytewax"
WORKER_KINDS = (ALLTOALL_KIND, BYTEWAX_KIND)


def worker_command(kind: str = ALLTOALL_KIND) -> list[str]:
    """Every daemon's worker: the all-to-all example, or the continuous bytewax flow."""
    if kind == BYTEWAX_KIND:
        from tools.chaos.results import launch_command

        return launch_command()
    return [sys.executable, str(ALLTOALL), "--every", str(EVERY)]


def exec_args(kind: str = ALLTOALL_KIND) -> tuple[str, ...]:
    """What the controller appends to every daemon's command line (``--exec`` takes the rest of it: last)."""
    return ("--exec", "--", *worker_command(kind))


def markers(kind: str) -> tuple[bytes, ...]:
    """An argument that names a worker process of this kind in /proc/PID/cmdline (launch.py before its exec,
    ``bytewax.run`` after)."""
    if kind == BYTEWAX_KIND:
        from tools.chaos.results import LAUNCH

        return (str(LAUNCH).encode(), b"bytewax.run")
    return (str(ALLTOALL).encode(),)


@dataclass(frozen=True)
class Seen:
    """A live worker process, as /proc shows it."""

    pid: int
    start: int  # its start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart
    ppid: int
    index: int | None  # MESHD_INDEX
    epoch: str | None  # MESHD_EPOCH


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) still exists and is not a zombie."""
    found = proc_stat(pid)
    if found is None or found[0] in ("Z", "X"):
        return False
    return start is None or found[2] == start


def scan(cluster: str, peers: str, kind: str = ALLTOALL_KIND) -> list[Seen]:
    """The live worker processes (alltoall.py, or bytewax) of one cluster (its name and its members' addresses, as
    MESHD_* says)."""
    found = []
    scripts = markers(kind)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not any(script in argv for script in scripts):
                continue
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)
        if env.get("MESHD_CLUSTER") != cluster or env.get("MESHD_PEERS") != peers:
            continue
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        index = env.get("MESHD_INDEX", "")
        slot = int(index) if index.isdigit() else None
        found.append(Seen(pid, stat[2], stat[1], slot, env.get("MESHD_EPOCH")))
    return found


@dataclass
class Worker:
    """One worker process of the trial, from whichever source named it first."""

    pid: int
    daemon: Incarnation | None  # the daemon that started it, when known
    start: int | None = None  # /proc start time, once seen alive
    epoch: str | None = None
    sources: set[str] = field(default_factory=set)  # "event", "status", "proc"
    judged: bool = False  # its daemon's exit was followed by its end (or the violation was flagged)


class WorkerWatch:
    """The workers of one trial: who they are, which daemon started each, and whether any outlived its daemon."""

    def __init__(
        self, cluster: str, peers: Iterable[str], stop_grace: float = STOP_GRACE, kind: str = ALLTOALL_KIND
    ) -> None:
        self.cluster = cluster
        self.kind = kind
        self.peers = ",".join(peers)
        self.stop_grace = stop_grace
        self.workers: dict[int, Worker] = {}
        self.outlived: list[tuple[Worker, float]] = []  # (worker, seconds past its daemon's exit), unjudged once

    def daemon_of(self, ppid: int, daemons: Iterable[Incarnation]) -> Incarnation | None:
        return next((inc for inc in daemons if inc.pid == ppid), None)

    def _note(self, pid: int, daemon: Incarnation | None, source: str, epoch: str | None = None) -> Worker:
        worker = self.workers.get(pid)
        if worker is None or (worker.daemon is not None and daemon is not None and worker.daemon is not daemon):
            worker = self.workers[pid] = Worker(pid, daemon)  # new, or a reused pid under another daemon
        if worker.daemon is None:
            worker.daemon = daemon
        if worker.start is None:
            stat = proc_stat(pid)
            if stat is not None and stat[0] not in ("Z", "X") and (daemon is None or stat[1] == daemon.pid):
                worker.start = stat[2]
        worker.epoch = worker.epoch or epoch
        worker.sources.add(source)
        return worker

    def look(self, daemons: list[Incarnation], statuses: dict[Incarnation, Status]) -> list[Seen]:
        """One look (blocking: /proc): the events and statuses seen so far, and the processes alive now."""
        for daemon in daemons:
            for event in list(daemon.events):
                if isinstance(event, WorkerStarted) and event.pid is not None:
                    self._note(event.pid, daemon, "event", str(event.epoch))
        for daemon, status in list(statuses.items()):
            if status.worker.pid is not None:
                epoch = None if status.worker.epoch is None else str(status.worker.epoch)
                self._note(status.worker.pid, daemon, "status", epoch)
        seen = scan(self.cluster, self.peers, self.kind)
        for process in seen:
            self._note(process.pid, self.daemon_of(process.ppid, daemons), "proc", process.epoch)
        return seen

    def judge_exits(self, now: float) -> list[Worker]:
        """Workers whose daemon exited more than ``stop_grace`` + 1 s ago and that are still alive (each returned
        once); a worker found gone is judged fine."""
        late = []
        for worker in self.workers.values():
            daemon = worker.daemon
            if worker.judged or daemon is None or daemon.exited is None:
                continue
            if not alive(worker.pid, worker.start):
                worker.judged = True
            elif now > daemon.exited + self.stop_grace + OUTLIVE_SLACK:
                worker.judged = True
                late.append(worker)
        return late

    def kill_leftovers(self) -> list[Seen]:
        """SIGKILL every worker of this trial still alive (after the violation was noted): none outlives the run."""
        left = scan(self.cluster, self.peers, self.kind)
        for process in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        return left

    # ----- facts for the checks and the report

    def started_events(self, daemons: Iterable[Incarnation]) -> Iterator[tuple[Incarnation, WorkerStarted]]:
        for daemon in daemons:
            for event in daemon.events:
                if isinstance(event, WorkerStarted):
                    yield daemon, event

    def exited_events(self, daemons: Iterable[Incarnation]) -> Iterator[tuple[Incarnation, WorkerExited]]:
        for daemon in daemons:
            for event in daemon.events:
                if isinstance(event, WorkerExited):
                    yield daemon, event


def summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker-mode figures of a campaign (trials run with --workers)."""
    mine = [trial["workers"] for trial in trials if trial.get("workers")]
    exits: dict[str, int] = {}
    for record in mine:
        for code, count in record["exits"].items():
            exits[code] = exits.get(code, 0) + count
    kinds = {"worker-mismatch", "worker-failed", "worker-outlived", "worker-final", "worker-epoch"}
    return {
        "trials": len(mine),
        "started": sum(record["started"] for record in mine),
        "generations": sum(record["generations"] for record in mine),
        "without_exit_event": sum(record["without_exit_event"] for record in mine),
        "exits": dict(sorted(exits.items())),
        "violations": sum(
            1 for trial in trials if trial.get("workers") for v in trial["violations"] if v["kind"] in kinds
        ),
    }
