"""What the flood watches on the daemons while it runs: the target's RSS (``/proc/PID/status``), and its status over
one admin connection opened before the flood (whose round trips also show how long the daemon's loop was busy)."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from meshd.admin import client as admin
from meshd.admin.messages import StatusRequest
from meshd.core.address import Address

# How often the RSS is sampled during a flood.
RSS_INTERVAL = 0.05
# How often the probe asks the status during a flood.
PROBE_INTERVAL = 0.1
# Bound on one status round trip over the probe's connection.
PROBE_TIMEOUT = 5.0
MIB = 1024 * 1024


def raise_fd_limit() -> int:
    """Raise this process's RLIMIT_NOFILE to its hard limit (a flood holds hundreds of sockets); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def rss(pid: int) -> int:
    """The resident set size of process ``pid`` in bytes (VmRSS); ProcessLookupError when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)  # a zombie has no VmRSS


def mib(size: int | None) -> str:
    return "?" if size is None else f"{size / MIB:.1f} MiB"


class RssSampler:
    """The RSS of one process every RSS_INTERVAL while ``run`` runs: the first sample and the peak."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.first: int | None = None
        self.peak = 0
        self.samples = 0

    def sample(self) -> int | None:
        try:
            size = rss(self.pid)
        except ProcessLookupError:
            return None
        if self.first is None:
            self.first = size
        self.peak = max(self.peak, size)
        self.samples += 1
        return size

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.sample()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.sample()


class Probe:
    """One admin websocket to a daemon, opened before a flood (so it holds one of its ``limits.admin_clients``
    places): ``status`` asks over it; ``run`` asks every PROBE_INTERVAL and keeps the longest round trip. ``lost``
    says why the connection ended, if it did: a flood must never close a connection that was admitted before it."""

    def __init__(self, address: Address, timeout: float = PROBE_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self.longest = 0.0
        self.asked = 0
        self.unanswered = 0  # round trips over the bound
        self.lost: str | None = None
        self._ws: Any = None

    async def open(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connection open (run it in a nursery with ``nursery.start``) until cancelled."""
        async with admin.connect(self.address, timeout=self.timeout) as ws:
            self._ws = ws
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._ws = None

    async def status(self) -> dict[str, Any] | None:
        """The daemon's status over the probe's connection; None when it is not answered within the bound."""
        if self._ws is None or self.lost is not None:
            return None
        began = trio.current_time()
        with trio.move_on_after(self.timeout):
            try:
                await self._ws.send_message(json.dumps(StatusRequest().to_json()))
                answer = json.loads(await self._ws.get_message())
            except ConnectionClosed as exc:
                self.lost = f"closed by the daemon ({exc.reason.code} {exc.reason.reason or ''})".strip()
                return None
            took = trio.current_time() - began
            self.asked += 1
            self.longest = max(self.longest, took)
            return answer if isinstance(answer, dict) else None
        self.unanswered += 1
        self.longest = max(self.longest, self.timeout)
        return None

    async def run(self, interval: float = PROBE_INTERVAL) -> None:
        while self.lost is None:
            await self.status()
            await trio.sleep(interval)
