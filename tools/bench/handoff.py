"""8. Hand-off to the worker: how long from "mesh ready" until the worker holds every data socket, and whether the
sockets meshd hands over carry an all-to-all as fast as sockets the workers formed without meshd.

(a) Latency. N daemons (fixed epoch 1) each run ``tools/bench/handoff_worker.py`` (``meshd run --exec``), whose first
    action stamps ``time.time()``, then checks it holds N-1 connected TCP sockets and writes the stamp to a file.
    "Mesh ready" is the daemon's own ``ready`` event (typed, from its admin watch: the ``time`` of the last
    ``ready`` before ``worker_started``, or the snapshot's ``state_since`` when the watch opened later); the same
    host's wall clock on both sides. Reported per slot: ready -> the ``worker_started`` event (the daemon forked
    and exec'd it) and ready -> the worker's stamp (its interpreter start included); beside them the same worker
    spawned bare (``--probe``, no mesh): spawn -> stamp, the interpreter's own start.
(b) Throughput. ``examples/alltoall.py --rounds R --block B`` once under meshd (``--exec``: meshd's handed sockets)
    and once over sockets the bench formed itself (``SelfMesh``: it plays meshd, connecting every pair over
    loopback TCP, and passes them with ``pass_fds`` and the MESHD_* contract): the same worker, only who formed the
    sockets differs (the bench gives its sockets the options trio gives meshd's: TCP_NODELAY, TCP_NOTSENT_LOWAT
    16 KiB). Each worker prints its MB/s (payload sent plus received per second) after the last round. The runs
    alternate between the two ways; the ratio is the median over pairs of back-to-back runs of (median worker via
    meshd) / (median worker self-formed), so that the shared machine's changing load cancels out.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshd.admin import client as admin
from meshd.admin.messages import Snapshot
from meshd.cluster.spawn import log_tail, run_argv, write_config
from meshd.core.address import Address
from meshd.core.status import MeshState, StateChanged, WorkerStarted
from tools.bench.common import HOST, BenchError, Lab, load, ms, progress, table
from tools.bench.mesh import FORMATION_TIMEOUTS

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = Path(__file__).with_name("handoff_worker.py")
ALLTOALL = ROOT / "examples" / "alltoall.py"
# Bounds on every wait.
HANDOFF_TIMEOUT = 60.0  # spawn -> every worker wrote its stamp
EXCHANGE_TIMEOUT = 120.0  # spawn -> every worker (and daemon) exited
PROBE_TIMEOUT = 10.0
WATCH_RETRY = 0.01  # pause between attempts to open a daemon's admin watch
POLL = 0.01
# Options trio gives every TCP socket stream (so meshd's data sockets): the self-formed sockets get the same.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
TRIO_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 2**14))
# The exchange: block size, and rounds per cluster size (a run of a few seconds on 2 cores).
BLOCK = 64 * 1024
ROUNDS = {4: 400, 8: 120, 16: 30}
LOG_DAEMONS = 4
RATE = re.compile(r"^worker (\d+) epoch (\S+) round (\d+) ok, ([0-9.]+) MB/s")


# ---------------------------------------------------------------------------------------------------------------
# (a) latency


@dataclass
class Handoff:
    size: int
    to_started: list[float] = field(default_factory=list)  # per slot: ready -> worker_started event (seconds)
    to_stamp: list[float] = field(default_factory=list)  # per slot: ready -> the worker's first stamp
    options: dict[str, int] = field(default_factory=dict)  # a handed socket's options, as the worker read them
    runs: int = 0
    load: str = ""


@dataclass
class Watched:
    ready: float | None = None  # the daemon's wall clock when its current ready period began
    started: float | None = None  # the worker_started event's time
    done: trio.Event = field(default_factory=trio.Event)


class Cluster:
    """N daemons on fresh loopback ports with one worker command, spawned through the lab's fleet."""

    def __init__(self, lab: Lab, size: int, tag: str, worker: list[str]) -> None:
        self.lab = lab
        self.size = size
        self.workdir = lab.workdir / tag
        self.workdir.mkdir()
        mesh, admins = lab.ports.take(size), lab.ports.take(size)
        peers = [Address(HOST, port) for port in mesh]
        self.admins = [Address(HOST, port) for port in admins]
        self.config = write_config(self.workdir / "cluster.toml", tag, peers, FORMATION_TIMEOUTS)
        self.worker = worker
        self.logs = [self.workdir / f"d{index}.log" for index in range(size)]
        self.processes: list[subprocess.Popen[Any]] = []

    def spawn(self) -> None:
        for index in range(self.size):
            argv = run_argv(self.config, index, 1, self.admins[index], ("--exec", "--", *self.worker))
            self.processes.append(self.lab.fleet.start(argv, self.logs[index]))

    def kill(self) -> None:
        self.lab.fleet.kill(self.processes)

    def describe(self) -> str:
        parts = []
        for index, process in enumerate(self.processes[:LOG_DAEMONS]):
            parts.append(f"--- daemon {index} (exit {process.poll()}):\n{log_tail(self.logs[index])}")
        return "\n".join(parts) + f"\n(every log is in {self.workdir})"


async def watch(address: Address, into: Watched) -> None:
    """Follow one daemon until its worker started: the last ready before it, and the start's time."""
    while True:
        with contextlib.suppress(*admin.CLIENT_ERRORS):
            async with contextlib.aclosing(admin.events(address)) as messages:
                async for message in messages:
                    if isinstance(message, Snapshot):
                        status = message.status
                        into.ready = status.state_since if status.state is MeshState.READY else None
                        if status.worker.started is not None:  # it started before the watch opened
                            into.started = status.worker.started
                    elif isinstance(message, StateChanged):
                        into.ready = message.time if message.state is MeshState.READY else None
                    elif isinstance(message, WorkerStarted):
                        into.started = message.time
                    if into.started is not None:
                        into.done.set()
                        return
        await trio.sleep(WATCH_RETRY)


async def handoff_once(lab: Lab, size: int, run: int) -> tuple[list[float], list[float], dict[str, int]]:
    cluster = Cluster(lab, size, f"handoff-{size}-{run}", [])
    out = cluster.workdir / "stamps"
    out.mkdir()
    cluster.worker = [sys.executable, str(WORKER), str(out)]
    watched = [Watched() for _ in range(size)]
    try:
        await trio.to_thread.run_sync(cluster.spawn)
        with trio.move_on_after(HANDOFF_TIMEOUT) as scope:
            async with trio.open_nursery() as nursery:
                for address, into in zip(cluster.admins, watched, strict=True):
                    nursery.start_soon(watch, address, into)
            while len(list(out.glob("*.json"))) < size:
                if any(process.poll() is not None for process in cluster.processes):
                    raise BenchError(f"handoff N={size}: a daemon exited", cluster.describe())
                await trio.sleep(POLL)
        if scope.cancelled_caught:
            raise BenchError(
                f"handoff N={size}: not every worker started within {HANDOFF_TIMEOUT:g} s", cluster.describe()
            )
        to_started, to_stamp, options = [], [], {}
        for index, into in enumerate(watched):
            record = json.loads((out / f"{index}.json").read_text())
            if record["sockets"] != size - 1:
                raise BenchError(
                    f"worker {index} holds {record['sockets']} sockets, not {size - 1}", cluster.describe()
                )
            if into.ready is None or into.started is None:
                raise BenchError(f"daemon {index}: no ready before its worker started", cluster.describe())
            to_started.append(into.started - into.ready)
            to_stamp.append(record["stamp"] - into.ready)
            options = record["options"]
        return to_started, to_stamp, options
    finally:
        await trio.to_thread.run_sync(cluster.kill)


def python_start(lab: Lab, runs: int) -> list[float]:
    """The same worker spawned bare (``--probe``): spawn -> its first stamp, the interpreter's own start."""
    out = lab.workdir / "probe"
    out.mkdir()
    found = []
    for run in range(runs + 1):  # the first one warms the page cache, not counted
        spawned = time.time()
        process = lab.fleet.start([sys.executable, str(WORKER), "--probe", str(out)], out / "probe.log")
        try:
            process.wait(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the probe worker did not exit") from exc
        finally:
            lab.fleet.kill([process])
        stamp = json.loads((out / f"probe-{process.pid}.json").read_text())["stamp"]
        if run:
            found.append(stamp - spawned)
    return found


def bench_handoff(lab: Lab, size: int, runs: int) -> Handoff:
    result = Handoff(size, load=load())
    for run in range(runs):
        to_started, to_stamp, options = trio.run(handoff_once, lab, size, run)
        result.to_started += to_started
        result.to_stamp += to_stamp
        result.options = options
        result.runs += 1
        progress(
            f"handoff N={size} run {run + 1}/{runs}: ready -> worker_started median {ms(statistics.median(to_started))}"
            f", ready -> worker stamp median {ms(statistics.median(to_stamp))}, max {ms(max(to_stamp))}"
        )
    return result


# ---------------------------------------------------------------------------------------------------------------
# (b) throughput


@dataclass
class Exchange:
    size: int
    rounds: int
    block: int
    meshd: list[list[float]] = field(default_factory=list)  # per run: MB/s of every worker, handed sockets
    own: list[list[float]] = field(default_factory=list)  # the same over sockets the bench formed
    load: str = ""

    @property
    def ratios(self) -> list[float]:
        """Per pair of back-to-back runs: median worker via meshd / median worker self-formed."""
        return [
            statistics.median(mine) / statistics.median(theirs)
            for mine, theirs in zip(self.meshd, self.own, strict=True)
        ]


def alltoall(rounds: int, block: int) -> list[str]:
    return [sys.executable, str(ALLTOALL), "--rounds", str(rounds), "--block", str(block), "--every", str(rounds)]


def rates(logs: list[Path], size: int, rounds: int, what: str, describe: str) -> list[float]:
    """Each worker's MB/s from its last line (``worker I epoch E round R ok, X MB/s``)."""
    found: dict[int, float] = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            match = RATE.match(line)
            if match and int(match[3]) == rounds:
                found[int(match[1])] = float(match[4])
    if sorted(found) != list(range(size)):
        raise BenchError(f"{what}: workers {sorted(found)} of {size} finished {rounds} rounds", describe)
    return [found[index] for index in range(size)]


def wait_all(processes: list[subprocess.Popen[Any]], what: str, describe: Any) -> list[int]:
    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{what}: not done within {EXCHANGE_TIMEOUT:g} s", describe()) from exc
    return codes


def exchange_meshd(lab: Lab, size: int, rounds: int, block: int, run: int) -> list[float]:
    cluster = Cluster(lab, size, f"exchange-meshd-{size}-{run}", alltoall(rounds, block))
    try:
        cluster.spawn()
        codes = wait_all(cluster.processes, f"meshd all-to-all N={size}", cluster.describe)
        if any(codes):
            raise BenchError(f"meshd all-to-all N={size}: daemons exited {codes}", cluster.describe())
        return rates(cluster.logs, size, rounds, f"meshd all-to-all N={size}", cluster.describe())
    finally:
        cluster.kill()


class SelfMesh:
    """The bench playing meshd: every pair of N workers connected over loopback TCP (with the options trio sets on
    meshd's), each worker started with its N-1 sockets (``pass_fds``) and the MESHD_* environment."""

    def __init__(self, lab: Lab, size: int, tag: str) -> None:
        self.lab = lab
        self.size = size
        self.workdir = lab.workdir / tag
        self.workdir.mkdir()
        self.logs = [self.workdir / f"w{index}.log" for index in range(size)]
        self.sockets: list[dict[int, socket.socket]] = [{} for _ in range(size)]
        self.processes: list[subprocess.Popen[Any]] = []

    def form(self) -> None:
        with socket.create_server((HOST, 0), backlog=self.size * self.size) as listener:
            for low in range(self.size):
                for high in range(low + 1, self.size):
                    dialed = socket.create_connection(listener.getsockname())
                    accepted, _ = listener.accept()
                    for sock in (dialed, accepted):
                        for level, option, value in TRIO_OPTIONS:
                            sock.setsockopt(level, option, value)
                    self.sockets[high][low], self.sockets[low][high] = dialed, accepted

    def spawn(self, command: list[str]) -> None:
        peers = ",".join(f"{HOST}:{port}" for port in range(40000, 40000 + self.size))  # named, never dialed
        for index in range(self.size):
            mine = self.sockets[index]
            fds = ",".join("-" if peer == index else str(mine[peer].fileno()) for peer in range(self.size))
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "MESHD_INDEX": str(index),
                "MESHD_SIZE": str(self.size),
                "MESHD_CLUSTER": "bench-self",
                "MESHD_EPOCH": "1",
                "MESHD_INCARNATION": f"{random.getrandbits(64):016x}",
                "MESHD_PEERS": peers,
                "MESHD_FDS": fds,
            }
            pass_fds = [sock.fileno() for sock in mine.values()]
            self.processes.append(self.lab.fleet.start(command, self.logs[index], env=env, pass_fds=pass_fds))
            for sock in mine.values():
                sock.close()  # the worker holds its own copies, as meshd keeps none

    def close(self) -> None:
        for mine in self.sockets:
            for sock in mine.values():
                sock.close()
        self.lab.fleet.kill(self.processes)

    def describe(self) -> str:
        return "\n".join(
            f"--- worker {i} (exit {p.poll()}):\n{log_tail(self.logs[i])}" for i, p in enumerate(self.processes)
        )


def exchange_self(lab: Lab, size: int, rounds: int, block: int, run: int) -> list[float]:
    mesh = SelfMesh(lab, size, f"exchange-self-{size}-{run}")
    try:
        mesh.form()
        mesh.spawn(alltoall(rounds, block))
        codes = wait_all(mesh.processes, f"self-formed all-to-all N={size}", mesh.describe)
        if any(codes):
            raise BenchError(f"self-formed all-to-all N={size}: workers exited {codes}", mesh.describe())
        return rates(mesh.logs, size, rounds, f"self-formed all-to-all N={size}", mesh.describe())
    finally:
        mesh.close()


def bench_exchange(lab: Lab, size: int, repeats: int, block: int = BLOCK) -> Exchange:
    rounds = ROUNDS.get(size, max(10, ROUNDS[4] * 3 // (size - 1)))
    result = Exchange(size, rounds, block, load=load())
    for run in range(repeats):  # alternating, so that a change of load hits both ways alike
        first, second = (exchange_meshd, exchange_self) if run % 2 == 0 else (exchange_self, exchange_meshd)
        for way in (first, second):
            found = way(lab, size, rounds, block, run)
            (result.meshd if way is exchange_meshd else result.own).append(found)
            name = "meshd's sockets" if way is exchange_meshd else "self-formed sockets"
            progress(f"all-to-all N={size} run {run + 1}/{repeats}, {name}: median {statistics.median(found):.1f} MB/s")
    return result


# ---------------------------------------------------------------------------------------------------------------
# Report


def report_handoff(handoffs: list[Handoff], probe: list[float], exchanges: list[Exchange]) -> str:
    parts = []
    if handoffs:
        rows = []
        for run in handoffs:
            rows.append(
                [
                    str(run.size),
                    str(run.runs),
                    ms(statistics.median(run.to_started)),
                    ms(max(run.to_started)),
                    ms(statistics.median(run.to_stamp)),
                    ms(max(run.to_stamp)),
                    run.load,
                ]
            )
        head = ["N", "runs", "ready -> worker_started, median", "max", "ready -> worker holds every socket, median"]
        head += ["max", "load"]
        text = "### 8a. Mesh ready -> the worker holds every data socket (over every slot of every run)\n\n"
        text += table(head, rows)
        notes = []
        if probe:
            notes.append(
                "The same worker spawned bare (no mesh): spawn -> its first stamp, median "
                f"{ms(statistics.median(probe))}, max {ms(max(probe))} ({len(probe)} runs): the interpreter's start, "
                "included in the last columns."
            )
        options = handoffs[-1].options
        if options:
            notes.append(f"A handed socket's options, read by the worker: {options}.")
        parts.append(text + ("\n\n" + " ".join(notes) if notes else ""))
    if exchanges:
        rows = []
        for run in exchanges:
            rows.append(
                [
                    str(run.size),
                    f"{run.rounds} x {run.block // 1024} KiB",
                    f"{statistics.median(w for one in run.meshd for w in one):.1f}",
                    f"{statistics.median(w for one in run.own for w in one):.1f}",
                    f"{statistics.median(run.ratios):.2f}",
                    f"{min(run.ratios):.2f}-{max(run.ratios):.2f}",
                    f"{len(run.meshd)}",
                    run.load,
                ]
            )
        head = ["N", "rounds x block", "MB/s via meshd", "MB/s self-formed", "ratio", "ratio range", "pairs", "load"]
        text = "### 8b. All-to-all (examples/alltoall.py) through meshd's handed sockets vs self-formed ones\n\n"
        text += table(head, rows)
        text += (
            "\n\nMB/s: the median worker (all runs) of payload sent plus received per second, as it prints after its"
            " last round. Ratio: the median over pairs of back-to-back runs (meshd, self-formed) of their median"
            " workers' ratio; the range shows the run-to-run noise of the shared machine. Under meshd the daemons"
            " keep their control links (heartbeats) beside the workers; the self-formed sockets get the options"
            " trio gives meshd's (TCP_NODELAY, TCP_NOTSENT_LOWAT 16 KiB)."
        )
        parts.append(text)
    return "## 8. Hand-off to the worker\n\n" + "\n\n".join(parts)
