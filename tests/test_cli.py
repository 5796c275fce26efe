"""The command line as a user meets it: the real ``python -m meshd`` in subprocesses, every wait bounded.

A good tool fails fast and says why in one line (no traceback), ends quietly when its reader goes away, starts
without loading what it does not need, and never leaves a restart loop or orphaned daemons behind. ``meshd cluster``
runs on ``meshd.cluster``: a daemon that cannot run stops it with the daemon's own message, its daemons die with
it even under kill -9, its logs stay in ``--log-dir``, and it refuses ports that another cluster holds.

``meshd status`` and ``meshd watch`` against a running mesh, and ``meshd run`` with a port that stays busy (exit 1),
are here too; a stop that comes while ``meshd run`` is binding its port is in test_orderly_stop.py, and the
failure modes of a running mesh each have their own module (test_formation.py, test_peer_silence.py, ...).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.cluster.local import STARTS_FILE
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.names import EPOCH_MODES
from meshd.listen import early_addresses
from tests.harness.procs import (
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


async def test_status_cli_json_table_and_unreachable(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    address = cluster.admin(0)

    as_json = harness.spawn("status-json", ["status", "--admin", str(address), "--json"])
    harness.check(await harness.wait_exit(as_json) == 0, "meshd status --json did not exit 0")
    lines = as_json.stdout().splitlines()
    harness.check(len(lines) == 1, f"meshd status --json printed {len(lines)} lines, expected one JSON object")
    status = json.loads(lines[0])
    types = {"index": int, "epoch": int, "incarnation": str, "state": str, "peers": list}
    for name, kind in types.items():
        harness.check(name in status, f"status --json lacks {name!r}: {status}")
        harness.check(type(status[name]) is kind, f"status field {name} = {status[name]!r} is not {kind.__name__}")
    harness.check(status["index"] == 0 and status["epoch"] == 1, f"status of the wrong daemon: {status}")
    harness.check(re.fullmatch(r"[0-9a-f]{16}", status["incarnation"]), f"incarnation {status['incarnation']!r}")
    harness.check(status["state"] == "ready", f"state {status['state']!r}")
    harness.check(len(status["peers"]) == cluster.size - 1, f"peers {status['peers']}")
    peer_types = {
        "index": (int,),
        "address": (str,),
        "state": (str,),
        "epoch": (int, type(None)),
        "since": (float, int),
        "connects": (int,),
        "failures": (int,),
        "last_error": (str, type(None)),
    }
    for peer in status["peers"]:
        for name, kinds in peer_types.items():
            harness.check(name in peer, f"peer row lacks {name!r}: {peer}")
            harness.check(type(peer[name]) in kinds, f"peer field {name} = {peer[name]!r} has the wrong type")
        harness.check(peer["state"] in ("up", "down"), f"peer state {peer['state']!r}")
        harness.check(peer["address"] == f"{HOST}:{cluster.mesh_ports[peer['index']]}", f"peer address {peer}")
        harness.check(peer["state"] == "up" and peer["epoch"] == 1, f"peer row {peer}")
        harness.check(peer["since"] > 0 and peer["connects"] >= 1 and peer["failures"] >= 0, f"peer row {peer}")

    table = harness.spawn("status-table", ["status", "--admin", str(address)])
    harness.check(await harness.wait_exit(table) == 0, "meshd status did not exit 0")
    text = table.stdout()
    harness.check("ready" in text and "PEER" in text, f"status table lacks its header or state:\n{text}")
    for index in (1, 2):
        harness.check(f"{HOST}:{cluster.mesh_ports[index]}" in text, f"status table lacks peer {index}:\n{text}")

    (unused,) = free_ports(1)
    nobody = harness.spawn("status-unreachable", ["status", "--admin", f"{HOST}:{unused}"])
    code = await harness.wait_exit(nobody)
    stderr = nobody.stderr()
    harness.check(code == 1, f"meshd status against nothing exited {code}, expected 1")
    harness.check(f"{HOST}:{unused}" in stderr, f"the unreachable address is not named:\n{stderr}")
    harness.check("Traceback" not in stderr, "an unreachable daemon printed a traceback")


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


# ----- meshd watch


async def test_watch_cli_prints_events_as_they_happen(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)

    watcher = harness.spawn("watch", ["watch", "--admin", str(cluster.admin(0))], pipe_stdout=True)
    # The snapshot comes first, as a status table: once it is printed, the watcher is subscribed.
    await harness.read_line(watcher, lambda line: line.startswith("meshd index 0 "), "snapshot")
    victim = daemons[2]
    killed = trio.current_time()
    victim.signal(signal.SIGKILL)
    line = await harness.read_line(watcher, lambda line: " link_down " in line, "link_down")
    took = trio.current_time() - killed
    harness.check("peer=2" in line, f"link_down line names another peer: {line!r}")
    print(f"\nmeshd watch printed link_down {took:.3f}s after kill -9: {line.strip()}")

    watcher.signal(signal.SIGINT)
    code = await harness.wait_exit(watcher)
    harness.check(code == 0, f"meshd watch exited {code} on SIGINT, expected 0")


# ----- meshd run


@pytest.mark.parametrize("which", ["mesh port", "admin websocket"])
async def test_busy_port_exits_1_naming_the_port(harness: Harness, which):
    """Exit 1 with a one-line error naming the port (not an uncaught exception that happens to exit 1 too)."""
    cluster = harness.cluster(2, bind=0.5)
    busy = cluster.mesh_ports[0] if which == "mesh port" else cluster.admin_ports[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, busy))
        holder.listen()
        started = time.monotonic()
        daemon = harness.start(cluster, 0, epoch=1)
        code = await harness.wait_exit(daemon)
        took = time.monotonic() - started
    stderr = daemon.stderr()
    harness.check(code == 1, f"a daemon whose {which} is busy exited {code}, expected 1")
    harness.check(f"{HOST}:{busy}" in stderr and which in stderr, f"stderr does not name the busy {which} {busy}")
    harness.check(
        "Traceback" not in stderr,
        "a busy port ended in an uncaught exception (traceback on stderr) instead of a clean error message",
    )
    harness.check(took >= 0.4, f"gave up after {took:.2f}s, before the bind period (0.5s) was over")
    print(f"\nbusy {which}: exit 1 after {took:.2f}s with timeouts.bind = 0.5")


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


async def test_cluster_whose_workers_finish_their_job_ends_with_exit_0(harness: Harness):
    """A finite job: every worker exits 0, every daemon stops in order, and the cluster ends instead of restarting."""
    mesh, admin = free_port_range(2), free_port_range(2)
    alltoall = str(Path(__file__).resolve().parent.parent / "examples" / "alltoall.py")
    worker = ["--exec", "--", sys.executable, alltoall, "--rounds", "20", "--every", "10"]
    proc = harness.spawn("cluster-job", cluster_args(2, mesh, admin, "--duration", "60", *worker))
    code = await harness.wait_exit(proc, timeout=30.0)
    stdout = proc.stdout()
    harness.check(code == 0, f"meshd cluster exited {code}:\n{stdout}\n{proc.stderr()}")
    harness.check("the job is done" in stdout, f"the cluster did not say the job is done:\n{stdout}")
    harness.check("restarting" not in stdout, f"a daemon was restarted after its job:\n{stdout}")


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


# ----- the start-up path: addresses from the raw TOML, before the config's structuring loads


@pytest.mark.parametrize(
    ("toml", "index", "flags", "expected"),
    [
        pytest.param(
            'index = 1\n[cluster]\npeers = ["127.0.0.1:7000", "127.0.0.1:7001"]\n',
            None,
            (None, None),
            [("127.0.0.1", 7001), ("127.0.0.1", 7100)],
            id="the slot's peer address and the default admin",
        ),
        pytest.param(
            '[cluster]\npeers = ["a:1", "b:2"]\nlisten = "0.0.0.0:7000"\n[admin]\nlisten = "[::1]:9000"\n',
            0,
            (None, None),
            [("0.0.0.0", 7000), ("::1", 9000)],
            id="cluster.listen and admin.listen",
        ),
        pytest.param(
            '[cluster]\npeers = ["a:1", "b:2"]\n',
            0,
            (("127.0.0.2", 5), ("127.0.0.3", 6)),
            [("127.0.0.2", 5), ("127.0.0.3", 6)],
            id="the flags win",
        ),
        pytest.param('[cluster]\npeers = ["a:1"]\n', 4, (None, None), [("127.0.0.1", 7100)], id="index out of range"),
        pytest.param("not toml [", 0, (None, None), [("127.0.0.1", 7100)], id="not TOML: the daemon says why later"),
    ],
)
def test_the_early_listen_addresses_come_from_the_raw_toml(tmp_path, toml, index, flags, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml, encoding="utf-8")
    assert early_addresses(path, index, *flags) == expected


def test_the_epoch_mode_names_are_the_enums():
    assert set(EPOCH_MODES) == {mode.value for mode in EpochMode} - {EpochMode.FIXED.value}


def test_meshd_run_loads_neither_attrs_nor_trio_before_its_mesh_port_listens(tmp_path):
    """What ``meshd run`` imports up to its listening sockets: the standard library, ``meshd.cli``,
    ``meshd.core.names``, ``meshd.listen`` and ``meshd.errors`` (spawn -> listening is part of the contract)."""
    probe = (
        "import sys, meshd.cli, meshd.listen\n"
        "heavy = sorted(m for m in ('attrs', 'attr', 'cattrs', 'trio', 'loguru', 'meshd.config', 'meshd.core.wire')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.strip() == "", f"loaded before listening: {found.stdout}"
