"""The baseline of ``scripts/chaos --worker bytewax``: the same bytewax job and the same seeded faults, WITHOUT meshd.

Each of the P processes is ``python -m bytewax.run examples/bytewax/flow.py:flow -i I -w 1 -a "h:q0;h:q1;..."`` on
fixed loopback ports (what launch.py would exec), under a supervisor that restarts each exited process on its own,
as Kubernetes restarts a pod's container: at once the first time, then after a back-off of 1, 2, 4, ... s capped at
``BACKOFF_CAP``, the count reset once a process ran ``BACKOFF_RESET`` s (Kubernetes: 10 min). Nothing restarts the
others when one dies, and nothing tells a restarted process it joins a new job: that is what meshd adds.

Faults, from the trial's seed as in the meshd campaign (``tools.chaos.faults.plan`` with fixed epochs, no
namespaces): ``kill`` (kill -9 of the bytewax process of each victim), ``stale`` (no epochs here: a kill -9 of its
slot), ``pause`` (SIGSTOP, SIGCONT after the fault's duration), ``duplicate`` (a second process of a live slot, with
its arguments; killed after ``DUPLICATE_WAIT`` s unless it exited).

A trial: start the P processes; the job must complete a window (every key, every partition: so every process
contributed) within ``FORM_LIMIT``; the faults; then it *recovers* when, after the last fault ended (t0), a window
completes again with every result line right (``tools.chaos.results``: the example's own checker) within the
trial's ``limit`` (default 30 s); otherwise it is *wedged*. Every result line the trial printed must be right.

Each process's result lines carry ``epoch`` = ``SLOT.RESTART`` (MESHD_EPOCH, which the flow only prints), so the
checker's duplicate test stays meaningful (one incarnation never prints a window twice).

Run alone: ``python -m tools.chaos.baseline --trials 3 --seed 1``; ``scripts/chaos --worker bytewax`` runs it after
the meshd trials with the same seeds and prints both side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshd.children import die_with_parent, libc_prctl
from tools.chaos.faults import DUPLICATE, KILL, PAUSE, STALE, Fault, plan
from tools.chaos.results import READ_INTERVAL, ROOT, first_complete, parsed, run_command, verdict
from tools.ports import LowPorts

BACKOFF_CAP = 10.0
BACKOFF_RESET = 600.0
FORM_LIMIT = 30.0
LIMIT = 30.0
DUPLICATE_WAIT = 10.0
EXIT_POLL = 0.05
HOST = "127.0.0.1"


def backoff(crashes: int) -> float:
    """The delay before a slot's restart after ``crashes`` earlier exits in a row: 0, 1, 2, 4, ... up to the cap."""
    return 0.0 if crashes == 0 else min(BACKOFF_CAP, 2.0 ** (crashes - 1))


def say(text: str) -> None:
    print(f"[baseline] {text}", flush=True)


@dataclass
class Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0  # processes started after the first
    exits: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)


class BaselineTrial:
    """One trial of P supervised bytewax processes on fixed ports ``ports``, logs in ``workdir``."""

    def __init__(self, seed: int, size: int, faults: list[Fault], ports: list[int], workdir: Path, limit: float):
        self.seed = seed
        self.size = size
        self.faults = faults
        self.addresses = [f"{HOST}:{port}" for port in ports]
        self.workdir = workdir
        self.limit = limit
        self.slots = [Slot(index) for index in range(size)]
        self.stopping = False
        self.seconds: list[subprocess.Popen[bytes]] = []  # duplicates
        self.applied: list[dict[str, Any]] = []
        libc_prctl()  # loaded before any fork

    def log(self, slot: int) -> Path:
        return self.workdir / f"b{slot}.log"

    def spawn(self, slot: int, label: str) -> subprocess.Popen[bytes]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MESHD_")}
        env.update(MESHD_INDEX=str(slot), MESHD_SIZE=str(self.size), MESHD_EPOCH=label)
        parent = os.getpid()
        with open(self.log(slot), "ab") as log:
            return subprocess.Popen(
                run_command(slot, self.addresses),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: die_with_parent(parent),
            )

    async def wait(self, process: subprocess.Popen[bytes]) -> int:
        while (code := process.poll()) is None:
            await trio.sleep(EXIT_POLL)
        return code

    async def supervise(self, slot: Slot) -> None:
        """Restart the slot's process whenever it exits, with Kubernetes-like back-off."""
        crashes = 0
        while not self.stopping:
            slot.process = self.spawn(slot.index, f"{slot.index}.{slot.restarts}")
            slot.started = time.time()
            code = await self.wait(slot.process)
            if self.stopping:
                return
            slot.exits.append(code)
            if time.time() - slot.started >= BACKOFF_RESET:
                crashes = 0
            delay = backoff(crashes)
            crashes += 1
            slot.delays.append(delay)
            await trio.sleep(delay)
            slot.restarts += 1

    async def wait_window(self, since: float, deadline: float) -> Any:
        paths = [self.log(slot) for slot in range(self.size)]
        while True:
            found = first_complete(await trio.to_thread.run_sync(parsed, paths), since, by_epoch=False)
            if found is not None or time.time() > deadline:
                return found
            await trio.sleep(READ_INTERVAL)

    def running(self, slot: int) -> subprocess.Popen[bytes] | None:
        process = self.slots[slot].process
        return process if process is not None and process.poll() is None else None

    async def inject(self, origin: float) -> float:
        """Apply the schedule from ``origin``; the wall clock when the last fault ended."""
        ended = [origin]
        async with trio.open_nursery() as nursery:
            for fault in self.faults:
                await trio.sleep(max(0.0, origin + fault.at - time.time()))
                record = {**fault.to_json(), "started": round(time.time() - origin, 3), "note": ""}
                self.applied.append(record)
                if fault.kind in (KILL, STALE):
                    victims = [p for p in map(self.running, fault.slots) if p is not None]
                    for process in victims:
                        process.kill()
                    record["note"] = f"killed pids {[p.pid for p in victims]}" + (
                        " (stale: no epochs here, a kill)" if fault.kind == STALE else ""
                    )
                    ended.append(time.time())
                elif fault.kind == PAUSE:
                    nursery.start_soon(self._pause, fault, record, ended)
                elif fault.kind == DUPLICATE:
                    nursery.start_soon(self._duplicate, fault, record, ended)
        return max(ended)

    async def _pause(self, fault: Fault, record: dict[str, Any], ended: list[float]) -> None:
        paused = [p for p in map(self.running, fault.slots) if p is not None]
        for process in paused:
            process.send_signal(signal.SIGSTOP)
        await trio.sleep(fault.duration)
        for process in paused:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
        record["note"] = f"paused pids {[p.pid for p in paused]}"
        ended.append(time.time())

    async def _duplicate(self, fault: Fault, record: dict[str, Any], ended: list[float]) -> None:
        (slot,) = fault.slots
        second = self.spawn(slot, f"{slot}.dup{len(self.seconds)}")
        self.seconds.append(second)
        started = time.time()
        with trio.move_on_after(DUPLICATE_WAIT):
            await self.wait(second)
        if second.poll() is None:
            second.kill()
        code = await self.wait(second)
        record["note"] = f"exit {code} after {time.time() - started:.2f}s"
        ended.append(time.time())

    async def stop(self) -> None:
        self.stopping = True
        processes = [slot.process for slot in self.slots if slot.process is not None] + self.seconds
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
        for process in processes:
            with trio.CancelScope(shield=True):
                await self.wait(process)

    async def run(self) -> dict[str, Any]:
        record: dict[str, Any] = {"seed": self.seed, "size": self.size, "limit": self.limit, "formed": False}
        record.update(recovered=False, recovery=None, wedged=False)
        try:
            async with trio.open_nursery() as nursery:
                for slot in self.slots:
                    nursery.start_soon(self.supervise, slot)
                started = time.time()
                formed = await self.wait_window(started, started + FORM_LIMIT)
                if formed is None:
                    record["note"] = f"no complete window within {FORM_LIMIT:.0f}s of the start"
                else:
                    record["formed"] = True
                    record["formed_in"] = round(formed.at - started, 3)
                    origin = time.time()
                    t0 = await self.inject(origin)
                    record["t0"] = round(t0 - origin, 3)
                    progress = await self.wait_window(t0, t0 + self.limit)
                    if progress is not None and progress.at - t0 <= self.limit:
                        record.update(recovered=True, recovery=round(max(0.0, progress.at - t0), 3))
                        record["window"] = progress.window
                        record["processes"] = list(progress.processes)
                    else:
                        record["wedged"] = True
                await self.stop()
                nursery.cancel_scope.cancel()
        finally:
            await self.stop()
        count, errors = verdict([self.log(slot) for slot in range(self.size)])
        record.update(results=count, wrong=errors[:10], wrong_count=len(errors))
        if errors:
            record["recovered"], record["wedged"] = False, True
        record["faults"] = self.applied
        record["exits"] = {str(slot.index): slot.exits for slot in self.slots}
        record["restarts"] = {str(slot.index): slot.restarts for slot in self.slots}
        record["delays"] = {str(slot.index): slot.delays for slot in self.slots}
        return record


def describe(record: dict[str, Any]) -> str:
    faults = "; ".join(f"+{f['at']:.2f} {f['kind']} {list(f['slots'])}" for f in record["faults"])
    if record["recovered"]:
        outcome = f"results again {record['recovery']:.2f}s after the last fault"
    elif not record["formed"]:
        outcome = f"WEDGED before the faults ({record.get('note', '')})"
    else:
        outcome = f"WEDGED: no complete window within {record['limit']:.0f}s of the last fault"
    text = f"baseline seed {record['seed']}: {faults} -> {outcome}; exits {record['exits']}, "
    text += f"restarts {record['restarts']}, {record['results']} results"
    if record["wrong_count"]:
        text += f", {record['wrong_count']} WRONG: {record['wrong'][:3]}"
    return text


async def campaign(
    seeds: list[int], size: int, faults: int, limit: float, out: Path, ports: LowPorts, keep_logs: bool
) -> list[dict[str, Any]]:
    """One baseline trial per seed (the fault schedule of ``plan(seed, size, "fixed", False, faults)``)."""
    records = []
    for seed in seeds:
        workdir = out / "logs" / f"baseline-seed{seed}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        trial = BaselineTrial(seed, size, plan(seed, size, "fixed", False, faults), ports.take(size), workdir, limit)
        record = await trial.run()
        record["logs"] = str(workdir)
        records.append(record)
        say(describe(record))
        if record["recovered"] and not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--faults", type=int, default=4)
    parser.add_argument("--limit", type=float, default=LIMIT, help=f"recovery limit after the last fault ({LIMIT}s)")
    parser.add_argument("--out", type=Path, default=Path("chaos-out"))
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    from tools.chaos.report import comparison_rows, comparison_table

    seeds = [args.seed + k for k in range(args.trials)]
    ports = LowPorts(random.Random(args.seed + 7))
    records = trio.run(campaign, seeds, args.size, args.faults, args.limit, args.out, ports, args.keep_logs)
    rows = comparison_rows([], records)[1:]
    print(comparison_table(rows), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baseline.json").write_text(json.dumps({"summary": rows, "trials": records}, indent=1))
    return 0 if all(record["recovered"] for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
