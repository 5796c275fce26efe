"""``meshd cluster``: N daemons on this host under the controller's rule, with a live table and optional chaos.

Fixed epochs follow R6 (``meshd.cluster.policy``); with ``--auto`` every daemon runs ``--epoch auto`` and is simply
restarted. It fails loudly, never in a restart loop:

- before it starts anything, it checks that every mesh and admin port it is to use is free; a port held by another
  process (another cluster's daemon is named) makes it refuse to start, with exit 1;
- a daemon that exits 1 (a port stayed busy, a crash) or 2 (a usage or configuration error, such as ``--size 1`` or
  a port over 65535) cannot be helped by a restart: the cluster stops, the daemon's own last log lines are printed
  on stderr, and the command exits with the daemon's code (1 or 2).

The daemons' logs (one file per start, ``NNN-dI-member.log``, and ``starts.jsonl``: one JSON line per start with
its slot, pid, epoch and log) stay in ``--log-dir`` (a fresh directory otherwise), printed at the start and the end.
Every daemon dies with the command, even when it is killed with -9 (PR_SET_PDEATHSIG). A process that answers on a
daemon's admin port but is not the one the command started there (another cluster's, an older one) is shown as
``foreign``, never as the cluster's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from attrs import frozen

from meshd.admin import client as admin
from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import EpochController, convergence_problems
from meshd.cluster.spawn import SHARED_KEY_FILE, write_config
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.status import PeerState, Status, WorkerState
from meshd.core.wire import Epoch
from meshd.errors import ExitCode

# How often the status table is refreshed.
REFRESH_INTERVAL = 0.5
# Bound on one status query; a daemon that does not answer in time shows as "?".
STATUS_TIMEOUT = 0.5
# The record of every start, in the log directory.
STARTS_FILE = "starts.jsonl"


@frozen
class ClusterSpec:
    size: int
    base_port: int = 7000
    admin_base_port: int = 7100
    chaos: float | None = None
    duration: float | None = None
    seed: int | None = None
    host: str = "127.0.0.1"
    auto: bool = False
    log_dir: Path | None = None
    exec: tuple[str, ...] = ()  # every daemon's worker command (``--exec``), none when empty


class LocalCluster:
    def __init__(self, spec: ClusterSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.name = f"local-{time.strftime('%H%M%S')}-{random.randrange(16**4):04x}"  # ours alone
        self.peers = [Address(spec.host, spec.base_port + index) for index in range(spec.size)]
        self.admins = [Address(spec.host, spec.admin_base_port + index) for index in range(spec.size)]
        self.config = write_config(workdir / "cluster.toml", self.name, self.peers)
        mode = EpochMode.AUTO if spec.auto else EpochMode.FIXED
        self.controller = ReportingController(
            self,
            config=self.config,
            admins=self.admins,
            policy=EpochController(mode),
            workdir=workdir,
            # Logs for people (the last flag wins over the controller's); --exec takes the rest of the line: last.
            extra_args=("--log-format", "text", *(("--exec", "--", *spec.exec) if spec.exec else ())),
            name=self.name,
        )
        self.rng = random.Random(spec.seed)
        self.statuses: list[Status | None] = [None] * spec.size
        self.fault_at: float | None = None
        self.recoveries: list[float] = []
        self.kills = 0
        self.working_epoch: Epoch | None = None

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def complain(self, text: str) -> None:
        print(f"meshd cluster: {text}", file=sys.stderr, flush=True)

    async def run(self) -> int:
        taken = await self.taken_ports()
        if taken:
            self.complain("refusing to start: ports it needs are taken\n" + "\n".join(f"  {line}" for line in taken))
            return int(ExitCode.FAILURE)
        with (
            trio.move_on_after(self.spec.duration or math.inf) as running,
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on, signals, running)
                nursery.start_soon(_cancel_when, self.controller.failed, running)
                nursery.start_soon(_cancel_when, self.controller.job_done, running)
                await nursery.start(self.controller.run)
                nursery.start_soon(self.monitor)
                if self.spec.chaos:
                    nursery.start_soon(self.chaos, self.spec.chaos)
        if self.controller.failure is not None:
            self.complain(f"the cluster cannot run: {self.controller.failure}")
            self.complain(f"stopped; the daemons' logs are in {self.workdir}")
            return int(ExitCode.USAGE if self.controller.failure_code == ExitCode.USAGE else ExitCode.FAILURE)
        if self.controller.job_done.is_set():
            self.say("the job is done: every worker exited 0 and its daemon stopped in order (exit 0)")
        self.say(self.summary())
        self.say(f"the daemons' logs are in {self.workdir}")
        return int(ExitCode.OK)

    async def taken_ports(self) -> list[str]:
        """Every mesh and admin port of the cluster that another process listens on, saying who when it is a meshd.

        Ports outside 0..65535 are left to the daemons, whose configuration error names them."""
        taken = []
        for what, addresses in (("mesh", self.peers), ("admin", self.admins)):
            for index, address in enumerate(addresses):
                if 0 <= address.port <= 65535 and _listened_on(address):
                    owner = await self.describe_owner(address) if what == "admin" else "another process"
                    taken.append(f"the {what} port {address} of daemon {index} is taken by {owner}")
        return taken

    async def describe_owner(self, address: Address) -> str:
        try:
            status = await admin.status(address, timeout=STATUS_TIMEOUT)
        except admin.CLIENT_ERRORS:
            return "another process (not a meshd that answers)"
        started = time.strftime("%H:%M:%S", time.localtime(status.started))
        return (
            f"another meshd: index {status.index} of cluster {status.cluster!r}, epoch {status.epoch}, "
            f"started {started}"
        )

    async def chaos(self, period: float) -> None:
        """kill -9 a random daemon every ``period``; with workers, half the time its worker instead."""
        while True:
            await trio.sleep(period)
            victim = self.rng.choice(self.controller.slots).current
            if victim is None or not victim.running:
                continue
            self.kills += 1
            status = self.ours(victim.slot)
            worker = None if status is None else status.worker.pid
            if self.spec.exec and worker is not None and status is not None and self.rng.random() < 0.5:
                self.say(f"chaos: kill -9 the worker of daemon {victim.slot} (pid {worker})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)
            else:
                self.say(f"chaos: kill -9 daemon {victim.slot} (pid {victim.pid})")
                self.controller.kill(victim)

    async def monitor(self) -> None:
        last_table = ""
        while True:
            self.statuses = await self.controller.statuses(STATUS_TIMEOUT)
            if self.fault_at is not None and self.converged():
                took = time.monotonic() - self.fault_at
                self.recoveries.append(took)
                self.fault_at = None
                epoch = self.statuses[0].epoch if self.statuses[0] is not None else "?"
                self.say(f"recovered: all {self.spec.size} ready at epoch {epoch}, {took:.2f}s after the fault")
            if self.spec.exec:
                self.report_work()
            table = self.table()
            if table != last_table:
                print(table, flush=True)
                last_table = table
            await trio.sleep(REFRESH_INTERVAL)

    def report_work(self) -> None:
        """Say when every slot's worker runs in one generation (the work resumed there)."""
        statuses = [self.ours(slot) for slot in range(self.spec.size)]
        workers = [status.worker for status in statuses if status is not None]
        epochs = {worker.epoch for worker in workers if worker.state is WorkerState.RUNNING}
        if len(workers) == self.spec.size and len(epochs) == 1 and all(w.state is WorkerState.RUNNING for w in workers):
            (epoch,) = epochs
            if epoch != self.working_epoch:
                self.working_epoch = epoch
                pids = ", ".join(str(worker.pid) for worker in workers)
                self.say(f"work running: {self.spec.size} workers in generation {epoch} (pids {pids})")

    def ours(self, slot: int) -> Status | None:
        """The slot's status if it comes from the daemon this command started there (else None)."""
        status = self.statuses[slot]
        current = self.controller.slots[slot].current
        if status is None or current is None or not self.controller.is_ours(current, status):
            return None
        return status

    def converged(self) -> bool:
        statuses = [self.ours(slot) for slot in range(self.spec.size)]
        epoch = None if self.spec.auto else self.controller.policy.current
        return not convergence_problems(statuses, incarnations=self.controller.incarnations(), epoch=epoch)

    def table(self) -> str:
        policy = self.controller.policy
        head = "cluster minting its own generations" if self.spec.auto else f"cluster epoch {policy.current}"
        lines = [head, "SLOT  PID      EPOCH  STATE      LINKS  STARTS  EXITS" + ("  WORKER" if self.spec.exec else "")]
        for slot in self.controller.slots:
            current = slot.current
            pid = current.pid if current is not None and current.running else "-"
            status = self.ours(slot.index)
            if status is None:
                foreign = self.statuses[slot.index] is not None
                state, epoch, links = ("foreign" if foreign else "?"), "-", "-"
            else:
                up = sum(peer.state is PeerState.UP for peer in status.peers)
                state, epoch, links = str(status.state), str(status.epoch), f"{up}/{len(status.peers)}"
            starts = sum(incarnation.role == "member" for incarnation in slot.history)
            exits = ",".join(str(code) for code in slot.exits[-4:]) or "-"
            line = f"{slot.index:<5} {pid!s:<8} {epoch:<6} {state:<10} {links:<6} {starts:<7} {exits}"
            if self.spec.exec:
                worker = None if status is None else status.worker
                shown = "-" if worker is None or worker.state is None else f"{worker.state} {worker.pid or ''}"
                line = f"{line:<52} {shown}"
            lines.append(line.rstrip())
        return "\n".join(lines)

    def summary(self) -> str:
        if not self.recoveries:
            return f"{self.kills} chaos kills, no completed recovery measured"
        ordered = sorted(self.recoveries)
        median = ordered[len(ordered) // 2]
        return (
            f"{self.kills} chaos kills, {len(ordered)} recoveries: median {median:.2f}s, "
            f"max {ordered[-1]:.2f}s (time from a death until every daemon reported ready in the new epoch)"
        )


class ReportingController(Controller):
    """The controller of ``meshd cluster``: it records every start, says every exit, and starts timing a recovery
    at a death."""

    def __init__(self, cluster: LocalCluster, **options: Any) -> None:
        super().__init__(**options)
        self._cluster = cluster

    async def spawn(self, slot: int, epoch: int | str, role: str = "member") -> Incarnation:
        incarnation = await super().spawn(slot, epoch, role)
        record = {
            "slot": slot,
            "pid": incarnation.pid,
            "epoch": epoch,
            "role": role,
            "log": incarnation.log.name,
            "time": incarnation.spawned,
        }
        with (self.workdir / STARTS_FILE).open("a", encoding="utf-8") as starts:
            starts.write(json.dumps(record) + "\n")
        return incarnation

    async def restarting(self, incarnation: Incarnation, code: int, death: bool) -> None:
        cluster, slot = self._cluster, incarnation.slot
        if death:
            cluster.fault_at = cluster.fault_at or time.monotonic()
        if self.policy.mode is EpochMode.AUTO:
            cluster.say(f"daemon {slot} exited with {code}: restarting it")
        elif not death:
            cluster.say(f"daemon {slot} fenced (exit 75): restarting at epoch {self.policy.current}")
        else:
            cluster.say(f"daemon {slot} died (exit {code}): new epoch {self.policy.current}, restarting it")


def _listened_on(address: Address) -> bool:
    """Whether a live listener holds ``address`` (binding as the daemon does, with SO_REUSEADDR, fails)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address.host, address.port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


async def run_cluster(spec: ClusterSpec) -> int:
    """Run ``meshd cluster``; its exit code (0; 1 when the cluster could not run; 2 when a daemon said its
    configuration or command line is wrong)."""
    if spec.log_dir is not None:
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        workdir = spec.log_dir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="meshd-cluster-"))
    cluster = LocalCluster(spec, workdir)
    cluster.say(
        f"starting {spec.size} daemons of cluster {cluster.name!r} on "
        f"{spec.host}:{spec.base_port}..{spec.base_port + spec.size - 1}, admin ports from {spec.admin_base_port}, "
        f"logs in {workdir}"
    )
    cluster.say(f"the daemons authenticate with the key made for this cluster: {workdir / SHARED_KEY_FILE}")
    return await cluster.run()


async def _cancel_on(signals: trio.abc.ReceiveChannel[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
