"""The worker under real daemons: ``meshd run --exec`` and ``[worker] socket`` end to end.

Real processes only (``tests.harness.procs``); the worker's own side against a fake meshd is test_worker_client.py.
Every worker here is a tiny script (WORKER, written into the test's tmp_path) that records what happened to it in
files beside it, so that each test judges the daemon by the worker's own account:

- the hand-off is byte-exact: workers that write the instant they start read exactly each peer's bytes, and the
  daemons stop with 0 once every worker is done;
- a fence stops the worker (SIGTERM, ``stop_grace``, SIGKILL) and reaps it before the daemon exits 75;
- a failing worker makes its daemon exit 70 (``worker_exited``), and the next generation gets new workers;
- kill -9 of the daemon leaves no worker behind;
- a data hello from a stale incarnation or another generation is refused and disturbs nothing;
- socket mode: one attached worker per daemon, its sockets, the ``fenced`` line, and the exit after it leaves.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from meshd.admin import client
from meshd.core.wire import DataHello, Epoch, Refuse, RefuseReason
from meshd.errors import ExitCode
from meshd.worker import Mesh, MeshError
from tests.harness.peer import data_exchange
from tests.harness.procs import (
    DEADLINE,
    DISTURBANCES,
    Cluster,
    Daemon,
    Harness,
    Proc,
    is_ready,
    watching,
    write_config,
)

# The worker every test runs, in one of its modes (see its --help). Standard library and meshd.worker only.
WORKER = r'''
import argparse, hashlib, json, os, signal, socket, sys, threading, time
from pathlib import Path

from meshd.worker import Mesh

parser = argparse.ArgumentParser()
parser.add_argument("--mode", required=True, choices=["exchange", "hold", "finish", "attach"])
parser.add_argument("--dir", required=True, type=Path)
parser.add_argument("--size", type=int, default=256 * 1024, help="exchange: payload bytes per ordered pair")
parser.add_argument("--linger", type=float, default=0.0, help="hold: seconds between SIGTERM and the exit")
parser.add_argument("--ignore-term", action="store_true", help="hold: never exit on SIGTERM (only SIGKILL ends it)")
parser.add_argument("--path", help="attach: the daemon's worker socket")
parser.add_argument("--code", type=int, default=3, help="finish: the exit code once DIR/finish exists")
args = parser.parse_args()
TIMEOUT = 20.0


def record(name, **fields):
    """One JSON line appended to DIR/NAME (each line written whole, then the file closed)."""
    with open(args.dir / name, "a", encoding="utf-8") as file:
        file.write(json.dumps({"time": time.time(), "pid": os.getpid(), **fields}) + "\n")


def payload(sender, receiver, epoch, size):
    head = f"from {sender} to {receiver} in {epoch}\n".encode()
    block = hashlib.sha256(head).digest()
    body = (block * (size // len(block) + 1))[:size]
    return head + body


def read_exactly(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(min(65536, count - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def exchange(mesh, size):
    """Write to every peer at once (one thread each), read exactly every peer's bytes, then half-close and check
    that nothing follows. Returns the problems."""
    problems = []
    for _, sock in mesh.peers_except_me():
        sock.settimeout(TIMEOUT)
    writers = []
    for peer, sock in mesh.peers_except_me():
        data = payload(mesh.index, peer, mesh.epoch, size)
        writer = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        writer.start()
        writers.append(writer)
    for peer, sock in mesh.peers_except_me():
        expected = payload(peer, mesh.index, mesh.epoch, size)
        got = read_exactly(sock, len(expected))
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            problems.append(
                f"from peer {peer}: {len(got)} of {len(expected)} bytes, first difference at byte {at}: "
                f"got {got[max(0, at - 8):at + 24]!r}, expected {expected[max(0, at - 8):at + 24]!r}"
            )
    for writer in writers:
        writer.join(TIMEOUT)
    for _, sock in mesh.peers_except_me():
        sock.shutdown(socket.SHUT_WR)
    for peer, sock in mesh.peers_except_me():
        extra = read_exactly(sock, 1 << 20)
        if extra:
            problems.append(f"from peer {peer}: {len(extra)} bytes after the payload: {extra[:40]!r}")
    return problems


if args.mode == "attach":
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            mesh = Mesh.attach(args.path, timeout=TIMEOUT)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    record("attached", index=mesh.index, size=mesh.size, epoch=mesh.epoch, cluster=mesh.cluster,
           incarnation=f"{mesh.incarnation:016x}", peers=mesh.peers, admin=mesh.admin,
           sockets=[sock is not None for sock in mesh.sockets])
    for peer, sock in mesh.peers_except_me():
        sock.settimeout(TIMEOUT)
        sock.sendall(payload(mesh.index, peer, mesh.epoch, args.size))
    for peer, sock in mesh.peers_except_me():
        expected = payload(peer, mesh.index, mesh.epoch, args.size)
        got = read_exactly(sock, len(expected))
        record("exchanged", peer=peer, ok=got == expected, got=len(got))
    ended = mesh.wait_ended(TIMEOUT)
    record("ended", ended=ended, reason=mesh.end_reason)
    time.sleep(args.linger)
    record("closing")
    mesh.close(0)
    sys.exit(0)

mesh = Mesh.from_env(watch_sigterm=False)
record("started", index=mesh.index, epoch=mesh.epoch, fds=os.environ["MESHD_FDS"])

if args.mode == "exchange":
    problems = exchange(mesh, args.size)
    record("exchange", index=mesh.index, problems=problems)
    if problems:
        print(f"worker {mesh.index}: MISMATCH: {problems}", flush=True)
        sys.exit(3)
    print(f"worker {mesh.index}: exchange ok", flush=True)
    mesh.close()
    sys.exit(0)

if args.mode == "finish":
    deadline = time.monotonic() + TIMEOUT
    while not (args.dir / "finish").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    record("finishing", code=args.code)
    os._exit(args.code)

# hold: run until SIGTERM (recorded each time it comes), linger, exit 0; or never, with --ignore-term
terms = []
signal.signal(signal.SIGTERM, lambda signum, frame: (terms.append(time.time()), record("term")))
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if terms and not args.ignore_term:
        time.sleep(args.linger)
        record("done")
        os._exit(0)
    time.sleep(0.01)
record("timeout")
os._exit(9)
'''


# ----- helpers


class Workers:
    """The worker script and what its processes recorded, in one directory."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "workers"
        self.dir.mkdir()
        self.script = root / "worker.py"
        self.script.write_text(WORKER, encoding="utf-8")

    def argv(self, mode: str, *options: str) -> list[str]:
        return [sys.executable, str(self.script), "--mode", mode, "--dir", str(self.dir), *options]

    def exec_args(self, mode: str, *options: str) -> list[str]:
        """``meshd run`` arguments that make this the daemon's worker (``--exec`` must come last)."""
        return ["--exec", "--", *self.argv(mode, *options)]

    def records(self, name: str, pid: int | None = None) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [line for line in lines if pid is None or line["pid"] == pid]


async def recorded(harness: Harness, workers: Workers, name: str, pid: int) -> dict[str, Any]:
    """The first ``name`` record of worker ``pid``, once it wrote one (a worker runs a moment before it records)."""

    async def probe() -> tuple[bool, Any]:
        found = workers.records(name, pid)
        return bool(found), found

    found = await harness.eventually(probe, f"worker {pid} to record {name!r}")
    return found[0]


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (R, S, Z, ...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


async def worker_running(harness: Harness, daemons: list[Daemon], epoch: int) -> list[dict[str, Any]]:
    """Wait until every daemon is ready at ``epoch`` with its worker running in that generation; the statuses."""

    async def probe() -> tuple[bool, Any]:
        for daemon in daemons:
            if daemon.returncode is not None:
                harness.fail(f"{daemon.name} exited with {daemon.returncode} while its worker should start")
        found = await harness.statuses(daemons)
        done = all(
            is_ready(status, epoch) and status["worker"]["state"] == "running" and status["worker"]["epoch"] == epoch
            for status in found
        )
        return done, found

    return await harness.eventually(probe, f"workers running at epoch {epoch}")


async def answering(harness: Harness, daemon: Daemon) -> dict[str, Any]:
    """Wait until ``daemon``'s admin websocket answers; its status."""

    async def probe() -> tuple[bool, Any]:
        if daemon.returncode is not None:
            harness.fail(f"{daemon.name} exited with {daemon.returncode} before its admin websocket answered")
        status = await harness.status(daemon.admin)
        return status is not None, status

    return await harness.eventually(probe, f"{daemon.name}'s admin websocket")


async def exit_at(harness: Harness, proc: Proc, timeout: float = DEADLINE) -> tuple[int, float]:
    """``proc``'s exit code and the wall clock just after the harness saw it exit."""
    code = await harness.wait_exit(proc, timeout)
    return code, time.time()


def worker_config(harness: Harness, cluster: Cluster, name: str, worker: str) -> Path:
    """``cluster``'s peers and timeouts with a ``[worker]`` table (TOML text)."""
    return write_config(harness.tmp / name, cluster.name, cluster.mesh_ports, cluster.timeouts, worker)


async def data_hello_answer(harness: Harness, cluster: Cluster, target: int, hello: DataHello) -> object:
    """Dial a data connection to ``target``'s mesh port with ``hello``, holding the cluster's key; the daemon's
    answer. A REFUSE must be followed by the daemon closing the connection (an ACCEPT is returned: the caller fails)."""
    answer, rest = await data_exchange(cluster.mesh(target), hello, cluster.keyring(), timeout=DEADLINE)
    harness.check(not rest, f"bytes after the answer {answer!r}: {rest!r}")
    return answer


# ----- 1. the hand-off is byte-exact


async def test_workers_that_write_at_once_read_exactly_their_peers_bytes(harness: Harness):
    """Three workers each write a distinct pattern to every peer the instant they start (some before their peers'
    daemons hand over), then read exactly the pattern every peer wrote to them and nothing after it: no byte of
    meshd's in front, none lost. Every worker exits 0, so every daemon stops in order with 0. The daemons await
    their epoch from the "controller" (this test), so the watchers are subscribed before anything happens."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(3)
    daemons = [harness.start(cluster, index, "await", extra_args=workers.exec_args("exchange")) for index in range(3)]
    for daemon in daemons:
        await answering(harness, daemon)
    async with watching(harness, daemons) as watches:
        for daemon in daemons:
            answer = await client.start(daemon.admin, Epoch(4))
            harness.check(answer.error is None, f"{daemon.name} refused the start: {answer}")
        codes = [await harness.wait_exit(daemon) for daemon in daemons]
    harness.check(codes == [0, 0, 0], f"the daemons exited {codes} after their workers were done, expected 0s")
    for index in range(3):
        [started] = harness_records(harness, workers, "started", index)
        harness.check(started["epoch"] == "4", f"worker {index} was told epoch {started['epoch']!r}")
        [result] = harness_records(harness, workers, "exchange", index)
        harness.check(result["problems"] == [], f"worker {index} read wrong bytes: {result['problems']}")
    for daemon, watch in zip(daemons, watches, strict=True):
        kinds = [event["event"] for event in watch.events]
        starts = watch.of("worker_started")
        harness.check(
            len(starts) == 1 and starts[0]["epoch"] == 4 and starts[0]["pid"] is not None,
            f"{daemon.name}: worker_started events {starts}",
        )
        harness.check(
            "ready" in kinds and kinds.index("ready") < kinds.index("worker_started"),
            f"{daemon.name}: the worker started before the mesh was ready: {kinds}",
        )
        [started] = harness_records(harness, workers, "started", daemon.index)
        harness.check(started["pid"] == starts[0]["pid"], f"{daemon.name}: worker pid {starts[0]} vs {started}")
        exits = watch.of("worker_exited")
        # Published before the orderly stop, which drains the watchers before the daemon ends.
        harness.check(
            len(exits) == 1 and exits[0]["exit"] == 0 and exits[0]["epoch"] == 4 and "stopping" in kinds,
            f"{daemon.name}: worker_exited events {exits}, all: {kinds}",
        )
        harness.check("worker (pid" in daemon.stderr() and "its job is done" in daemon.stderr(), "no exit log line")


def harness_records(harness: Harness, workers: Workers, name: str, index: int) -> list[dict[str, Any]]:
    found = [line for line in workers.records(name) if line.get("index") == index]
    harness.check(found, f"worker {index} recorded no {name!r}; all records: {workers.records(name)}")
    return found


# ----- 2. a fence stops the worker before the daemon exits 75


async def test_fence_stops_the_worker_and_reaps_it_before_exit_75(harness: Harness):
    """Slot 1 dies and is replaced at a newer epoch: slot 0's daemon is fenced. Its worker, which takes 0.5 s to
    stop after SIGTERM, has received SIGTERM and finished by the time the daemon exits 75 (were the daemon gone
    first, PDEATHSIG would have killed the worker before it recorded "done"), and is reaped (no /proc entry)."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    hold = workers.exec_args("hold", "--linger", "0.5")
    daemons = [harness.start(cluster, index, 1, extra_args=hold) for index in range(2)]
    statuses = await worker_running(harness, daemons, 1)
    pid = statuses[0]["worker"]["pid"]
    daemons[1].signal(signal.SIGKILL)
    await harness.wait_exit(daemons[1])
    replacement = harness.start(cluster, 1, 2, extra_args=hold)
    code, exited = await exit_at(harness, daemons[0])
    state = process_state(pid)  # at once: the daemon must have reaped its worker before it exited
    harness.check(code == ExitCode.FENCED, f"{daemons[0].name} exited {code}, expected 75")
    harness.check(state is None, f"the fenced daemon's worker (pid {pid}) is still there ({state}) after its exit")
    terms, done = workers.records("term", pid), workers.records("done", pid)
    harness.check(terms, f"the worker (pid {pid}) never got SIGTERM; records: {workers.records('started')}")
    harness.check(done, f"the worker (pid {pid}) got SIGTERM at {terms} but did not finish its 0.5 s stop")
    harness.check(
        terms[0]["time"] + 0.5 <= done[0]["time"] <= exited,
        f"SIGTERM at {terms[0]['time']}, worker done at {done[0]['time']}, daemon exit seen at {exited}",
    )
    harness.check(replacement.returncode is None, f"the replacement exited {replacement.returncode}")
    if len(terms) > 1:
        print(f"\n[worker] the fenced worker got SIGTERM {len(terms)} times: {[t['time'] for t in terms]}")


async def test_fence_kills_a_worker_that_ignores_sigterm_after_stop_grace(harness: Harness):
    """A worker that ignores SIGTERM is SIGKILLed ``worker.stop_grace`` (0.5 s) after it, and the daemon still
    exits 75 promptly, with its worker reaped."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    config = worker_config(harness, cluster, "grace.toml", "[worker]\nstop_grace = 0.5\n")
    stubborn = workers.exec_args("hold", "--ignore-term")
    daemons = [harness.start(cluster, index, 1, config=config, extra_args=stubborn) for index in range(2)]
    statuses = await worker_running(harness, daemons, 1)
    pid = statuses[0]["worker"]["pid"]
    daemons[1].signal(signal.SIGKILL)
    await harness.wait_exit(daemons[1])
    replaced = time.time()
    harness.start(cluster, 1, 2, config=config, extra_args=stubborn)
    code, exited = await exit_at(harness, daemons[0], timeout=10.0)
    state = process_state(pid)
    harness.check(code == ExitCode.FENCED, f"{daemons[0].name} exited {code}, expected 75")
    harness.check(state is None, f"the stubborn worker (pid {pid}) is still there ({state}) after the daemon's exit")
    terms = workers.records("term", pid)
    harness.check(terms, f"the stubborn worker (pid {pid}) never got SIGTERM")
    harness.check(not workers.records("timeout", pid), "the stubborn worker ran out its own time")
    waited = exited - terms[0]["time"]
    harness.check(waited >= 0.5, f"the daemon exited {waited:.2f} s after SIGTERM, before stop_grace (0.5 s)")
    harness.check(exited - replaced < 8.0, f"the fenced daemon took {exited - replaced:.1f} s to exit")


# ----- 3. a failing worker: exit 70, then a new generation with new workers


async def test_a_failing_worker_makes_its_daemon_exit_70_and_the_next_generation_gets_new_workers(harness: Harness):
    """Slot 1's worker exits 3: its daemon publishes worker_exited (exit 3) and exits 70; slot 0 stays. The dead
    slot is restarted at epoch 2, which fences slot 0 (its worker stopped in order); slot 0 restarted at epoch 2
    forms the new generation, and both slots start new workers there.

    An orderly stop drains the watchers before the daemon ends, so the watcher gets slot 1's worker_exited."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    hold = workers.exec_args("hold")
    daemons = [
        harness.start(cluster, 0, 1, extra_args=hold),
        harness.start(cluster, 1, 1, extra_args=workers.exec_args("finish")),
    ]
    statuses = await worker_running(harness, daemons, 1)
    old_pids = [status["worker"]["pid"] for status in statuses]
    async with watching(harness, daemons) as watches:
        (workers.dir / "finish").touch()
        code = await harness.wait_exit(daemons[1])
        harness.check(code == ExitCode.WORKER_FAILED, f"{daemons[1].name} exited {code} after its worker failed")

        async def probe() -> tuple[bool, Any]:
            return bool(watches[0].of("link_down")), watches[0].events

        await harness.eventually(probe, "slot 0 to see slot 1 leave")
    exits = watches[1].of("worker_exited")
    harness.check(
        len(exits) == 1 and exits[0]["exit"] == 3 and exits[0]["epoch"] == 1 and exits[0]["pid"] == old_pids[1],
        f"worker_exited events of the failed slot: {exits}; all: {watches[1].events}",
    )
    harness.check("it failed with exit 3" in daemons[1].stderr(), "the daemon did not log the worker's failure")
    harness.check(daemons[0].returncode is None, f"slot 0 exited {daemons[0].returncode} when its peer left")
    harness.check(not watches[0].of("worker_exited", "fenced"), f"slot 0 saw {watches[0].events}")

    # The controller restarts the dead slot at a newer epoch; the survivor is fenced and restarted at that epoch.
    replacement = harness.start(cluster, 1, 2, extra_args=hold)
    await answering(harness, replacement)
    async with watching(harness, [replacement]) as [watch]:
        code = await harness.wait_exit(daemons[0])
        harness.check(code == ExitCode.FENCED, f"{daemons[0].name} exited {code}, expected 75")
        harness.check(process_state(old_pids[0]) is None, "the fenced survivor's worker outlived it")
        harness.check(workers.records("done", old_pids[0]), "the fenced survivor's worker was not stopped in order")
        survivor = harness.start(cluster, 0, 2, extra_args=hold)
        statuses = await worker_running(harness, [survivor, replacement], 2)

        async def started() -> tuple[bool, Any]:
            return bool(watch.of("worker_started")), watch.events

        await harness.eventually(started, "worker_started at the replacement")
    pids = [status["worker"]["pid"] for status in statuses]
    harness.check(not set(pids) & set(old_pids), f"new generation's workers {pids}, old ones {old_pids}")
    for pid in pids:
        record = await recorded(harness, workers, "started", pid)
        harness.check(record["epoch"] == "2", f"worker {pid} was told epoch {record['epoch']!r}")
    [event] = watch.of("worker_started")
    harness.check(event["epoch"] == 2 and event["pid"] == pids[1], f"worker_started at the replacement: {event}")


# ----- 4. kill -9 of the daemon


async def test_kill_9_of_the_daemon_leaves_no_worker_behind(harness: Harness):
    """Even a worker that ignores SIGTERM dies with its daemon (PR_SET_PDEATHSIG)."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    stubborn = workers.exec_args("hold", "--ignore-term")
    daemons = [harness.start(cluster, index, 1, extra_args=stubborn) for index in range(2)]
    statuses = await worker_running(harness, daemons, 1)
    pid = statuses[0]["worker"]["pid"]
    harness.check(process_state(pid) not in (None, "Z"), f"the worker (pid {pid}) is not running")
    daemons[0].signal(signal.SIGKILL)
    await harness.wait_exit(daemons[0])

    async def gone() -> tuple[bool, Any]:
        state = process_state(pid)
        return state in (None, "Z"), state  # a zombie is dead: reaping it is init's business now

    await harness.eventually(gone, f"the orphaned worker (pid {pid}) to die", timeout=5.0)
    harness.check(not workers.records("timeout", pid), "the orphaned worker ran out its own time")


# ----- 5. a stale data connection is refused


async def test_a_data_hello_of_a_stale_incarnation_or_another_epoch_is_refused(harness: Harness):
    """Raw DATA hellos to slot 1's mesh port, from "slot 0" (the dialer of the pair): a made-up incarnation of the
    dialer, a wrong incarnation of the target, an older and a newer epoch. Each is refused with its reason, and
    neither daemon's mesh nor worker notices anything."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    hold = workers.exec_args("hold")
    daemons = [harness.start(cluster, index, 1, extra_args=hold) for index in range(2)]
    before = await worker_running(harness, daemons, 1)
    dialer, target = (int(status["incarnation"], 16) for status in before)
    bogus = 0x0BAD0BAD0BAD0BAD
    cases = [
        ("a made-up incarnation of the dialer", DataHello(0, 1, Epoch(1), bogus, target), {RefuseReason.RETIRED}),
        ("a wrong incarnation of the target", DataHello(0, 1, Epoch(1), dialer, bogus), {RefuseReason.RETIRED}),
        ("an older epoch", DataHello(0, 1, Epoch(0), dialer, target), {RefuseReason.STALE_EPOCH}),
        ("a newer epoch", DataHello(0, 1, Epoch(2), dialer, target), {RefuseReason.BEHIND}),
    ]
    async with watching(harness, daemons) as watches:
        for what, hello, reasons in cases:
            answer = await data_hello_answer(harness, cluster, 1, hello)
            harness.check(
                isinstance(answer, Refuse) and answer.reason in reasons and answer.epoch == Epoch(1),
                f"a data hello with {what} was answered {answer!r}, expected a REFUSE {reasons}",
            )
        await trio.sleep(2 * cluster.timeouts["heartbeat_timeout"])  # long enough for a link to fail, were it hurt
        after = await harness.statuses(daemons)
    for daemon, watch, old, new in zip(daemons, watches, before, after, strict=True):
        harness.check(not watch.of(*DISTURBANCES, "worker_exited"), f"{daemon.name} was disturbed: {watch.events}")
        harness.check(new is not None and is_ready(new, 1), f"{daemon.name} is no longer ready: {new}")
        assert new is not None
        harness.check(new["worker"] == old["worker"], f"{daemon.name}'s worker changed: {old['worker']} -> {new}")
        harness.check(
            [(p["incarnation"], p["connects"]) for p in new["peers"]]
            == [(p["incarnation"], p["connects"]) for p in old["peers"]],
            f"{daemon.name}'s links changed: {old['peers']} -> {new['peers']}",
        )
        harness.check(process_state(new["worker"]["pid"]) not in (None, "Z"), f"{daemon.name}'s worker is gone")


# ----- 6. socket mode


async def test_attached_workers_exchange_bytes_one_per_daemon_and_are_told_the_fence(harness: Harness):
    """``[worker] socket``: one attached worker per daemon gets its one data socket and exchanges bytes with the
    other's; a second attach is refused (MeshError). Slot 1 stops in order and its worker is told; a replacement
    at a newer epoch fences slot 0, whose worker gets the ``fenced`` line, lingers 0.3 s and closes, and only
    then does the daemon exit 75."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    paths = [harness.tmp / f"w{index}.sock" for index in range(2)]
    configs = [
        worker_config(harness, cluster, f"attach-{index}.toml", f'[worker]\nsocket = "{path}"\nstop_grace = 3.0\n')
        for index, path in enumerate(paths)
    ]
    daemons = [harness.start(cluster, index, 1, config=configs[index]) for index in range(2)]
    attached = [
        harness.launch(f"w{index}", workers.argv("attach", "--path", str(path), "--linger", "0.3", "--size", "100000"))
        for index, path in enumerate(paths)
    ]
    statuses = await worker_running(harness, daemons, 1)

    async def exchanged() -> tuple[bool, Any]:
        for proc in attached:
            harness.check(proc.returncode is None, f"{proc.name} exited {proc.returncode} before the fence")
        found = workers.records("exchanged")
        return len(found) == 2, found

    for record in await harness.eventually(exchanged, "both attached workers to exchange their bytes"):
        harness.check(record["ok"] and record["got"] > 100000, f"an attached worker read wrong bytes: {record}")
    for index, record in enumerate(sorted(workers.records("attached"), key=lambda line: line["index"])):
        expected_sockets = [peer != index for peer in range(2)]
        harness.check(
            record["index"] == index
            and record["size"] == 2
            and record["epoch"] == "1"
            and record["sockets"] == expected_sockets
            and record["incarnation"] == statuses[index]["incarnation"]
            and record["admin"] == str(cluster.admin(index)),
            f"attached worker {index} was told {record}",
        )
        harness.check(statuses[index]["worker"]["pid"] is None, f"slot {index}: {statuses[index]['worker']}")

    # One attached worker per daemon.
    try:
        second = await trio.to_thread.run_sync(functools.partial(Mesh.attach, paths[0], timeout=5.0))
    except MeshError as exc:
        harness.check("attached" in str(exc), f"the second attach failed with {exc!r}")
    else:
        second.close()
        harness.fail("a second worker attached to slot 0's daemon")

    daemons[1].signal(signal.SIGTERM)
    code = await harness.wait_exit(daemons[1])
    harness.check(code == 0, f"{daemons[1].name} exited {code} after SIGTERM")
    replacement = harness.start(cluster, 1, 2, config=configs[1])
    code, exited = await exit_at(harness, daemons[0])
    harness.check(code == ExitCode.FENCED, f"{daemons[0].name} exited {code}, expected 75")
    for proc in attached:
        worker_code = await harness.wait_exit(proc)
        harness.check(worker_code == 0, f"{proc.name} exited {worker_code}")
    ends = {record["pid"]: record for record in workers.records("ended")}
    closings = {record["pid"]: record for record in workers.records("closing")}
    for proc in attached:
        end = ends.get(proc.pid)
        harness.check(end is not None and end["ended"] and end["reason"], f"{proc.name} was not told: {end}")
        harness.check(proc.pid in closings, f"{proc.name} did not close")
    fenced_end = ends[attached[0].pid]
    harness.check("epoch 2" in fenced_end["reason"], f"slot 0's worker was told {fenced_end['reason']!r}")
    harness.check(
        closings[attached[0].pid]["time"] <= exited,
        f"slot 0's daemon exited (seen {exited}) before its worker closed ({closings[attached[0].pid]['time']})",
    )
    harness.check(replacement.returncode is None, f"the replacement exited {replacement.returncode}")
    harness.check(not paths[0].exists(), f"the fenced daemon left its worker socket {paths[0]}")
