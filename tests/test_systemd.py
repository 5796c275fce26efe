"""Failure mode: a daemon under systemd (``Type=notify``). The test plays systemd: it binds the datagram socket that
``$NOTIFY_SOCKET`` names and reads what the daemon says.

- ``READY=1`` once, when the mesh port listens (a connect succeeds by then), before the mesh is formed;
- ``STATUS=`` follows the mesh: forming with 0 links up, then ready with every link up as the peers come;
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while the daemon runs, and none while it is SIGSTOPped;
- ``STOPPING=1`` on SIGTERM, then exit 0;
- the worker (``--exec``) does not inherit ``NOTIFY_SOCKET`` (it must not speak to systemd in the daemon's name).

Real processes through ``tests.harness.procs`` (a path socket, and an ``@name`` abstract one); unit tests of
``meshd.notify`` without a daemon. Every wait is bounded and fails with the daemons' logs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from loguru import logger

from meshd.core.status import MeshState
from meshd.core.wire import Epoch
from meshd.errors import ExitCode
from meshd.notify import Notifier, child_environ, socket_address, status_line, watchdog_interval
from tests.harness.procs import HOST, Daemon, Harness

# WATCHDOG_USEC of the watchdog test (0.2 s): the daemon pings every 0.1 s.
WATCHDOG_USEC = 200_000
# How long a SIGSTOPped daemon is watched for pings that must not come.
STOPPED_FOR = 1.0
# How long the fake systemd may take to read the datagrams a daemon sent just before it exited.
DRAIN = 0.2

# A worker that records the environment it got, then waits to be ended with its daemon.
ENV_WORKER = """\
import json, os, sys, time
path = os.path.join(sys.argv[1], "worker-%s.json" % os.environ["MESHD_INDEX"])
with open(path + ".tmp", "w") as file:
    json.dump(dict(os.environ), file)
os.replace(path + ".tmp", path)
time.sleep(60)
"""


class FakeSystemd:
    """systemd's end of the notification socket: every datagram received, split into its ``KEY=VALUE`` lines."""

    def __init__(self, name: str) -> None:
        self.name = name  # as NOTIFY_SOCKET says it: a path or "@abstract"
        self.received: list[tuple[float, str]] = []  # (trio time, one line)

    def lines(self, key: str | None = None) -> list[str]:
        """Every line received (``key``: only the values of that key), in order."""
        if key is None:
            return [line for _, line in self.received]
        return [line.partition("=")[2] for _, line in self.received if line.partition("=")[0] == key]

    def count(self, line: str) -> int:
        return sum(1 for _, each in self.received if each == line)

    def times(self, line: str) -> list[float]:
        return [at for at, each in self.received if each == line]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            await sock.bind(socket_address(self.name))
            task_status.started()
            while True:
                data = await sock.recv(65536)
                now = trio.current_time()
                self.received += [(now, line) for line in data.decode().split("\n") if line]

    async def wait(self, harness: Harness, daemon: Daemon, done: object, what: str) -> None:
        """Until ``done()`` holds; fails (with the logs) when the daemon exits first or it takes over DEADLINE."""

        async def probe() -> tuple[bool, object]:
            if done():  # type: ignore[operator]
                return True, None
            harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode} before {what}")
            return False, self.lines()

        await harness.eventually(probe, what)


@contextlib.asynccontextmanager
async def fake_systemd(name: str) -> AsyncIterator[FakeSystemd]:
    systemd = FakeSystemd(name)
    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.serve)
        yield systemd
        nursery.cancel_scope.cancel()


STATUS_LINE = re.compile(r"mesh (forming|ready|degraded|stopping), epoch 1, ([0-2])/2 links up")


async def test_systemd_sees_ready_once_listening_status_per_change_and_stopping(harness: Harness, tmp_path: Path):
    cluster = harness.cluster(3)
    (tmp_path / "env_worker.py").write_text(ENV_WORKER, encoding="utf-8")
    worker = ["--exec", "--", sys.executable, str(tmp_path / "env_worker.py"), str(tmp_path)]
    path = str(tmp_path / "notify")
    async with fake_systemd(path) as systemd:
        d0 = harness.start(cluster, 0, 1, extra_args=worker, env={"NOTIFY_SOCKET": path})
        await systemd.wait(harness, d0, lambda: systemd.count("READY=1"), "READY=1")
        # READY means the mesh port listens: a connect succeeds now.
        with socket.create_connection((HOST, cluster.mesh_ports[0]), timeout=1.0):
            pass
        await systemd.wait(
            harness, d0, lambda: "mesh forming, epoch 1, 0/2 links up" in systemd.lines("STATUS"), "forming"
        )
        peers = [harness.start(cluster, index, 1, extra_args=worker) for index in (1, 2)]
        ready = "mesh ready, epoch 1, 2/2 links up"
        await systemd.wait(harness, d0, lambda: ready in systemd.lines("STATUS"), "STATUS= of a ready mesh")
        await harness.wait_ready([d0, *peers], epoch=1)
        env_file = tmp_path / "worker-0.json"
        await systemd.wait(harness, d0, env_file.exists, "the worker's start")

        d0.signal(signal.SIGTERM)
        await systemd.wait(harness, d0, lambda: systemd.count("STOPPING=1"), "STOPPING=1")
        code = await harness.wait_exit(d0)
        harness.check(code == ExitCode.OK, f"d0 exited {code} after SIGTERM, expected 0")
        await trio.sleep(DRAIN)

    statuses = systemd.lines("STATUS")
    harness.check(systemd.count("READY=1") == 1, f"READY=1 sent {systemd.count('READY=1')} times: {systemd.lines()}")
    harness.check(systemd.times("READY=1") < systemd.times("STOPPING=1"), f"STOPPING before READY: {systemd.lines()}")
    harness.check(all(STATUS_LINE.fullmatch(line) for line in statuses), f"unexpected STATUS lines: {statuses}")
    harness.check(statuses[0] == "mesh forming, epoch 1, 0/2 links up", f"the first STATUS is {statuses[0]!r}")
    harness.check(statuses.index(ready) > 0, f"no forming before ready: {statuses}")
    harness.check(all(a != b for a, b in itertools.pairwise(statuses)), f"a STATUS line repeated: {statuses}")
    harness.check(statuses[-1].startswith("mesh stopping"), f"the last STATUS is {statuses[-1]!r}")
    harness.check(not systemd.count("WATCHDOG=1"), "WATCHDOG=1 without WATCHDOG_USEC")
    environment = json.loads(env_file.read_text(encoding="utf-8"))
    harness.check(environment.get("MESHD_INDEX") == "0", f"the worker's environment: {environment}")
    leaked = [key for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if key in environment]
    harness.check(not leaked, f"the worker inherited {leaked}")


async def test_watchdog_pings_while_running_none_while_stopped_abstract_socket(harness: Harness):
    cluster = harness.cluster(2)
    name = f"@meshd-test-{os.getpid()}-{secrets.token_hex(4)}"
    async with fake_systemd(name) as systemd:
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        d0 = harness.start(cluster, 0, 1, env=env)
        await systemd.wait(harness, d0, lambda: systemd.count("READY=1"), "READY=1 on the abstract socket")
        await systemd.wait(harness, d0, lambda: systemd.count("WATCHDOG=1") >= 6, "six WATCHDOG=1 pings")
        pings = systemd.times("WATCHDOG=1")
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        median = gaps[len(gaps) // 2]
        harness.check(median < WATCHDOG_USEC / 1e6, f"pings {median:.3f}s apart (median), systemd's limit 0.2s")

        d0.signal(signal.SIGSTOP)
        await trio.sleep(0.3)  # a ping sent just before the stop has arrived by now
        before = systemd.count("WATCHDOG=1")
        await trio.sleep(STOPPED_FOR)
        stopped = systemd.count("WATCHDOG=1") - before
        d0.signal(signal.SIGCONT)
        harness.check(stopped == 0, f"{stopped} WATCHDOG=1 from a SIGSTOPped daemon")
        await systemd.wait(harness, d0, lambda: systemd.count("WATCHDOG=1") > before, "pings again after SIGCONT")

        d0.signal(signal.SIGTERM)
        await systemd.wait(harness, d0, lambda: systemd.count("STOPPING=1"), "STOPPING=1")
        code = await harness.wait_exit(d0)
        harness.check(code == ExitCode.OK, f"d0 exited {code} after SIGTERM, expected 0")
    harness.check(systemd.lines("STATUS")[0] == "mesh forming, epoch 1, 0/1 links up", systemd.lines())


# ----- meshd.notify alone


def test_no_notifier_without_notify_socket():
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "@"}) is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "200000"}) is None


def test_abstract_names_and_paths():
    assert socket_address("@meshd/notify") == "\0meshd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@x"})
    assert notifier is not None and notifier.address == "\0x"


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid():
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}, pid) == pytest.approx(0.1)
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(pid)}, pid) == pytest.approx(0.1)
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    for bad in ("", "0", "-5", "1e6", "x"):
        assert watchdog_interval({"WATCHDOG_USEC": bad}, pid) is None
    assert watchdog_interval({}, pid) is None
    mismatch = {"NOTIFY_SOCKET": "/nowhere", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    notifier = Notifier.from_environ(mismatch, pid=2)
    assert notifier is not None and notifier.watchdog_interval is None


def test_children_do_not_inherit_the_notification_variables():
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert child_environ(environ) == {"PATH": "/bin"}


def test_status_lines():
    assert status_line(MeshState.READY, Epoch(5), 3, 3) == "mesh ready, epoch 5, 3/3 links up"
    assert (
        status_line(MeshState.FORMING, Epoch(7, 0xAB), 0, 2) == "mesh forming, epoch 7.00000000000000ab, 0/2 links up"
    )
    assert status_line(MeshState.AWAITING, None, 0, 2).startswith("mesh awaiting")


@contextlib.contextmanager
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2.0)
        yield sock, path


def test_messages_on_the_wire(tmp_path: Path):
    with receiver(tmp_path) as (sock, path):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
        assert notifier is not None
        try:
            assert notifier.ready() and notifier.status("mesh forming\nmore") and notifier.status("mesh forming\nmore")
            assert notifier.stopping() and notifier.watchdog()
            received = [sock.recv(4096) for _ in range(4)]
        finally:
            notifier.close()
    # One datagram each; a repeated STATUS is not sent again; a status is one line.
    assert received == [b"READY=1", b"STATUS=mesh forming more", b"STOPPING=1", b"WATCHDOG=1"]


def test_a_missing_socket_never_raises_and_is_logged_once(tmp_path: Path):
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{message}")
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    try:
        assert not notifier.ready()
        assert not notifier.status("mesh ready")
        assert not notifier.stopping()
    finally:
        logger.remove(sink)
        notifier.close()
    assert len(messages) == 1 and "cannot notify systemd" in messages[0], messages


async def test_keep_alive_pings_every_interval(tmp_path: Path, autojump_clock):
    with receiver(tmp_path) as (sock, path):
        sock.setblocking(False)
        notifier = Notifier(path, watchdog=0.1)
        try:
            with trio.move_on_after(0.45):
                await notifier.keep_alive()
            await Notifier(path).keep_alive()  # no watchdog: returns at once
        finally:
            notifier.close()
        received = []
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(sock.recv(4096))
    assert received == [b"WATCHDOG=1"] * 5  # at 0, 0.1, 0.2, 0.3, 0.4
