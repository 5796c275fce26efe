"""``meshd cluster``: a local controller that runs N daemons and restarts them the way an orchestrator would.

Controller policy with fixed epochs, the one the design assumes (with ``--auto`` every daemon runs
``--epoch auto`` and is simply restarted, the cluster minting its own generations):
- a daemon that exits 75 (fenced) is restarted with the current cluster epoch: it only learned that it was stale;
- a daemon that dies any other way (crash, kill -9) is restarted with a *new* epoch, so its replacement fences the
  survivors of the old generation instead of joining them.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from attrs import define, field, frozen

from meshd.admin import client as admin
from meshd.core.address import Address
from meshd.errors import AdminUnreachable, ExitCode

# Pause before restarting an exited daemon, as a process supervisor would (keeps a crash loop from spinning).
RESTART_DELAY = 0.2
# How often the status table is refreshed.
REFRESH_INTERVAL = 0.5
# Bound on one status query; a daemon that does not answer in time shows as "?".
STATUS_TIMEOUT = 0.5
# How long stopping daemons get to exit after SIGTERM before they are killed.
STOP_TIMEOUT = 5.0


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


@define
class Slot:
    index: int
    admin: Address
    process: trio.Process | None = None
    epoch: int = 0
    starts: int = 0
    exits: list[int] = field(factory=list)
    status: dict[str, Any] | None = None


@define
class EpochController:
    """The controller's epoch policy (design rule R6), shared by ``meshd cluster`` and scripts/chaos.

    A daemon that exits 75 only learned that it was stale: it is restarted with the current epoch. A daemon that
    dies any other way gets a new epoch above every epoch given before, so its replacement fences the survivors.
    """

    current: int = 1

    def exited(self, started_with: int, code: int) -> bool:
        """Account for an exit of a daemon started with epoch ``started_with``; True when it was a death."""
        if code == ExitCode.FENCED:
            return False
        self.current = max(self.current, started_with) + 1
        return True


def write_config(spec: ClusterSpec, directory: Path) -> Path:
    peers = ", ".join(f'"{spec.host}:{spec.base_port + index}"' for index in range(spec.size))
    path = directory / "cluster.toml"
    path.write_text(f'[cluster]\nname = "local"\npeers = [{peers}]\n', encoding="utf-8")
    return path


class Cluster:
    def __init__(self, spec: ClusterSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.config = write_config(spec, workdir)
        self.epochs = EpochController()
        self.slots = [Slot(index, Address(spec.host, spec.admin_base_port + index)) for index in range(spec.size)]
        self.stopping = False
        self.rng = random.Random(spec.seed)
        self.fault_at: float | None = None
        self.recoveries: list[float] = []
        self.kills = 0

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def command(self, slot: Slot) -> list[str]:
        return [
            sys.executable, "-m", "meshd", "run",
            "--config", str(self.config),
            "--index", str(slot.index),
            "--epoch", "auto" if self.spec.auto else str(slot.epoch),
            "--admin", str(slot.admin),
        ]  # fmt: skip

    async def keep_running(self, slot: Slot) -> None:
        """Start the slot's daemon, and restart it whenever it exits, with the epoch the policy says."""
        log = (self.workdir / f"meshd-{slot.index}.log").open("ab")
        with log:
            while not self.stopping:
                slot.epoch = self.epochs.current
                slot.starts += 1
                slot.process = await trio.lowlevel.open_process(
                    self.command(slot), stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
                code = await slot.process.wait()
                if self.stopping:
                    return
                slot.exits.append(code)
                if self.spec.auto:
                    self.fault_at = self.fault_at or (None if code == ExitCode.FENCED else trio.current_time())
                    self.say(f"daemon {slot.index} exited with {code}: restarting it")
                elif not self.epochs.exited(slot.epoch, code):
                    self.say(f"daemon {slot.index} fenced (exit 75): restarting at epoch {self.epochs.current}")
                else:
                    self.fault_at = self.fault_at or trio.current_time()
                    self.say(f"daemon {slot.index} died (exit {code}): new epoch {self.epochs.current}, restarting it")
                await trio.sleep(RESTART_DELAY)

    async def chaos(self, period: float) -> None:
        while True:
            await trio.sleep(period)
            victim = self.rng.choice(self.slots)
            if victim.process is not None and victim.process.returncode is None:
                self.kills += 1
                self.say(f"chaos: kill -9 daemon {victim.index} (pid {victim.process.pid})")
                victim.process.send_signal(signal.SIGKILL)

    async def poll(self, slot: Slot) -> None:
        slot.status = None
        with trio.move_on_after(STATUS_TIMEOUT):
            with contextlib.suppress(AdminUnreachable, OSError):
                slot.status = await admin.request(slot.admin, {"op": "status"})

    def all_ready(self) -> bool:
        """Every daemon ready in one epoch (the controller's current one with fixed epochs)."""
        states = [slot.status for slot in self.slots]
        if any(s is None or s["state"] != "ready" for s in states):
            return False
        epochs = {s["epoch"] for s in states if s is not None}
        return len(epochs) == 1 and (self.spec.auto or self.epochs.current in epochs)

    async def monitor(self) -> None:
        last_table = ""
        while True:
            async with trio.open_nursery() as nursery:
                for slot in self.slots:
                    nursery.start_soon(self.poll, slot)
            if self.fault_at is not None and self.all_ready():
                took = trio.current_time() - self.fault_at
                self.recoveries.append(took)
                self.fault_at = None
                epoch = self.slots[0].status["epoch"] if self.slots[0].status else self.epochs.current
                self.say(f"recovered: all {self.spec.size} ready at epoch {epoch}, {took:.2f}s after the fault")
            table = self.table()
            if table != last_table:
                print(table, flush=True)
                last_table = table
            await trio.sleep(REFRESH_INTERVAL)

    def table(self) -> str:
        head = "cluster minting its own generations" if self.spec.auto else f"cluster epoch {self.epochs.current}"
        lines = [head, "SLOT  PID      EPOCH  STATE      LINKS  STARTS  EXITS"]
        for slot in self.slots:
            status = slot.status
            pid = slot.process.pid if slot.process and slot.process.returncode is None else "-"
            if status is None:
                state, epoch, links = "?", "-", "-"
            else:
                up = sum(peer["state"] == "up" for peer in status["peers"])
                state, epoch, links = status["state"], status["epoch"], f"{up}/{len(status['peers'])}"
            exits = ",".join(str(code) for code in slot.exits[-4:]) or "-"
            lines.append(f"{slot.index:<5} {pid!s:<8} {epoch!s:<6} {state:<10} {links:<6} {slot.starts:<7} {exits}")
        return "\n".join(lines)

    async def stop(self) -> None:
        self.stopping = True
        running = [slot.process for slot in self.slots if slot.process and slot.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                process.kill()
                await process.wait()

    def summary(self) -> str:
        if not self.recoveries:
            return f"{self.kills} chaos kills, no completed recovery measured"
        ordered = sorted(self.recoveries)
        median = ordered[len(ordered) // 2]
        return (
            f"{self.kills} chaos kills, {len(ordered)} recoveries: median {median:.2f}s, "
            f"max {ordered[-1]:.2f}s (time from a death until every daemon reported ready in the new epoch)"
        )


async def run_cluster(spec: ClusterSpec) -> int:
    with tempfile.TemporaryDirectory(prefix="meshd-cluster-") as tmp:
        cluster = Cluster(spec, Path(tmp))
        cluster.say(
            f"starting {spec.size} daemons on {spec.host}:{spec.base_port}..{spec.base_port + spec.size - 1}, "
            f"admin ports from {spec.admin_base_port}, logs in {tmp}"
        )
        with (
            trio.move_on_after(spec.duration or math.inf) as running,
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_signal, signals, running)
                for slot in cluster.slots:
                    nursery.start_soon(cluster.keep_running, slot)
                nursery.start_soon(cluster.monitor)
                if spec.chaos:
                    nursery.start_soon(cluster.chaos, spec.chaos)
        await cluster.stop()
        cluster.say(cluster.summary())
    return 0


async def _cancel_on_signal(signals: trio.abc.ReceiveChannel[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
