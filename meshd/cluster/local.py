"""``meshd cluster``: N daemons on this host under the controller's rule, with a live table and optional chaos.

Fixed epochs follow R6 (``meshd.cluster.policy``); with ``--auto`` every daemon runs ``--epoch auto`` and is simply
restarted. A daemon that exits 1 or 2 stops the cluster with its own message and the command exits 1; the daemons'
logs stay in ``--log-dir`` (a fresh directory otherwise, printed at the start); every daemon dies with the command,
even when it is killed with -9. A process that answers on a daemon's admin port but is not the one the command
started (another cluster's, an old one's) is shown as foreign, never as the cluster's.
"""

from __future__ import annotations

import math
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from attrs import frozen

from meshd.cluster.controller import UNRECOVERABLE, Controller, Incarnation
from meshd.cluster.policy import EpochController, convergence_problems
from meshd.cluster.spawn import write_config
from meshd.core.address import Address
from meshd.core.hello import EpochMode
from meshd.core.status import PeerState, Status
from meshd.errors import ExitCode

# How often the status table is refreshed.
REFRESH_INTERVAL = 0.5
# Bound on one status query; a daemon that does not answer in time shows as "?".
STATUS_TIMEOUT = 0.5


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


class LocalCluster:
    def __init__(self, spec: ClusterSpec, workdir: Path) -> None:
        self.spec = spec
        self.name = f"local-{time.strftime('%H%M%S')}-{random.randrange(16**4):04x}"  # ours alone
        peers = [Address(spec.host, spec.base_port + index) for index in range(spec.size)]
        self.config = write_config(workdir / "cluster.toml", self.name, peers)
        mode = EpochMode.AUTO if spec.auto else EpochMode.FIXED
        admins = [Address(spec.host, spec.admin_base_port + index) for index in range(spec.size)]
        self.controller = ReportingController(
            self, config=self.config, admins=admins, policy=EpochController(mode), workdir=workdir
        )
        self.rng = random.Random(spec.seed)
        self.statuses: list[Status | None] = [None] * spec.size
        self.fault_at: float | None = None
        self.recoveries: list[float] = []
        self.kills = 0

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    async def run(self) -> int:
        with (
            trio.move_on_after(self.spec.duration or math.inf) as running,
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on, signals, running)
                nursery.start_soon(_cancel_when, self.controller.failed, running)
                await nursery.start(self.controller.run)
                nursery.start_soon(self.monitor)
                if self.spec.chaos:
                    nursery.start_soon(self.chaos, self.spec.chaos)
        if self.controller.failure is not None:
            self.say(f"the cluster cannot run: {self.controller.failure}")
            return int(ExitCode.FAILURE)
        self.say(self.summary())
        return int(ExitCode.OK)

    async def chaos(self, period: float) -> None:
        while True:
            await trio.sleep(period)
            victim = self.rng.choice(self.controller.slots).current
            if victim is not None and victim.running:
                self.kills += 1
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
                self.say(f"recovered: all {self.spec.size} ready in epoch {epoch}, {took:.2f}s after the fault")
            table = self.table()
            if table != last_table:
                print(table, flush=True)
                last_table = table
            await trio.sleep(REFRESH_INTERVAL)

    def ours(self, slot: int) -> Status | None:
        """The slot's status if it comes from the daemon this command started there (else None)."""
        status = self.statuses[slot]
        current = self.controller.slots[slot].current
        if status is None or current is None or status.cluster != self.name:
            return None
        return status if current.incarnation in (None, status.incarnation) else None

    def converged(self) -> bool:
        statuses = [self.ours(slot) for slot in range(self.spec.size)]
        epoch = None if self.spec.auto else self.controller.policy.current
        return not convergence_problems(statuses, incarnations=self.controller.incarnations(), epoch=epoch)

    def table(self) -> str:
        policy = self.controller.policy
        head = "cluster minting its own generations" if self.spec.auto else f"cluster epoch {policy.current}"
        lines = [f"{head} ({self.name})", "SLOT  PID      EPOCH  STATE      LINKS  STARTS  EXITS"]
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
            lines.append(f"{slot.index:<5} {pid!s:<8} {epoch:<6} {state:<10} {links:<6} {starts:<7} {exits}")
        return "\n".join(lines)

    def summary(self) -> str:
        if not self.recoveries:
            return f"{self.kills} chaos kills, no completed recovery measured"
        ordered = sorted(self.recoveries)
        median = ordered[len(ordered) // 2]
        return (
            f"{self.kills} chaos kills, {len(ordered)} recoveries: median {median:.2f}s, "
            f"max {ordered[-1]:.2f}s (time from a death until every daemon reported ready in one epoch)"
        )


class ReportingController(Controller):
    """The controller of ``meshd cluster``: it says every exit, and starts timing a recovery at a death."""

    def __init__(self, cluster: LocalCluster, **options: Any) -> None:
        super().__init__(**options)
        self._cluster = cluster

    async def exited(self, incarnation: Incarnation, code: int) -> None:
        say, slot = self._cluster.say, incarnation.slot
        if code == ExitCode.FENCED:
            say(f"daemon {slot} fenced (exit 75): restarting it with the current epoch")
        elif code in UNRECOVERABLE:
            say(f"daemon {slot} exited {code}: a restart cannot help")
        else:
            self._cluster.fault_at = self._cluster.fault_at or time.monotonic()
            new = "restarting it" if self.policy.mode is EpochMode.AUTO else "restarting it with a new epoch"
            say(f"daemon {slot} died (exit {code}): {new}")


async def run_cluster(spec: ClusterSpec) -> int:
    """Run ``meshd cluster``; its exit code (1 when the cluster could not run)."""
    if spec.log_dir is not None:
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        workdir = spec.log_dir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="meshd-cluster-"))
    cluster = LocalCluster(spec, workdir)
    cluster.say(
        f"starting {spec.size} daemons on {spec.host}:{spec.base_port}..{spec.base_port + spec.size - 1}, "
        f"admin ports from {spec.admin_base_port}; logs in {workdir}"
    )
    return await cluster.run()


async def _cancel_on(signals: trio.abc.ReceiveChannel[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
