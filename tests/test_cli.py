"""The command line as a user meets it: the real ``python -m meshd`` in subprocesses, every wait bounded.

A good tool fails fast and says why in one line (no traceback), ends quietly when its reader goes away, starts
without loading what it does not need, and never leaves a restart loop or orphaned daemons behind. ``meshd cluster``
runs on ``meshd.cluster``: a daemon that cannot run stops it with the daemon's own message, its daemons die with
it even under kill -9, its logs stay in ``--log-dir``, and it refuses ports that another cluster holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.cluster.local import STARTS_FILE
from meshd.core.address import Address
from tests.proc_harness import (
    DEADLINE,
    HOST,
    Cluster,
    Daemon,
    Harness,
    Proc,
    free_port_range,
    free_ports,
    is_ready,
)

# The timeout given to ``meshd status``, and how much longer than it the command may take (a Python start on a
# busy 2-core machine).
STATUS_TIMEOUT = 1.0
START_SLACK = 4.0
# "Promptly": how long ``meshd cluster`` may take to give up on a daemon that cannot run.
PROMPTLY = 10.0
# How long the daemons of a killed ``meshd cluster`` may take to die.
ORPHAN_DEADLINE = 10.0
# What a daemon loads and a command line tool must not (the daemon side of the house).
DAEMON_MODULES = ("meshd.daemon", "meshd.admin.server")


def one_line_error(harness: Harness, proc: Proc, *needles: str) -> str:
    """Its stderr is one ``meshd: ...`` line naming every needle, and no traceback."""
    stderr = proc.stderr()
    lines = stderr.strip().splitlines()
    harness.check("Traceback" not in stderr, f"{proc.name} printed a traceback:\n{stderr}")
    harness.check(len(lines) == 1 and lines[0].startswith("meshd: "), f"{proc.name}: not one line:\n{stderr}")
    for needle in needles:
        harness.check(needle in lines[0], f"{proc.name}'s message does not name {needle!r}: {lines[0]}")
    return lines[0]


async def a_running_daemon(harness: Harness) -> tuple[Cluster, Daemon]:
    """One daemon of a 2-slot cluster (its peer never starts): it runs, forming, and answers on its admin port."""
    cluster = harness.cluster(2, name="cli")
    daemon = harness.start(cluster, 0, epoch=1)

    async def answers() -> tuple[bool, Any]:
        status = await harness.status(daemon.admin)
        return status is not None, status

    await harness.eventually(answers, "the daemon to answer on its admin port")
    return cluster, daemon


async def status_gives_up(harness: Harness, name: str, address: str) -> tuple[Proc, float]:
    """``meshd status --timeout 1`` against ``address``: exit 1 after about the timeout; the process and its time."""
    proc = harness.spawn(name, ["status", "--admin", address, "--timeout", str(STATUS_TIMEOUT)])
    code = await harness.wait_exit(proc, timeout=STATUS_TIMEOUT + START_SLACK + DEADLINE)
    took = time.monotonic() - proc.started
    harness.check(code == 1, f"{name}: meshd status exited {code}, expected 1")
    harness.check(
        STATUS_TIMEOUT * 0.9 <= took <= STATUS_TIMEOUT + START_SLACK,
        f"{name}: meshd status --timeout {STATUS_TIMEOUT:g} took {took:.2f}s",
    )
    return proc, took


# ----- meshd status


async def test_status_of_a_stopped_daemon_exits_1_within_its_timeout(harness: Harness):
    _, daemon = await a_running_daemon(harness)
    daemon.signal(signal.SIGSTOP)
    proc, took = await status_gives_up(harness, "status-stopped", str(daemon.admin))
    one_line_error(harness, proc, str(daemon.admin))
    print(f"\nmeshd status --timeout 1 against a stopped daemon: exit 1 after {took:.2f}s")


async def test_status_of_a_silent_listener_exits_1_within_its_timeout(harness: Harness):
    (port,) = free_ports(1)
    with socket.socket() as silent:
        silent.bind((HOST, port))
        silent.listen()  # the kernel completes the TCP handshake; nothing ever answers
        proc, took = await status_gives_up(harness, "status-silent", f"{HOST}:{port}")
    one_line_error(harness, proc, f"{HOST}:{port}")
    print(f"\nmeshd status --timeout 1 against a silent listener: exit 1 after {took:.2f}s")


async def test_status_of_a_mesh_port_exits_1_with_one_line(harness: Harness):
    cluster, daemon = await a_running_daemon(harness)
    mesh = str(cluster.mesh(0))
    proc = harness.spawn("status-mesh-port", ["status", "--admin", mesh, "--timeout", "3"])
    code = await harness.wait_exit(proc)
    harness.check(code == 1, f"meshd status against a mesh port exited {code}, expected 1")
    one_line_error(harness, proc, mesh)
    harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} after a status on its mesh port")


@pytest.mark.parametrize("reader", ["head -1", "head -c 0"])
async def test_status_into_a_pipe_closed_early_ends_without_a_traceback(harness: Harness, reader: str):
    """``meshd status | head -1`` (and a reader that is gone before anything is written: ``head -c 0``)."""
    _, daemon = await a_running_daemon(harness)
    command = (
        f'{sys.executable} -m meshd status --admin {daemon.admin} | {reader}; echo "meshd exit ${{PIPESTATUS[0]}}"'
    )
    proc = harness.launch("status-pipe", ["bash", "-c", command])
    harness.check(await harness.wait_exit(proc) == 0, "the pipeline failed")
    stdout, stderr = proc.stdout(), proc.stderr()
    harness.check(stderr.strip() == "", f"meshd status wrote to stderr when its reader went away:\n{stderr}")
    code = re.search(r"meshd exit (\d+)", stdout)
    harness.check(code is not None and code.group(1) in ("0", "141"), f"meshd status ended badly:\n{stdout}")
    if reader == "head -1":
        harness.check(stdout.startswith("meshd index 0 of 2"), f"head -1 got no status line:\n{stdout}")


# ----- meshd run


async def test_sigterm_while_waiting_for_a_busy_mesh_port_exits_0(harness: Harness):
    cluster = harness.cluster(2, name="busy", bind=30.0)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((HOST, cluster.mesh_ports[0]))
        holder.listen()
        daemon = harness.start(cluster, 0, epoch=1)

        async def in_its_event_loop() -> tuple[bool, Any]:
            """trio runs (its epoll descriptor is open): the daemon is past its start, retrying the port."""
            harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} with its port busy")
            try:
                links = [os.readlink(entry) for entry in Path(f"/proc/{daemon.pid}/fd").iterdir()]
            except OSError as exc:
                return False, repr(exc)
            return "anon_inode:[eventpoll]" in links, links

        await harness.eventually(in_its_event_loop, "the daemon to run its event loop")
        await trio.sleep(0.5)
        harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} with its port busy")
        daemon.signal(signal.SIGTERM)
        code = await harness.wait_exit(daemon, timeout=5.0)
    harness.check(code == 0, f"SIGTERM while waiting for a busy mesh port: exit {code}, expected 0")
    harness.check("Traceback" not in daemon.stderr(), "SIGTERM while waiting for a port printed a traceback")


async def test_sigterm_as_soon_as_the_mesh_port_listens_exits_0(harness: Harness):
    """``meshd run`` listens before it loads trio: a SIGTERM in that window is noted and still stops it in order."""
    cluster = harness.cluster(2, name="early")
    daemon = harness.start(cluster, 0, epoch=1)

    async def listening() -> tuple[bool, Any]:
        harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} before it listened")
        try:
            stream = await trio.open_tcp_stream(HOST, cluster.mesh_ports[0])
        except OSError as exc:
            return False, repr(exc)
        await stream.aclose()
        return True, None

    await harness.eventually(listening, "the mesh port to accept a connection", interval=0.002)
    daemon.signal(signal.SIGTERM)
    code = await harness.wait_exit(daemon, timeout=5.0)
    harness.check(code == 0, f"SIGTERM right after the mesh port listened: exit {code}, expected 0")
    harness.check("Traceback" not in daemon.stderr(), "SIGTERM right after the listen printed a traceback")


# ----- what a command loads


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reported loading."""
    return {
        line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    ("args", "expected_code", "loads"),
    [
        (["--help"], 0, "meshd.cli"),
        (["status", "--help"], 0, "meshd.cli"),
        (["status", "--admin", "PORT", "--timeout", "1"], 1, "meshd.admin.client"),
    ],
    ids=["meshd--help", "status--help", "status"],
)
async def test_help_and_status_load_neither_the_daemon_nor_the_admin_server(
    harness: Harness, args: list[str], expected_code: int, loads: str
):
    (unused,) = free_ports(1)
    args = [f"{HOST}:{unused}" if arg == "PORT" else arg for arg in args]
    proc = harness.launch("importtime", [sys.executable, "-X", "importtime", "-m", "meshd", *args])
    harness.check(await harness.wait_exit(proc) == expected_code, f"meshd {' '.join(args)} exited {proc.returncode}")
    modules = imported_modules(proc.stderr())
    harness.check(loads in modules, f"-X importtime did not report {loads} (the check reads nothing)")
    loaded = sorted(name for name in modules if name in DAEMON_MODULES)
    harness.check(not loaded, f"meshd {' '.join(args)} imported {loaded}")


# ----- meshd cluster


def starts(log_dir: Path) -> list[dict[str, Any]]:
    """The cluster's record of the daemons it started (empty when it started none)."""
    path = log_dir / STARTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever inherited it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cluster_args(size: int, mesh: list[int], admin: list[int], *extra: str) -> list[str]:
    return ["cluster", "--size", str(size), "--base-port", str(mesh[0]), "--admin-base-port", str(admin[0]), *extra]


async def a_cluster_that_cannot_run(harness: Harness, name: str, args: list[str]) -> tuple[Proc, str, Path]:
    """Run ``meshd cluster ARGS``: it must exit 2 promptly; its stderr and its log directory."""
    proc = harness.spawn(name, args)
    code = await harness.wait_exit(proc, timeout=PROMPTLY + DEADLINE)
    took = time.monotonic() - proc.started
    stderr = proc.stderr()
    harness.check(code == 2, f"meshd cluster exited {code}, expected 2 (a daemon's configuration error)")
    harness.check(took < PROMPTLY, f"meshd cluster took {took:.1f}s to give up")
    harness.check("Traceback" not in stderr, f"meshd cluster printed a traceback:\n{stderr}")
    logs = re.search(r"logs in (\S+)", proc.stdout())
    harness.check(logs is not None, "meshd cluster did not print where its logs are")
    assert logs is not None
    print(f"\n{name}: exit {code} after {took:.2f}s")
    return proc, stderr, Path(logs.group(1))


async def test_cluster_of_size_1_stops_at_once_with_the_daemons_message(harness: Harness):
    mesh, admin = free_port_range(1), free_port_range(1)
    _, stderr, log_dir = await a_cluster_that_cannot_run(harness, "cluster-size-1", cluster_args(1, mesh, admin))
    try:
        harness.check("daemon 0 exited 2" in stderr, f"stderr does not say which daemon failed:\n{stderr}")
        harness.check("configuration error: cluster.peers" in stderr, f"not the daemon's message:\n{stderr}")
        # The default log directory is a fresh one, kept: it holds the one start, never restarted.
        harness.check(log_dir.is_dir() and str(log_dir) in stderr, f"log directory {log_dir} not kept or named")
        record = starts(log_dir)
        harness.check(len(record) == 1, f"the daemon was restarted: {record}")
        log = (log_dir / record[0]["log"]).read_text(encoding="utf-8")
        harness.check("cluster.peers" in log, f"the daemon's log lacks its message:\n{log}")
    finally:
        if log_dir.name.startswith("meshd-cluster-"):
            shutil.rmtree(log_dir, ignore_errors=True)


async def test_cluster_with_a_port_over_65535_stops_at_once_with_the_daemons_message(harness: Harness):
    admin = free_port_range(2)
    log_dir = harness.tmp / "logs"
    args = cluster_args(2, [65535], admin, "--log-dir", str(log_dir))
    _, stderr, printed = await a_cluster_that_cannot_run(harness, "cluster-port-65536", args)
    harness.check("port 65536 is outside 0..65535" in stderr, f"not the daemon's message:\n{stderr}")
    harness.check(printed == log_dir.resolve(), f"printed log directory {printed}, not {log_dir}")
    record = starts(log_dir)
    harness.check(sorted(entry["slot"] for entry in record) == [0, 1], f"a daemon was restarted: {record}")
    harness.check(not any(alive(entry["pid"]) for entry in record), f"a daemon still runs: {record}")


async def _ready_cluster(harness: Harness, name: str, size: int, log_dir: Path) -> tuple[Proc, list[int], list[int]]:
    """``meshd cluster`` on fresh consecutive ports, with every daemon ready at epoch 1."""
    mesh, admin = free_port_range(size), free_port_range(size)
    proc = harness.spawn(name, cluster_args(size, mesh, admin, "--log-dir", str(log_dir)))

    async def ready() -> tuple[bool, Any]:
        harness.check(proc.returncode is None, f"meshd cluster exited {proc.returncode}")
        found = await harness.statuses([Address(HOST, port) for port in admin])
        return all(is_ready(status, 1) for status in found) and len(starts(log_dir)) == size, found

    await harness.eventually(ready, f"meshd cluster's {size} daemons ready at epoch 1")
    return proc, mesh, admin


async def test_cluster_killed_with_sigkill_leaves_no_daemon_alive(harness: Harness):
    log_dir = harness.tmp / "logs"
    proc, _, _ = await _ready_cluster(harness, "cluster-kill-9", 2, log_dir)
    pids = [entry["pid"] for entry in starts(log_dir)]
    harness.check(all(alive(pid) for pid in pids), f"not every daemon runs before the kill: {pids}")
    proc.signal(signal.SIGKILL)
    harness.check(await harness.wait_exit(proc) == -signal.SIGKILL, "meshd cluster did not die by SIGKILL")
    deadline = time.monotonic() + ORPHAN_DEADLINE
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        await trio.sleep(0.05)
    survivors = [pid for pid in pids if alive(pid)]
    harness.check(not survivors, f"daemons {survivors} outlived the kill -9 of meshd cluster")


async def test_cluster_stops_on_sigterm_with_exit_0_and_keeps_its_logs(harness: Harness):
    log_dir = harness.tmp / "logs"
    proc, mesh, _ = await _ready_cluster(harness, "cluster-sigterm", 2, log_dir)
    both_ready = re.compile(r"^0\s+\d+\s+1\s+ready\s+1/1\s+1\s+-\n1\s+\d+\s+1\s+ready\s+1/1\s+1\s+-$", re.M)

    async def shown() -> tuple[bool, Any]:
        stdout = proc.stdout()
        return both_ready.search(stdout) is not None, stdout

    await harness.eventually(shown, "the table to show both daemons ready at epoch 1")
    proc.signal(signal.SIGTERM)
    code = await harness.wait_exit(proc)
    stdout = proc.stdout()
    harness.check(code == 0, f"meshd cluster exited {code} on SIGTERM, expected 0")
    harness.check(f"logs in {log_dir.resolve()}" in stdout, f"the log directory was not printed:\n{stdout}")
    table_head = "cluster epoch 1\nSLOT  PID      EPOCH  STATE      LINKS  STARTS  EXITS\n"
    harness.check(table_head in stdout, f"the table's head changed:\n{stdout}")
    record = starts(log_dir)
    harness.check(sorted(entry["slot"] for entry in record) == [0, 1], f"starts: {record}")
    for entry in record:
        harness.check(not alive(entry["pid"]), f"daemon {entry} outlived meshd cluster")
        log = (log_dir / entry["log"]).read_text(encoding="utf-8")
        harness.check(f"listening on {HOST}:{mesh[entry['slot']]}" in log, f"log {entry['log']}:\n{log}")
    harness.check((log_dir / "cluster.toml").is_file(), "the cluster's config is not kept")


async def test_cluster_refuses_ports_held_by_another_clusters_daemons(harness: Harness):
    other = harness.cluster(2, name="foreign", consecutive=True)
    daemons = harness.start_all(other, epoch=1)
    before = await harness.wait_ready(daemons, epoch=1)
    log_dir = harness.tmp / "logs"
    proc = harness.spawn(
        "cluster-foreign", cluster_args(2, other.mesh_ports, other.admin_ports, "--log-dir", str(log_dir))
    )
    code = await harness.wait_exit(proc, timeout=PROMPTLY + DEADLINE)
    took = time.monotonic() - proc.started
    stderr = proc.stderr()
    harness.check(code == 1, f"meshd cluster on another cluster's ports exited {code}, expected 1")
    harness.check(took < PROMPTLY, f"meshd cluster took {took:.1f}s to refuse")
    harness.check("refusing to start" in stderr and "Traceback" not in stderr, f"stderr:\n{stderr}")
    for index in range(2):
        harness.check(f"{other.mesh(index)} of daemon {index} is taken" in stderr, f"mesh {index}:\n{stderr}")
        harness.check(
            f"{other.admin(index)} of daemon {index} is taken by another meshd: index {index} of cluster 'foreign'"
            in stderr,
            f"admin port {index} not named as the foreign cluster's:\n{stderr}",
        )
    harness.check(not starts(log_dir), f"it started daemons: {starts(log_dir)}")
    after = await harness.statuses(daemons)
    harness.check(
        [status and status["incarnation"] for status in after] == [status["incarnation"] for status in before]
        and all(is_ready(status, 1) for status in after),
        f"the other cluster was disturbed: {after}",
    )
