"""A flood campaign: a local cluster of real daemons, one of them flooded on its mesh or admin port while every
daemon is watched, and the figures of the run (``TargetRun``) with their tables.

A run: every daemon ready; a watch on every daemon's admin websocket (subscribed before the flood), one more admin
connection to the target (``observe.Probe``: its status before, and round trips during the flood); the target's RSS
before, sampled every 50 ms during, and after; the flood (``clients.Flood``); then 2 x heartbeat_timeout of quiet, in
which a link the flood starved would be declared down; then every daemon's status. The run has problems when any
daemon saw a disturbance (a link down, a state other than ready, a fence, a peer restart), left ready, reconnected a
link, lost a watch or the probe (connections admitted before the flood must survive it), or when a stranger's
connection stayed open past the daemon's bound.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshd.admin import client as admin
from meshd.admin.messages import Snapshot
from meshd.cluster import spawn
from meshd.config import Limits, Timeouts
from meshd.core.address import Address
from meshd.core.status import MeshEvent, MeshState, PeerState, Status
from tools.flood.clients import Flood, FloodResult, Target, admin_target, mesh_target
from tools.flood.observe import Probe, RssSampler, mib
from tools.report import load, ms, table

HOST = spawn.HOST
CLUSTER_NAME = "flood"
EPOCH = 1
# Event names that mean a ready mesh was disturbed (StateChanged events are named after the new state).
DISTURBANCES = frozenset({"link_down", "degraded", "forming", "fenced", "peer_restarted", "stopping", "generation"})
# Bounds on every wait.
READY_TIMEOUT = 60.0  # spawn -> every daemon ready
STATUS_TIMEOUT = 5.0  # one admin request
FLOOD_TIMEOUT = 600.0  # one flood as a whole (each of its clients is bounded far tighter)
LOG_TAIL = 20


class FloodError(Exception):
    """The campaign could not run (a daemon never got ready, a watch failed to start); ``logs`` for the reader."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


def say(text: str) -> None:
    print(f"[flood] {text}", file=sys.stderr, flush=True)


# ----- the cluster


@dataclass
class Member:
    index: int
    mesh: Address
    admin: Address
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_lines(self) -> int:
        try:
            with self.log.open("rb") as file:
                return sum(1 for _ in file)
        except OSError:
            return 0


class LocalCluster:
    """``size`` daemons on fresh loopback ports at epoch 1, with a cluster secret (``write_config`` makes a key)."""

    def __init__(self, size: int, workdir: Path, timeouts: Timeouts) -> None:
        ports = spawn.PortAllocator(HOST).take(2 * size)
        self.workdir = workdir
        self.timeouts = timeouts
        self.limits = Limits()
        peers = [Address(HOST, port) for port in ports[:size]]
        values = {name: getattr(timeouts, name) for name in ("connect", "handshake", "heartbeat_interval")}
        values |= {"heartbeat_timeout": timeouts.heartbeat_timeout, "backoff_max": timeouts.backoff_max}
        self.config = spawn.write_config(workdir / "cluster.toml", CLUSTER_NAME, peers, values)
        self.members = [
            Member(index, peers[index], Address(HOST, ports[size + index]), workdir / f"d{index}.log")
            for index in range(size)
        ]

    @property
    def size(self) -> int:
        return len(self.members)

    def start(self) -> None:
        for member in self.members:
            argv = spawn.run_argv(self.config, member.index, EPOCH, member.admin)
            member.process = spawn.start(argv, member.log)

    def exited(self) -> list[str]:
        return [
            f"daemon {member.index} exited with {member.process.poll()}"
            for member in self.members
            if member.process is not None and member.process.poll() is not None
        ]

    async def statuses(self) -> list[Status | None]:
        found: list[Status | None] = [None] * self.size

        async def one(member: Member) -> None:
            with contextlib.suppress(*admin.CLIENT_ERRORS):
                found[member.index] = await admin.status(member.admin, timeout=STATUS_TIMEOUT)

        async with trio.open_nursery() as nursery:
            for member in self.members:
                nursery.start_soon(one, member)
        return found

    async def wait_ready(self, bound: float = READY_TIMEOUT) -> list[Status]:
        found: list[Status | None] = []
        with trio.move_on_after(bound):
            while True:
                if self.exited():
                    raise FloodError("; ".join(self.exited()), self.logs())
                found = await self.statuses()
                if all(is_ready(status) for status in found):
                    return [status for status in found if status is not None]
                await trio.sleep(0.05)
        states = [None if status is None else str(status.state) for status in found]
        raise FloodError(f"the cluster was not ready within {bound:g} s: {states}", self.logs())

    def logs(self) -> str:
        return (
            "\n".join(
                f"--- daemon {member.index} (pid {member.process.pid if member.process else '-'}):\n"
                f"{spawn.log_tail(member.log, LOG_TAIL)}"
                for member in self.members
            )
            + f"\n(every log is in {self.workdir})"
        )

    def close(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.kill()
        for member in self.members:
            if member.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.process.wait(timeout=10)


def is_ready(status: Status | None) -> bool:
    return (
        status is not None
        and status.state is MeshState.READY
        and all(peer.state is PeerState.UP for peer in status.peers)
    )


def links(status: Status) -> dict[int, tuple[int | None, int]]:
    """Each peer's linked incarnation and how many times its link came up: a reconnect changes it."""
    return {peer.index: (peer.incarnation, peer.connects) for peer in status.peers}


# ----- watching


class Watcher:
    """Every event of one daemon's admin watch, from a snapshot taken before the flood."""

    def __init__(self, index: int, address: Address) -> None:
        self.index = index
        self.address = address
        self.snapshot: Status | None = None
        self.events: list[MeshEvent] = []
        self.ended: str | None = None

    def of(self, *names: str) -> list[MeshEvent]:
        return [event for event in self.events if event.event_name in names]

    def disturbances(self) -> list[MeshEvent]:
        return self.of(*DISTURBANCES)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with contextlib.aclosing(admin.events(self.address, timeout=STATUS_TIMEOUT)) as messages:
                async for message in messages:
                    if isinstance(message, Snapshot):
                        self.snapshot = message.status
                        task_status.started()
                        started = True
                    else:
                        self.events.append(message)
            self.ended = "the daemon closed the watch"
        except admin.CLIENT_ERRORS as exc:
            if not started:
                raise FloodError(f"the watch of daemon {self.index} failed: {exc}") from exc
            self.ended = f"the watch failed: {exc}"


# ----- one flood


@dataclass
class TargetRun:
    """One flood against one port of one daemon, and what every daemon showed meanwhile."""

    flood: FloodResult
    index: int
    before: Status
    after: list[Status | None]
    watchers: list[Watcher]
    rss_before: int | None
    rss_peak: int
    rss_after: int | None
    probe: Probe
    log_lines: int  # lines the target's log grew by during the flood and the quiet after it
    settle: float  # seconds of quiet after the flood
    load: str
    exited: list[str] = field(default_factory=list)

    @property
    def port(self) -> str:
        return self.flood.target.port

    def delta(self, counter: str) -> int | None:
        after = self.after[self.index]
        return None if after is None else getattr(after, counter) - getattr(self.before, counter)

    @property
    def shed(self) -> int | None:
        return self.delta("handshakes_shed" if self.port == "mesh" else "admin_rejected")

    def disturbances(self) -> list[str]:
        return [f"daemon {w.index}: {event.to_json()}" for w in self.watchers for event in w.disturbances()]

    def reconnected(self) -> list[str]:
        """Links whose incarnation or connect count changed over the flood (from the watches' snapshots on)."""
        changed = []
        for watcher, after in zip(self.watchers, self.after, strict=True):
            if after is None or watcher.snapshot is None:
                continue
            if links(after) != links(watcher.snapshot):
                changed.append(f"daemon {watcher.index}: {links(watcher.snapshot)} -> {links(after)}")
        return changed

    def problems(self) -> list[str]:
        problems = list(self.exited)
        problems += [f"disturbance: {line}" for line in self.disturbances()]
        problems += [
            f"daemon {index} is not ready after the flood: {'no status' if status is None else status.state}"
            for index, status in enumerate(self.after)
            if not is_ready(status)
        ]
        problems += [f"links reconnected: {line}" for line in self.reconnected()]
        problems += [f"daemon {w.index}'s watch ended: {w.ended}" for w in self.watchers if w.ended is not None]
        if self.probe.lost is not None:
            problems.append(f"the probe connection (admitted before the flood) was {self.probe.lost}")
        if self.flood.held:
            problems.append(f"{self.flood.held} connections stayed open past the daemon's bound")
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.port,
            "index": self.index,
            "flood": self.flood.to_json(),
            "shed": self.shed,
            "auth_failures": self.delta("auth_failures"),
            "admin_rejected": self.delta("admin_rejected"),
            "handshakes_shed": self.delta("handshakes_shed"),
            "disturbances": self.disturbances(),
            "links_lost": sum(len(w.of("link_down")) for w in self.watchers),
            "ready_after": [is_ready(status) for status in self.after],
            "reconnected": self.reconnected(),
            "rss_before": self.rss_before,
            "rss_peak": self.rss_peak,
            "rss_after": self.rss_after,
            "status_round_trip_max": round(self.probe.longest, 4),
            "status_round_trips": self.probe.asked,
            "probe_lost": self.probe.lost,
            "log_lines": self.log_lines,
            "settle": self.settle,
            "load": self.load,
            "problems": self.problems(),
        }


async def flood_target(
    cluster: LocalCluster,
    port: str,
    *,
    index: int = 0,
    connections: int = 2000,
    kinds: Sequence[str] | None = None,
    concurrency: int = 500,
    seed: int = 0,
    idle_seconds: float = 1.0,
) -> TargetRun:
    """Flood ``port`` ("mesh" or "admin") of daemon ``index`` of a ready cluster; every figure of the run."""
    member = cluster.members[index]
    before = (await cluster.wait_ready(STATUS_TIMEOUT * 2))[index]
    target: Target
    if port == "mesh":
        target = mesh_target(member.mesh, CLUSTER_NAME, index, cluster.size, cluster.timeouts.handshake)
    else:
        target = admin_target(member.admin, CLUSTER_NAME, index, cluster.size, cluster.limits.admin_message_bytes)
    flood = Flood(target, connections, kinds=kinds, concurrency=concurrency, seed=seed, idle_seconds=idle_seconds)
    settle = 2 * cluster.timeouts.heartbeat_timeout
    watchers = [Watcher(each.index, each.admin) for each in cluster.members]
    probe = Probe(member.admin)
    sampler = RssSampler(member.pid)
    lines_before = member.log_lines()
    async with trio.open_nursery() as nursery:
        for watcher in watchers:
            await nursery.start(watcher.run)
        await nursery.start(probe.open)
        before = await _status_over(probe, before)
        await nursery.start(sampler.run)
        nursery.start_soon(probe.run)
        say(f"{port} port of daemon {index}: {connections:,} connections ({', '.join(flood.kinds)}), "
            f"{concurrency} at once")  # fmt: skip
        with trio.fail_after(FLOOD_TIMEOUT):
            result = await flood.run()
        say(f"flood done in {result.seconds:.1f} s; {settle:g} s of quiet (2 x heartbeat_timeout)")
        await trio.sleep(settle)
        after = await cluster.statuses()
        nursery.cancel_scope.cancel()
    rss_after = sampler.sample()
    return TargetRun(
        flood=result,
        index=index,
        before=before,
        after=after,
        watchers=watchers,
        rss_before=sampler.first,
        rss_peak=sampler.peak,
        rss_after=rss_after,
        probe=probe,
        log_lines=member.log_lines() - lines_before,
        settle=settle,
        load=load(),
        exited=cluster.exited(),
    )


async def _status_over(probe: Probe, fallback: Status) -> Status:
    """The target's status over the probe right before the flood (its counters are the baseline)."""
    answer = await probe.status()
    return fallback if answer is None else Status.from_json(answer)


# ----- the report


def summary_table(run: TargetRun) -> str:
    flood = run.flood
    links_lost = sum(len(w.of("link_down")) for w in run.watchers)
    ready = sum(is_ready(status) for status in run.after)
    counter = "handshakes_shed" if run.port == "mesh" else "admin_rejected"
    rows = [
        ["connections attempted", f"{flood.connections:,} ({', '.join(flood.kinds)}; {flood.concurrency} at once)"],
        ["connected", f"{flood.connected:,}"],
        ["taken on by the daemon, then closed", f"{flood.taken:,}"],
        ["closed at once, unheard (client view of shedding)", f"{flood.shed:,}"],
        [f"shed (status {counter} delta)", _count(run.shed)],
        ["auth_failures delta", _count(run.delta("auth_failures"))],
        ["held past the daemon's bound", f"{flood.held:,}"],
        ["links lost (link_down events, all daemons)", f"{links_lost}"],
        ["disturbance events (all daemons)", f"{len(run.disturbances())}"],
        ["daemons ready after / links unchanged", f"{ready}/{len(run.after)} / {'no' if run.reconnected() else 'yes'}"],
        ["status round trip during the flood, max", f"{ms(run.probe.longest)} ({run.probe.asked} asked)"],
        [
            "target RSS before / peak / after",
            f"{mib(run.rss_before)} / {mib(run.rss_peak)} / {mib(run.rss_after)}",
        ],
        ["target log lines written", f"{run.log_lines:,}"],
        ["wall time of the flood", f"{flood.seconds:.1f} s (then {run.settle:g} s of quiet)"],
        ["load average", run.load],
    ]
    title = f"{run.port} port of daemon {run.index} ({flood.target.address})"
    return f"{title}\n" + table(["figure", "value"], rows)


def endings_table(run: TargetRun) -> str:
    rows = [
        [kind, ending, f"{tally.count:,}", f"{tally.resets:,}", f"{tally.longest:.2f} s"]
        for (kind, ending), tally in run.flood.tallies().items()
    ]
    return table(["kind", "how it ended (client view)", "count", "resets", "longest open"], rows)


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="meshd-flood-"))
