"""Recovery with ``--on-fence exit`` and ``--on-fence restart``: kill -9 of one of N daemons, both epoch modes.

Each trial: N daemons ready in one epoch; slot N-1 is killed and its replacement started at once (fixed epochs: at
E + 1, the controller's rule R6 after a death; auto: as it was). Its survivors are fenced:
- ``exit``: each exits 75 and this bench restarts it at once (fixed: with the current epoch; auto: as it was): an
  orchestrator with no back-off, the best case (the kubelet would wait 10 s before the first restart and double it);
- ``restart``: each restarts itself in place (same PID) with the epoch that fenced it; nothing restarts it.
Recovery is from the replacement's spawn to every slot ready in one new epoch (the latest ``state_since``, daemon
wall clock on this host). Also counted: process exits of the survivors, and their PIDs kept.

``python -m tools.bench.fence [--size N] [--trials T] [--epochs fixed,auto] [--modes exit,restart]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from meshd.admin import client as admin
from meshd.cluster.spawn import HOST, PortAllocator, run_argv, start, write_config
from meshd.core.address import Address
from meshd.core.status import MeshState, Status
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from tools.report import ms, percentile, table

# Bound on every wait for a cluster to be ready.
READY_TIMEOUT = 60.0
# How often the statuses are polled (the figures come from the daemons' state_since, not from this).
POLL = 0.01
MODES = ("exit", "restart")
EPOCH_MODES = ("fixed", "auto")


class FencedCluster:
    """N daemons with one ``--on-fence`` mode and one epoch mode; exited daemons restarted at once (exit mode)."""

    def __init__(self, size: int, mode: str, auto: bool, workdir: Path) -> None:
        ports = PortAllocator()
        self.mode = mode
        self.auto = auto
        self.workdir = workdir
        self.mesh = [Address(HOST, port) for port in ports.take(size)]
        self.admins = [Address(HOST, port) for port in ports.take(size)]
        self.tag = f"{'auto' if auto else 'fixed'}-{mode}"
        self.config = write_config(workdir / f"{self.tag}.toml", f"fence-{self.tag}", self.mesh)  # default timeouts
        self.epoch = 1
        self.processes: list[subprocess.Popen[bytes]] = []
        self.exits = 0  # exits of survivors (75) since the last fault
        self._starts = 0

    def launch(self, slot: int) -> subprocess.Popen[bytes]:
        self._starts += 1
        epoch = "auto" if self.auto else self.epoch
        argv = run_argv(self.config, slot, epoch, self.admins[slot], ["--on-fence", self.mode])
        return start(argv, self.workdir / f"{self.tag}-{self._starts:03d}-d{slot}.log")

    def start_all(self) -> None:
        self.processes = [self.launch(slot) for slot in range(len(self.mesh))]

    def restart_exited(self) -> None:
        """Exit mode's orchestrator: a daemon that exited 75 starts again at once with the current epoch."""
        for slot, process in enumerate(self.processes):
            code = process.poll()
            if code is None:
                continue
            if code != ExitCode.FENCED:
                raise RuntimeError(f"daemon {slot} exited {code}; see {self.workdir}")
            self.exits += 1
            self.processes[slot] = self.launch(slot)

    async def statuses(self) -> list[Status | None]:
        found: list[Status | None] = [None] * len(self.admins)

        async def one(slot: int) -> None:
            with contextlib.suppress(*admin.CLIENT_ERRORS):
                found[slot] = await admin.status(self.admins[slot], timeout=1.0)

        async with trio.open_nursery() as nursery:
            for slot in range(len(self.admins)):
                nursery.start_soon(one, slot)
        return found

    async def ready(self, since: Epoch | None) -> tuple[float, Epoch]:
        """Wait until every slot is ready in one epoch other than ``since`` (fixed: the current one); when the last
        became ready (daemon wall clock), and the epoch."""
        with trio.fail_after(READY_TIMEOUT):
            while True:
                self.restart_exited()
                found = await self.statuses()
                epochs = {None if s is None or s.state is not MeshState.READY else s.epoch for s in found}
                (epoch,) = epochs if len(epochs) == 1 else (None,)
                wanted = epoch is not None and epoch != since and (self.auto or epoch == Epoch(self.epoch))
                if wanted and epoch is not None:
                    return max(s.state_since for s in found if s is not None), epoch
                await trio.sleep(POLL)

    def kill(self, slot: int) -> None:
        self.processes[slot].kill()
        self.processes[slot].wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class Trial:
    """One fault: recovery (the replacement's spawn -> every slot ready, seconds), the survivors' exits, how many
    survivors kept their PID, how many there were, and the epoch the cluster is ready in."""

    recovery: float
    exits: int
    pids_kept: int
    survivors: int
    epoch: Epoch


# Trials by cluster tag ("fixed-restart", "auto-exit", ...).
Results = dict[str, list[Trial]]


async def trial(cluster: FencedCluster, before: Epoch) -> Trial:
    """One kill -9 of the last slot and its replacement (fixed: at a new epoch); recovery, exits and PIDs kept."""
    victim = len(cluster.processes) - 1
    pids = [process.pid for process in cluster.processes[:victim]]
    cluster.kill(victim)
    cluster.epoch += 1
    cluster.exits = 0
    spawned = time.time()
    cluster.processes[victim] = cluster.launch(victim)
    ready, epoch = await cluster.ready(before)
    kept = sum(process.pid == pid for process, pid in zip(cluster.processes, pids, strict=False))
    return Trial(ready - spawned, cluster.exits, kept, victim, epoch)


async def measure(size: int, trials: int, epochs: list[str], modes: list[str], workdir: Path) -> Results:
    results: Results = {}
    for epoch_mode in epochs:
        for mode in modes:
            cluster = FencedCluster(size, mode, epoch_mode == "auto", workdir)
            try:
                cluster.start_all()
                _, epoch = await cluster.ready(None)
                runs = results[cluster.tag] = []
                for _ in range(trials):
                    runs.append(await trial(cluster, epoch))
                    epoch = runs[-1].epoch
            finally:
                cluster.close()
    return results


def report(size: int, results: Results) -> str:
    rows = []
    for tag, runs in results.items():
        recoveries = [run.recovery for run in runs]
        epochs, mode = tag.split("-")
        rows.append([
            epochs,
            f"--on-fence {mode}",
            str(len(runs)),
            ms(statistics.median(recoveries)),
            ms(percentile(recoveries, 0.99)),
            ms(max(recoveries)),
            f"{statistics.mean(run.exits for run in runs):.2f}",
            f"{sum(run.pids_kept for run in runs)}/{sum(run.survivors for run in runs)}",
        ])  # fmt: skip
    header = ["epochs", "mode", "faults", "median", "p99", "max", "survivor exits per fault", "survivor PIDs kept"]
    title = f"kill -9 of one of {size} daemons, replacement at once (fixed epochs: at a new epoch)"
    return title + "\n" + table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.fence", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4, help="daemons (default 4)")
    parser.add_argument("--trials", type=int, default=10, help="faults per mode (default 10)")
    parser.add_argument("--epochs", default=",".join(EPOCH_MODES), help="epoch modes, comma-separated (fixed,auto)")
    parser.add_argument("--modes", default=",".join(MODES), help="--on-fence modes (default exit,restart)")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-fence-"))
    try:
        results = trio.run(measure, args.size, args.trials, args.epochs.split(","), args.modes.split(","), workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(args.size, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
