"""The test-side wrapper of ``meshd.cluster`` for tests that run real ``meshd`` processes on loopback.

Ports, config files, the ``meshd run`` command line, starting processes (which die with the test run, even when it
is killed) and controllers come from ``meshd.cluster``; this module adds what tests need on top: every wait bounded
by a deadline, and a failure message that carries the logs of every process started (by the harness itself or by a
controller it made). ``Harness.close`` kills every process the harness started, whatever state the test left them
in (even SIGSTOP). An auto-mode cluster under a restarting orchestrator is ``tests.harness.orchestrate``.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import trio

from meshd.admin import client
from meshd.admin.messages import SNAPSHOT, StatusRequest
from meshd.cluster import spawn as cluster_spawn
from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import EpochController
from meshd.cluster.spawn import FAST_TIMEOUTS, PortAllocator, meshd_argv, run_argv
from meshd.core.address import Address
from meshd.core.auth import Keyring, parse_keys

HOST = cluster_spawn.HOST
# Upper bound of every wait: generous, because CI runs on a busy 2-core machine.
DEADLINE = 20.0
# Bound on one admin status request.
STATUS_TIMEOUT = 3.0
# How much of each log goes into a failure message.
LOG_TAIL_CHARS = 6000
# What a request to a daemon that is not there (or dies while answering) raises.
ADMIN_ERRORS = client.CLIENT_ERRORS

# Event kinds that mean a ready mesh was disturbed.
DISTURBANCES = ("link_down", "degraded", "forming", "fenced", "peer_restarted", "stopping")

# One allocator for the whole test session: no port is handed out twice.
_PORTS = PortAllocator(HOST)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, never handed out before in this test session."""
    return _PORTS.take(count)


def free_port_range(count: int) -> list[int]:
    """``count`` consecutive free loopback ports (for ``meshd cluster --base-port``), never handed out before."""
    return _PORTS.take_range(count)


def write_config(
    path: Path,
    name: str,
    mesh_ports: Iterable[int],
    timeouts: Mapping[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """A TOML config for a cluster whose peers listen on loopback ``mesh_ports``; ``extra`` is appended verbatim."""
    peers = [Address(HOST, port) for port in mesh_ports]
    return cluster_spawn.write_config(path, name, peers, timeouts, extra)


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

    @property
    def key_file(self) -> Path:
        """The cluster's secret (every config the harness writes in one test shares it)."""
        return self.config.parent / cluster_spawn.SHARED_KEY_FILE

    def keyring(self) -> Keyring:
        return Keyring(parse_keys(self.key_file.read_text(encoding="utf-8")))


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


def describe_incarnation(incarnation: Incarnation) -> str:
    """A controller's process for a failure message: what it was, how it ended, the end of its log."""
    code = incarnation.process.poll()
    state = "running" if code is None else f"exited {code}"
    try:
        log = incarnation.log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log = "(no log)"
    head = f"----- d{incarnation.slot} {incarnation.role} (pid {incarnation.pid}, {state}, epoch {incarnation.epoch})"
    return f"{head}: {' '.join(incarnation.process.args[3:])}\n[log {incarnation.log.name}]\n{log[-LOG_TAIL_CHARS:]}"


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[Proc] = []
        self.controllers: list[Controller] = []
        self._serial = 0

    # ----- failure reporting

    def logs(self) -> str:
        parts = [proc.describe() for proc in self.procs]
        parts += [describe_incarnation(each) for controller in self.controllers for each in controller.processes()]
        return "\n".join(parts) or "(no processes started)"

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"{message}\n\n===== process logs =====\n{self.logs()}")

    def check(self, condition: object, message: str) -> None:
        if not condition:
            self.fail(message)

    # ----- clusters and processes

    def cluster(self, size: int, name: str = "proc-test", *, consecutive: bool = False, **timeouts: float) -> Cluster:
        """A config for ``size`` daemons on fresh ports (``consecutive``: mesh and admin ports each numbered from a
        base, as ``meshd cluster`` numbers them) with FAST_TIMEOUTS, overridden by ``timeouts``."""
        allocate = free_port_range if consecutive else free_ports
        mesh_ports = allocate(size)
        admin_ports = allocate(size)
        merged = {**FAST_TIMEOUTS, **timeouts}
        self._serial += 1
        config = write_config(self.tmp / f"cluster-{self._serial}.toml", name, mesh_ports, merged)
        return Cluster(name, mesh_ports, admin_ports, config, merged)

    def spawn(
        self, name: str, args: list[str], *, pipe_stdout: bool = False, cls: type[Proc] = Proc, **extra: Any
    ) -> Any:
        """Start ``python -m meshd ARGS``; stdout and stderr go to files (stdout to a line queue with pipe_stdout)."""
        return self.launch(name, meshd_argv(args), pipe_stdout=pipe_stdout, cls=cls, **extra)

    def launch(
        self,
        name: str,
        argv: list[str],
        *,
        pipe_stdout: bool = False,
        cls: type[Proc] = Proc,
        env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> Any:
        """Start ``argv`` (``meshd.cluster.spawn.popen``: it dies with the test run) with its output in files;
        ``env`` adds to (or overrides) the test run's environment."""
        self._serial += 1
        stem = self.tmp / f"{self._serial:02d}-{name}"
        out_path, err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        err = err_path.open("wb")
        files: list[IO[Any]] = [err]
        lines: queue.Queue[str] | None = None
        if pipe_stdout:
            popen = cluster_spawn.popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
            assert popen.stdout is not None
            files.append(popen.stdout)
            lines = queue.Queue()
            threading.Thread(target=_pump, args=(popen.stdout, lines), daemon=True).start()
        else:
            out = out_path.open("wb")
            files.append(out)
            popen = cluster_spawn.popen(argv, stdout=out, stderr=err, env=env)
        proc = cls(name=name, argv=argv, popen=popen, out_path=out_path, err_path=err_path, files=files, **extra)
        proc.lines = lines
        self.procs.append(proc)
        return proc

    def controller(
        self, cluster: Cluster, policy: EpochController, *, cls: type[Controller] = Controller, **options: Any
    ) -> Any:
        """A ``meshd.cluster`` controller of ``cluster``'s slots (run it with ``nursery.start(controller.run)``);
        its processes' logs go into every failure message, and ``close`` kills what it left running."""
        self._serial += 1
        workdir = self.tmp / f"controller-{self._serial}"
        workdir.mkdir()
        options.setdefault("config", cluster.config)
        admins = [cluster.admin(index) for index in range(cluster.size)]
        controller = cls(admins=admins, policy=policy, workdir=workdir, name=cluster.name, **options)
        self.controllers.append(controller)
        return controller

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
        env: Mapping[str, str] | None = None,
    ) -> Daemon:
        """Start ``meshd run`` for slot ``index``; ``epoch`` is an integer, "auto" or "await", or None to leave
        ``--epoch`` out (the config file then names it); ``env`` adds to its environment."""
        address = admin or cluster.admin(index)
        argv = run_argv(config or cluster.config, index, epoch, address, extra_args)
        name = name or f"d{index}-e{epoch}"
        return self.launch(name, argv, cls=Daemon, env=env, index=index, epoch=epoch, admin=address)

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
        popens = [proc.popen for proc in self.procs]
        popens += [each.process for controller in self.controllers for each in controller.processes()]
        for popen in popens:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGKILL)
        for popen in popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=DEADLINE)
        for proc in self.procs:
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

    async def statuses(self, daemons: Iterable[Daemon | Address]) -> list[dict[str, Any] | None]:
        """Each daemon's status (a daemon, or its admin address), asked all at once."""
        daemons = list(daemons)
        results: list[dict[str, Any] | None] = [None] * len(daemons)

        async def one(position: int, daemon: Daemon | Address) -> None:
            results[position] = await self.status(daemon if isinstance(daemon, Address) else daemon.admin)

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


def assert_full_mesh(harness: Harness, daemons: Sequence[Daemon], statuses: Sequence[Any], epoch: int) -> None:
    """Every daemon is ready at ``epoch`` and sees every other daemon up, as the process that really runs it."""
    incarnations = {status["index"]: status["incarnation"] for status in statuses}
    for daemon, status in zip(daemons, statuses, strict=True):
        harness.check(is_ready(status, epoch), f"{daemon.name} is not ready at epoch {epoch}: {status}")
        harness.check(status["index"] == daemon.index, f"{daemon.name} reports index {status['index']}")
        seen = sorted(peer["index"] for peer in status["peers"])
        others = sorted(other.index for other in daemons if other is not daemon)
        harness.check(seen == others, f"{daemon.name} has peers {seen}, expected {others}")
        for peer in status["peers"]:
            harness.check(
                peer["incarnation"] == incarnations[peer["index"]],
                f"{daemon.name} links to incarnation {peer['incarnation']} of peer {peer['index']}, "
                f"which runs {incarnations[peer['index']]}",
            )


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
async def watching(harness: Harness, daemons: Iterable[Daemon | Address]) -> AsyncIterator[list[Watch]]:
    """Watch every daemon's events (a daemon, or its admin address) while the block runs; each watcher is subscribed
    before the block starts."""

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

    watches = [Watch(daemon if isinstance(daemon, Address) else daemon.admin) for daemon in daemons]
    async with trio.open_nursery() as nursery:
        for watch in watches:
            await nursery.start(follow, watch)
        yield watches
        nursery.cancel_scope.cancel()
