"""A small harness for tests that run real ``meshd`` processes on loopback.

Every wait is bounded by a deadline; when one expires the test fails with the daemons' logs in the message.
``Harness.close`` kills every process the harness started, whatever state the test left them in (even SIGSTOP).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import trio

from meshd.admin import client
from meshd.admin.messages import SNAPSHOT, StatusRequest
from meshd.core.address import Address

HOST = "127.0.0.1"
# Upper bound of every wait: generous, because CI runs on a busy 2-core machine.
DEADLINE = 20.0
# Bound on one admin status request.
STATUS_TIMEOUT = 3.0
# Short timeouts so that failures are detected (and tests finish) quickly.
FAST_TIMEOUTS: dict[str, float] = {
    "connect": 0.5,
    "handshake": 0.5,
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 0.5,
    "backoff_initial": 0.05,
    "backoff_max": 0.5,
    "bind": 2.0,
}
# How much of each log goes into a failure message.
LOG_TAIL_CHARS = 6000
# What a request to a daemon that is not there (or dies while answering) raises.
ADMIN_ERRORS = client.CLIENT_ERRORS

_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, never handed out before in this test session.

    All sockets are held at once while the kernel picks (port 0), so the ports are distinct; they are closed
    before returning, without ever having had a connection, so nothing lingers in TIME_WAIT.
    """
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def write_config(
    path: Path,
    name: str,
    mesh_ports: Iterable[int],
    timeouts: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """A TOML config for a cluster whose peers listen on ``mesh_ports``; ``extra`` is appended verbatim."""
    peers = [f"{HOST}:{port}" for port in mesh_ports]
    lines = ["[cluster]", f"name = {toml_value(name)}", f"peers = {toml_value(peers)}", "", "[timeouts]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in (timeouts or {}).items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


@dataclass
class Cluster:
    name: str
    mesh_ports: list[int]
    admin_ports: list[int]
    config: Path
    timeouts: dict[str, float]

    @property
    def size(self) -> int:
        return len(self.mesh_ports)

    def admin(self, index: int) -> Address:
        return Address(HOST, self.admin_ports[index])

    def mesh(self, index: int) -> Address:
        return Address(HOST, self.mesh_ports[index])


@dataclass(eq=False)
class Proc:
    """One process started by the harness, with its output in files (or stdout in a pipe, read by a thread)."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[Any]
    out_path: Path
    err_path: Path
    files: list[IO[Any]] = field(default_factory=list)
    lines: queue.Queue[str] | None = None
    seen: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        if self.lines is not None:
            return "".join(self.seen)
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        code = self.returncode
        state = "running" if code is None else f"exited {code}"
        out, err = self.stdout(), self.stderr()
        parts = [f"----- {self.name} (pid {self.pid}, {state}): {' '.join(self.argv[1:])}"]
        if out.strip():
            parts.append(f"[stdout]\n{out[-LOG_TAIL_CHARS:]}")
        parts.append(f"[stderr]\n{err[-LOG_TAIL_CHARS:]}")
        return "\n".join(parts)


@dataclass(eq=False)
class Daemon(Proc):
    index: int = 0
    epoch: int | str | None = 0  # what --epoch said: an integer, "auto" or "await" (None: the config file's)
    admin: Address = field(default_factory=lambda: Address(HOST, 0))


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    with contextlib.suppress(ValueError, OSError):  # the harness closed the pipe
        for line in stream:
            lines.put(line)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[Proc] = []
        self._serial = 0

    # ----- failure reporting

    def logs(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs) or "(no processes started)"

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"{message}\n\n===== process logs =====\n{self.logs()}")

    def check(self, condition: object, message: str) -> None:
        if not condition:
            self.fail(message)

    # ----- clusters and processes

    def cluster(self, size: int, name: str = "proc-test", **timeouts: float) -> Cluster:
        mesh_ports = free_ports(size)
        admin_ports = free_ports(size)
        merged = {**FAST_TIMEOUTS, **timeouts}
        self._serial += 1
        config = write_config(self.tmp / f"cluster-{self._serial}.toml", name, mesh_ports, merged)
        return Cluster(name, mesh_ports, admin_ports, config, merged)

    def spawn(
        self, name: str, args: list[str], *, pipe_stdout: bool = False, cls: type[Proc] = Proc, **extra: Any
    ) -> Any:
        """Start ``python -m meshd ARGS``; stdout and stderr go to files (stdout to a line queue with pipe_stdout)."""
        self._serial += 1
        stem = self.tmp / f"{self._serial:02d}-{name}"
        out_path, err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        argv = [sys.executable, "-m", "meshd", *args]
        err = err_path.open("wb")
        files: list[IO[Any]] = [err]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if pipe_stdout:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, text=True, bufsize=1
            )
            assert popen.stdout is not None
            files.append(popen.stdout)
            lines: queue.Queue[str] | None = queue.Queue()
            threading.Thread(target=_pump, args=(popen.stdout, lines), daemon=True).start()
        else:
            out = out_path.open("wb")
            files.append(out)
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
            lines = None
        proc = cls(name=name, argv=argv, popen=popen, out_path=out_path, err_path=err_path, files=files, **extra)
        proc.lines = lines
        self.procs.append(proc)
        return proc

    def start(
        self,
        cluster: Cluster,
        index: int,
        epoch: int | str | None,
        *,
        config: Path | None = None,
        admin: Address | None = None,
        extra_args: Iterable[str] = (),
        name: str | None = None,
    ) -> Daemon:
        """Start ``meshd run`` for slot ``index``; ``epoch`` is an integer, "auto" or "await", or None to leave
        ``--epoch`` out (the config file then names it)."""
        address = admin or cluster.admin(index)
        args = [
            "run",
            "--config", str(config or cluster.config),
            "--index", str(index),
            *([] if epoch is None else ["--epoch", str(epoch)]),
            "--admin", str(address),
            *extra_args,
        ]  # fmt: skip
        name = name or f"d{index}-e{epoch}"
        return self.spawn(name, args, cls=Daemon, index=index, epoch=epoch, admin=address)

    def start_all(self, cluster: Cluster, epoch: int, **kwargs: Any) -> list[Daemon]:
        return [self.start(cluster, index, epoch, **kwargs) for index in range(cluster.size)]

    async def wait_exit(self, proc: Proc, timeout: float = DEADLINE) -> int:
        """The exit code of ``proc``; fails the test if it has not exited within ``timeout`` seconds."""
        try:
            return await trio.to_thread.run_sync(functools.partial(proc.popen.wait, timeout=timeout))
        except subprocess.TimeoutExpired:
            self.fail(f"{proc.name} (pid {proc.pid}) did not exit within {timeout}s")

    async def read_line(self, proc: Proc, match: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        """The first further stdout line of a pipe_stdout process that ``match`` accepts."""
        assert proc.lines is not None, "read_line needs pipe_stdout=True"
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"no {what} line from {proc.name} within {timeout}s")
            try:
                line = await trio.to_thread.run_sync(functools.partial(proc.lines.get, timeout=min(remaining, 0.5)))
            except queue.Empty:
                if proc.returncode is not None and proc.lines.empty():
                    await trio.sleep(0.2)  # let the reader thread drain what the process wrote last
                    if proc.lines.empty():
                        self.fail(f"{proc.name} exited ({proc.returncode}) before printing a {what} line")
                continue
            proc.seen.append(line)
            if match(line):
                return line

    def close(self) -> None:
        """Kill every process still running (SIGKILL also ends a stopped one), reap it and close its files."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=DEADLINE)
            for file in proc.files:
                with contextlib.suppress(OSError):
                    file.close()

    # ----- admin queries

    async def status(self, address: Address, timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
        """The daemon's status over the admin websocket, or None when it does not answer in time."""
        try:
            return await client.request(address, StatusRequest(), timeout=timeout)
        except ADMIN_ERRORS:
            return None

    async def statuses(self, daemons: Iterable[Daemon]) -> list[dict[str, Any] | None]:
        daemons = list(daemons)
        results: list[dict[str, Any] | None] = [None] * len(daemons)

        async def one(position: int, daemon: Daemon) -> None:
            results[position] = await self.status(daemon.admin)

        async with trio.open_nursery() as nursery:
            for position, daemon in enumerate(daemons):
                nursery.start_soon(one, position, daemon)
        return results

    async def eventually(
        self,
        probe: Callable[[], Awaitable[tuple[bool, Any]]],
        what: str,
        timeout: float = DEADLINE,
        interval: float = 0.05,
    ) -> Any:
        """Poll ``probe`` (returning ``(done, observation)``) until done; fail with the last observation and logs."""
        deadline = trio.current_time() + timeout
        observation: Any = None
        while True:
            done, observation = await probe()
            if done:
                return observation
            if trio.current_time() > deadline:
                self.fail(f"timed out after {timeout}s waiting for {what}; last observation:\n{observation!r}")
            await trio.sleep(interval)

    async def wait_ready(self, daemons: list[Daemon], epoch: int, timeout: float = DEADLINE) -> list[dict[str, Any]]:
        """Wait until every daemon reports ``ready`` at ``epoch`` with every peer ``up`` at ``epoch``."""

        async def probe() -> tuple[bool, Any]:
            for daemon in daemons:
                if daemon.returncode is not None:
                    self.fail(f"{daemon.name} exited with {daemon.returncode} while waiting for a ready mesh")
            found = await self.statuses(daemons)
            return all(is_ready(status, epoch) for status in found), found

        return await self.eventually(probe, f"{len(daemons)} daemons ready at epoch {epoch}", timeout)


def is_ready(status: dict[str, Any] | None, epoch: int) -> bool:
    return (
        status is not None
        and status["state"] == "ready"
        and status["epoch"] == epoch
        and all(peer["state"] == "up" and peer["epoch"] == epoch for peer in status["peers"])
    )


def peer_row(status: dict[str, Any], index: int) -> dict[str, Any]:
    (row,) = [peer for peer in status["peers"] if peer["index"] == index]
    return row


@dataclass
class Watch:
    """Events from one daemon's admin ``watch`` stream, collected by a background task."""

    address: Address
    snapshot: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] in kinds]


@contextlib.asynccontextmanager
async def watching(harness: Harness, daemons: Iterable[Daemon]) -> AsyncIterator[list[Watch]]:
    """Watch every daemon's events while the block runs; each watcher is subscribed before the block starts."""

    async def follow(watch: Watch, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The admin client's watch: its snapshot is bounded, the stream ends when the daemon goes away.
        started = False
        try:
            async with contextlib.aclosing(client.watch(watch.address, timeout=STATUS_TIMEOUT)) as messages:
                async for message in messages:
                    if started:
                        watch.events.append(message)
                        continue
                    if message.get("event") != SNAPSHOT:
                        harness.fail(f"watch at {watch.address} began with {message!r}, not a snapshot")
                    watch.snapshot = message["status"]
                    task_status.started()
                    started = True
        except ADMIN_ERRORS as exc:
            if not started:
                harness.fail(f"the watch at {watch.address} failed before its snapshot: {exc!r}")
        watch.ended = True

    watches = [Watch(daemon.admin) for daemon in daemons]
    async with trio.open_nursery() as nursery:
        for watch in watches:
            await nursery.start(follow, watch)
        yield watches
        nursery.cancel_scope.cancel()
