"""Recovery with ``--on-fence exit`` and ``--on-fence restart``: kill -9 of one of N daemons with fixed epochs.

Each trial: N daemons ready at epoch E; slot N-1 is killed and its replacement started at once at E + 1 (the
controller's rule R6 after a death). Its survivors are fenced:
- ``exit``: each exits 75 and this bench restarts it at once with the current epoch (an orchestrator with no
  back-off: the best case; the kubelet would wait 10 s before the first restart and double it after);
- ``restart``: each re-executes itself in place (same PID) with the epoch that fenced it; nothing restarts it.
Recovery is from the replacement's spawn to every slot ready at E + 1 (the latest ``state_since``, daemon wall
clock on this host). Also counted: process exits of the survivors, and their PIDs kept.

``python -m tools.bench.fence [--size N] [--trials T]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from meshd.admin import client as admin
from meshd.cluster.spawn import FAST_TIMEOUTS, HOST, PortAllocator, run_argv, start, write_config
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


class FencedCluster:
    """N daemons at fixed epochs with one ``--on-fence`` mode; exited daemons restarted at once (exit mode)."""

    def __init__(self, size: int, mode: str, workdir: Path) -> None:
        ports = PortAllocator()
        self.mode = mode
        self.workdir = workdir
        self.mesh = [Address(HOST, port) for port in ports.take(size)]
        self.admins = [Address(HOST, port) for port in ports.take(size)]
        self.config = write_config(workdir / f"{mode}.toml", f"fence-{mode}", self.mesh, FAST_TIMEOUTS)
        self.epoch = 1
        self.processes: list[subprocess.Popen[bytes]] = []
        self.exits = 0  # exits of survivors (75) since the last fault
        self._starts = 0

    def launch(self, slot: int) -> subprocess.Popen[bytes]:
        self._starts += 1
        argv = run_argv(self.config, slot, self.epoch, self.admins[slot], ["--on-fence", self.mode])
        return start(argv, self.workdir / f"{self.mode}-{self._starts:03d}-d{slot}.log")

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

    async def ready_at(self, epoch: int) -> float:
        """Wait until every slot is ready at ``epoch``; when the last became ready (daemon wall clock)."""
        with trio.fail_after(READY_TIMEOUT):
            while True:
                self.restart_exited()
                found = await self.statuses()
                if all(s is not None and s.state is MeshState.READY and s.epoch == Epoch(epoch) for s in found):
                    return max(s.state_since for s in found if s is not None)
                await trio.sleep(POLL)

    def kill(self, slot: int) -> None:
        self.processes[slot].kill()
        self.processes[slot].wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def trial(cluster: FencedCluster) -> dict[str, Any]:
    """One kill -9 of the last slot and its replacement at a new epoch; recovery, exits and PIDs kept."""
    victim = len(cluster.processes) - 1
    pids = [process.pid for process in cluster.processes[:victim]]
    cluster.kill(victim)
    cluster.epoch += 1
    cluster.exits = 0
    spawned = time.time()
    cluster.processes[victim] = cluster.launch(victim)
    ready = await cluster.ready_at(cluster.epoch)
    kept = sum(process.pid == pid for process, pid in zip(cluster.processes, pids, strict=False))
    return {"recovery": ready - spawned, "exits": cluster.exits, "pids_kept": kept, "survivors": victim}


async def measure(size: int, trials: int, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in MODES:
        cluster = FencedCluster(size, mode, workdir)
        try:
            cluster.start_all()
            await cluster.ready_at(cluster.epoch)
            results[mode] = [await trial(cluster) for _ in range(trials)]
        finally:
            cluster.close()
    return results


def report(size: int, results: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for mode, runs in results.items():
        recoveries = [run["recovery"] for run in runs]
        rows.append([
            f"--on-fence {mode}",
            str(len(runs)),
            ms(statistics.median(recoveries)),
            ms(percentile(recoveries, 0.9)),
            ms(max(recoveries)),
            f"{statistics.mean(run['exits'] for run in runs):.2f}",
            f"{sum(run['pids_kept'] for run in runs)}/{sum(run['survivors'] for run in runs)}",
        ])  # fmt: skip
    header = ["mode", "faults", "median", "p90", "max", "survivor exits per fault", "survivor PIDs kept"]
    title = f"kill -9 of one of {size} daemons (fixed epochs), replacement at a new epoch at once"
    return title + "\n" + table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.fence", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4, help="daemons (default 4)")
    parser.add_argument("--trials", type=int, default=10, help="faults per mode (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meshd-bench-fence-"))
    try:
        results = trio.run(measure, args.size, args.trials, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(args.size, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
