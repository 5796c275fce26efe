"""The worker's side of the contract (``meshd.worker``) and examples/alltoall.py, with this test playing meshd:
hand-built MESHD_* environments over socketpairs, a fake worker socket, and real worker processes. No daemon."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from meshd.worker import Mesh, MeshError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "alltoall.py"
PROCESS_TIMEOUT = 60.0  # real seconds any worker process may take (2 shared cores)
EPOCH_AUTO = "1795600000123.0123456789abcdef"
INCARNATION = "00000000deadbeef"


def peers(size: int) -> str:
    return ",".join(f"127.0.0.1:{7000 + index}" for index in range(size))


def environment(index: int, size: int, fds: dict[int, int], epoch: str = "5") -> dict[str, str]:
    return {
        "MESHD_INDEX": str(index),
        "MESHD_SIZE": str(size),
        "MESHD_CLUSTER": "demo",
        "MESHD_EPOCH": epoch,
        "MESHD_INCARNATION": INCARNATION,
        "MESHD_PEERS": peers(size),
        "MESHD_FDS": ",".join("-" if peer == index else str(fds[peer]) for peer in range(size)),
        "MESHD_ADMIN": "127.0.0.1:7101",
    }


class Handed:
    """What meshd hands worker ``index`` of ``size``: ``given[j]`` would be inherited (its descriptor is in
    ``env``), ``far[j]`` is peer j's end. Until ``release()`` the test owns ``given`` and closes it."""

    def __init__(self, index: int = 1, size: int = 3) -> None:
        self.index, self.size = index, size
        self.given: dict[int, socket.socket] = {}
        self.far: dict[int, socket.socket] = {}
        for peer in range(size):
            if peer != index:
                self.given[peer], self.far[peer] = socket.socketpair()
        self.env = environment(index, size, {peer: sock.fileno() for peer, sock in self.given.items()})

    def release(self) -> None:
        """The Mesh owns the given descriptors now."""
        for sock in self.given.values():
            sock.detach()
        self.given.clear()

    def close(self) -> None:
        for sock in (*self.given.values(), *self.far.values()):
            sock.close()


@pytest.fixture
def handed() -> Iterator[Handed]:
    handed = Handed()
    try:
        yield handed
    finally:
        handed.close()


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- importing


def test_import_is_light():
    code = (
        "import sys, meshd.worker; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'loguru', 'attrs', 'attr', 'cattrs') "
        "or (m.startswith('meshd.') and m not in ('meshd.worker', 'meshd.worker.client'))); "
        "print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- --exec: the environment


def test_from_env_parses(handed: Handed):
    mesh = Mesh.from_env(handed.env, watch_sigterm=False)
    handed.release()
    with mesh:
        assert (mesh.index, mesh.size, mesh.cluster, mesh.epoch) == (1, 3, "demo", "5")
        assert mesh.incarnation == 0xDEADBEEF
        assert mesh.peers == ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        assert mesh.admin == "127.0.0.1:7101"
        assert mesh.sockets[1] is None
        assert [peer for peer, _ in mesh.peers_except_me()] == [0, 2]
        assert not mesh.ended.is_set() and not mesh.wait_ended(0.01) and mesh.end_reason is None
        for peer, sock in mesh.peers_except_me():
            assert sock is mesh.sockets[peer]
            assert sock.gettimeout() is None and not sock.get_inheritable()
            sock.sendall(f"to {peer}".encode())
            assert handed.far[peer].recv(16) == f"to {peer}".encode()
            handed.far[peer].sendall(f"from {peer}".encode())
            assert sock.recv(16) == f"from {peer}".encode()
    assert all(sock is None or sock.fileno() == -1 for sock in mesh.sockets)
    assert handed.far[0].recv(1) == b""  # closed: the peer sees EOF


def test_from_env_auto_epoch_and_no_admin(handed: Handed):
    env = {**handed.env, "MESHD_EPOCH": EPOCH_AUTO}
    del env["MESHD_ADMIN"]
    mesh = Mesh.from_env(env, watch_sigterm=False)
    handed.release()
    with mesh:
        assert mesh.epoch == EPOCH_AUTO and mesh.admin is None


def test_from_env_matches_the_daemon_side(handed: Handed):
    """The daemon's Facts.to_env (when that module is there) is what from_env reads."""
    contract = pytest.importorskip("meshd.worker.contract")
    facts = contract.Facts(1, 3, "demo", EPOCH_AUTO, 0xDEADBEEF, tuple(peers(3).split(",")), None)
    env = facts.to_env({peer: sock.fileno() for peer, sock in handed.given.items()})
    mesh = Mesh.from_env(env, watch_sigterm=False)
    handed.release()
    with mesh:
        assert (mesh.index, mesh.size, mesh.epoch, mesh.incarnation, mesh.admin) == (1, 3, EPOCH_AUTO, 0xDEADBEEF, None)


@pytest.mark.parametrize(
    "variable",
    ["MESHD_INDEX", "MESHD_SIZE", "MESHD_CLUSTER", "MESHD_EPOCH", "MESHD_INCARNATION", "MESHD_PEERS", "MESHD_FDS"],
)
def test_from_env_missing_variable(handed: Handed, variable: str):
    env = dict(handed.env)
    del env[variable]
    with pytest.raises(ValueError, match=variable):
        Mesh.from_env(env, watch_sigterm=False)


def fds_cases() -> list[tuple[str, Callable[[list[str]], str], str]]:
    return [
        ("too few", lambda fds: ",".join(fds[:2]), "MESHD_FDS: expected 3"),
        ("too many", lambda fds: ",".join([*fds, fds[0]]), "MESHD_FDS: expected 3"),
        ("dash misplaced", lambda fds: ",".join([fds[1], fds[0], fds[2]]), "MESHD_FDS: '-' at entry 0"),
        ("no dash", lambda fds: ",".join([fds[0], fds[0], fds[2]]), r"MESHD_FDS: entry 1 \(MESHD_INDEX\) must be '-'"),
        ("two dashes", lambda fds: ",".join([fds[0], "-", "-"]), "MESHD_FDS: '-' at entry 2"),
        ("not a number", lambda fds: ",".join([fds[0], "-", "x"]), "MESHD_FDS: entry 2 is not a descriptor"),
        ("repeated", lambda fds: ",".join([fds[0], "-", fds[0]]), "MESHD_FDS: a descriptor appears twice"),
    ]


@pytest.mark.parametrize(("case", "make", "message"), fds_cases(), ids=[case for case, _, _ in fds_cases()])
def test_from_env_bad_fds(handed: Handed, case: str, make: Callable[[list[str]], str], message: str):
    env = {**handed.env, "MESHD_FDS": make(handed.env["MESHD_FDS"].split(","))}
    with pytest.raises(ValueError, match=message):
        Mesh.from_env(env, watch_sigterm=False)
    for sock in handed.given.values():  # untouched: still open, still blocking, still ours
        assert sock.fileno() != -1 and os.fstat(sock.fileno())


def test_from_env_descriptor_that_is_not_a_socket(handed: Handed):
    read, write = os.pipe()
    try:
        fds = handed.env["MESHD_FDS"].split(",")
        env = {**handed.env, "MESHD_FDS": f"{fds[0]},-,{read}"}
        with pytest.raises(ValueError, match=r"MESHD_FDS: entry 2 \(\d+\): not a socket"):
            Mesh.from_env(env, watch_sigterm=False)
        os.fstat(read)  # not closed
        os.fstat(handed.given[0].fileno())  # nor the socket wrapped before the error
        handed.far[0].sendall(b"x")
        assert handed.given[0].recv(1) == b"x"
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MESHD_INDEX", "3", "MESHD_INDEX: 3 is not below MESHD_SIZE 3"),
        ("MESHD_INDEX", "-1", "MESHD_INDEX: expected a non-negative integer"),
        ("MESHD_SIZE", "three", "MESHD_SIZE: expected a non-negative integer"),
        ("MESHD_PEERS", "127.0.0.1:7000,127.0.0.1:7001", "MESHD_PEERS: expected 3 addresses"),
        ("MESHD_PEERS", "a:1,b,c:3", "MESHD_PEERS: expected HOST:PORT"),
        ("MESHD_INCARNATION", "not hex", "MESHD_INCARNATION: expected up to 16 hex digits"),
        ("MESHD_EPOCH", "", "MESHD_EPOCH: expected an epoch"),
        ("MESHD_CLUSTER", "", "MESHD_CLUSTER: expected a non-empty string"),
    ],
)
def test_from_env_bad_facts(handed: Handed, variable: str, value: str, message: str):
    with pytest.raises(ValueError, match=message):
        Mesh.from_env({**handed.env, variable: value}, watch_sigterm=False)


# ---- --exec: SIGTERM


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_sets_ended_and_close_restores(handed: Handed):
    previous = signal.getsignal(signal.SIGTERM)
    mesh = Mesh.from_env(handed.env)
    handed.release()
    installed = signal.getsignal(signal.SIGTERM)
    assert callable(installed) and installed is not previous  # or the kill below would end pytest
    assert not mesh.ended.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    assert mesh.wait_ended(5.0)
    assert mesh.end_reason == "SIGTERM"
    mesh.close()
    assert signal.getsignal(signal.SIGTERM) == previous
    assert signal.set_wakeup_fd(-1) == -1  # ours was removed again
    mesh.close()  # idempotent


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_chains_a_previous_python_handler(handed: Handed):
    calls: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    with Mesh.from_env(handed.env) as mesh:
        handed.release()
        os.kill(os.getpid(), signal.SIGTERM)
        assert mesh.wait_ended(5.0)
        assert calls == [signal.SIGTERM]


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_not_watched(handed: Handed):
    before = signal.getsignal(signal.SIGTERM)
    with Mesh.from_env(handed.env, watch_sigterm=False):
        handed.release()
        assert signal.getsignal(signal.SIGTERM) is before


def test_watch_sigterm_needs_the_main_thread(handed: Handed):
    raised: list[BaseException] = []

    def attempt() -> None:
        try:
            Mesh.from_env(handed.env)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(10)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert "main thread" in str(raised[0])
    for sock in handed.given.values():  # refused before touching a descriptor
        assert sock.getsockname() is not None


# ---- socket mode: a fake meshd on the worker socket


class FakeMeshd:
    """One attach on a Unix socket in a short temporary directory; ``script(conn, line)`` answers it."""

    def __init__(self, script: Callable[[socket.socket, bytes], None]) -> None:
        self.directory = tempfile.mkdtemp(prefix="meshd-w")
        self.path = os.path.join(self.directory, "worker.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.script = script
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(PROCESS_TIMEOUT)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(PROCESS_TIMEOUT)
                line = b""
                while not line.endswith(b"\n"):
                    data = conn.recv(1)
                    assert data, "the worker closed before attaching"
                    line += data
                self.script(conn, line)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.thread.join(PROCESS_TIMEOUT)
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.rmdir(self.directory)
        assert not self.thread.is_alive(), "the fake meshd still runs"
        if self.errors:
            raise self.errors[0]


def answer(index: int = 1, size: int = 3, **changes: object) -> bytes:
    facts = {
        "index": index,
        "size": size,
        "cluster": "demo",
        "epoch": EPOCH_AUTO,
        "incarnation": INCARNATION,
        "peers": peers(size).split(","),
        "admin": None,
        **changes,
    }
    return json.dumps(facts).encode() + b"\n"


class Pairs:
    """Data sockets as the fake meshd passes them: ``near`` go to the worker (and are closed here once sent)."""

    def __init__(self, index: int = 1, size: int = 3) -> None:
        self.near: dict[int, socket.socket] = {}
        self.far: dict[int, socket.socket] = {}
        for peer in range(size):
            if peer != index:
                self.near[peer], self.far[peer] = socket.socketpair()

    def send(self, conn: socket.socket, line: bytes, count: int | None = None) -> None:
        fds = [sock.fileno() for _, sock in sorted(self.near.items())][:count]
        socket.send_fds(conn, [line], fds)
        for sock in self.near.values():
            sock.close()

    def close(self) -> None:
        for sock in (*self.near.values(), *self.far.values()):
            sock.close()


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    pairs = Pairs()
    try:
        yield pairs
    finally:
        pairs.close()


def test_attach_then_fenced(pairs: Pairs):
    fence = threading.Event()
    seen: dict[str, object] = {}

    def script(conn: socket.socket, line: bytes) -> None:
        seen["attach"] = json.loads(line)
        pairs.send(conn, answer())
        assert fence.wait(PROCESS_TIMEOUT)
        conn.sendall(b'{"event": "fenced", "reason": "epoch 7 exists"}\n')
        seen["after"] = conn.recv(1)  # the worker closes its end

    meshd = FakeMeshd(script)
    try:
        mesh = Mesh.attach(meshd.path, timeout=10)
        assert (mesh.index, mesh.size, mesh.cluster, mesh.epoch) == (1, 3, "demo", EPOCH_AUTO)
        assert mesh.incarnation == 0xDEADBEEF and mesh.admin is None
        assert mesh.peers == peers(3).split(",") and mesh.sockets[1] is None
        for peer, sock in mesh.peers_except_me():
            sock.sendall(bytes([peer]))
            assert pairs.far[peer].recv(1) == bytes([peer])
            assert not sock.get_inheritable()
        assert not mesh.wait_ended(0.1)
        fence.set()
        assert mesh.wait_ended(10)
        assert mesh.end_reason == "epoch 7 exists"
        mesh.close()
    finally:
        fence.set()
        meshd.close()
    assert seen == {"attach": {"op": "attach"}, "after": b""}


def read_to_end(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


def test_attach_close_reports_the_exit_code(pairs: Pairs):
    seen: list[bytes] = []
    meshd = FakeMeshd(lambda conn, line: (pairs.send(conn, answer()), seen.append(read_to_end(conn))))
    try:
        mesh = Mesh.attach(meshd.path, timeout=10)
        mesh.close(0)
        mesh.close(5)  # idempotent: said once
    finally:
        meshd.close()
    assert seen == [b'{"op": "exit", "code": 0}\n']
    assert not mesh.ended.is_set()  # our own close is not the generation's end


def test_attach_answer_and_fenced_in_one_read(pairs: Pairs):
    meshd = FakeMeshd(lambda conn, line: pairs.send(conn, answer() + b'{"event": "fenced", "reason": "soon"}\n'))
    try:
        with Mesh.attach(meshd.path, timeout=10) as mesh:
            assert mesh.wait_ended(10) and mesh.end_reason == "soon"
    finally:
        meshd.close()


def test_attach_connection_end_sets_ended(pairs: Pairs):
    meshd = FakeMeshd(lambda conn, line: pairs.send(conn, answer()))  # then closes
    try:
        with Mesh.attach(meshd.path, timeout=10) as mesh:
            assert mesh.wait_ended(10)
            assert "closed" in (mesh.end_reason or "")
    finally:
        meshd.close()


def test_attach_error_answer():
    meshd = FakeMeshd(lambda conn, line: conn.sendall(b'{"error": "a worker is attached already"}\n'))
    try:
        with pytest.raises(MeshError, match="a worker is attached already"):
            Mesh.attach(meshd.path, timeout=10)
    finally:
        meshd.close()


def test_attach_wrong_socket_count_closes_them(pairs: Pairs):
    meshd = FakeMeshd(lambda conn, line: pairs.send(conn, answer(), count=1))
    try:
        with pytest.raises(MeshError, match="expected 2 data sockets"):
            Mesh.attach(meshd.path, timeout=10)
    finally:
        meshd.close()
    pairs.far[0].settimeout(10)
    assert pairs.far[0].recv(1) == b""  # the one received was closed, not leaked


def test_attach_malformed_answer(pairs: Pairs):
    meshd = FakeMeshd(lambda conn, line: pairs.send(conn, answer(index=5)))
    try:
        with pytest.raises(MeshError, match="index 5"):
            Mesh.attach(meshd.path, timeout=10)
    finally:
        meshd.close()


def test_attach_timeout():
    release = threading.Event()
    meshd = FakeMeshd(lambda conn, line: release.wait(PROCESS_TIMEOUT))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            Mesh.attach(meshd.path, timeout=0.3)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        meshd.close()


# ---- examples/alltoall.py, for real


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("alltoall_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def connected_pair(transport: str) -> tuple[socket.socket, socket.socket]:
    if transport == "socketpair":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dialed = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return dialed, accepted


class Worker:
    """One worker process; its output is collected by threads, so that a full pipe never stalls it."""

    def __init__(self, index: int, process: subprocess.Popen[str]) -> None:
        self.index, self.process = index, process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self.readers = [
            threading.Thread(target=self._read, args=(process.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: object, into: list[str], lines: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            if lines:
                self.lines.put(line)

    def output(self) -> str:
        return f"worker {self.index} (exit {self.process.returncode}):\n{''.join(self.stdout)}{''.join(self.stderr)}"


class Workers:
    """Example workers connected as meshd would (the test plays meshd); slots in ``fake`` are the test's own, their
    ends in ``ends[(fake, peer)]``."""

    def __init__(self, tmp: Path) -> None:
        self.workers: list[Worker] = []
        self.ends: dict[tuple[int, int], socket.socket] = {}
        self.tmp = tmp

    def start(
        self, size: int, args: list[str], transport: str = "socketpair", fake: tuple[int, ...] = (), epoch: str = "5"
    ) -> None:
        links: dict[tuple[int, int], socket.socket] = {}
        for a in range(size):
            for b in range(a + 1, size):
                links[a, b], links[b, a] = connected_pair(transport)
        try:
            for index in range(size):
                if index in fake:
                    continue
                fds = {peer: links[index, peer].fileno() for peer in range(size) if peer != index}
                env = {**os.environ, **environment(index, size, fds, epoch), "PYTHONPATH": str(ROOT)}
                process = subprocess.Popen(
                    [sys.executable, str(EXAMPLE), *args],
                    env=env,
                    pass_fds=list(fds.values()),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                self.workers.append(Worker(index, process))
        finally:
            for (a, b), sock in links.items():
                if a in fake:
                    self.ends[a, b] = sock
                else:
                    sock.close()  # meshd keeps no copy

    def output(self) -> str:
        return "\n".join(worker.output() for worker in self.workers)

    def first_lines(self) -> None:
        """Until every worker printed a line."""
        for worker in self.workers:
            try:
                worker.lines.get(timeout=PROCESS_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"worker {worker.index} printed nothing in {PROCESS_TIMEOUT} s\n{self.output()}")

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            for worker in self.workers:
                worker.process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the workers did not exit within {timeout} s\n{self.output()}")
        for worker in self.workers:
            for reader in worker.readers:
                reader.join(5)
        return [worker.process.returncode for worker in self.workers]

    def kill(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait(10)
            for reader in worker.readers:
                reader.join(5)

    def close(self) -> None:
        self.kill()
        for worker in self.workers:
            for stream in (worker.process.stdout, worker.process.stderr):
                if stream is not None:
                    stream.close()
        for sock in self.ends.values():
            sock.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(tmp_path)
    try:
        yield workers
    finally:
        workers.close()


@pytest.mark.parametrize("transport", ["socketpair", "tcp"])
def test_alltoall_three_workers(workers: Workers, transport: str):
    workers.start(3, ["--rounds", "5", "--every", "1"], transport)
    assert workers.wait() == [0, 0, 0], workers.output()
    for worker in workers.workers:
        lines = [line for line in worker.stdout if " ok, " in line]
        assert [line.split(" round ")[1].split()[0] for line in lines] == ["1", "2", "3", "4", "5"], workers.output()
        assert lines[-1].startswith(f"worker {worker.index} epoch 5 round 5 ok, ") and lines[-1].endswith("MB/s\n")


def test_alltoall_sigterm_stops_cleanly(workers: Workers):
    workers.start(3, ["--rounds", "0", "--every", "20", "--block", "16384"], "tcp", epoch=EPOCH_AUTO)
    workers.first_lines()
    started = time.monotonic()
    for worker in workers.workers:
        worker.process.send_signal(signal.SIGTERM)
    assert workers.wait(timeout=10) == [0, 0, 0], workers.output()
    assert time.monotonic() - started < 5, workers.output()  # within a second each, on a loaded machine
    assert all(f"epoch {EPOCH_AUTO} round 20 ok" in "".join(worker.stdout) for worker in workers.workers)


def test_alltoall_peer_death_is_shared_fate(workers: Workers):
    workers.start(3, ["--rounds", "0", "--every", "10", "--block", "16384"], "tcp")
    workers.first_lines()
    workers.workers[0].process.kill()
    codes = workers.wait()
    assert codes[1:] == [4, 4], workers.output()


def fake_peer_frames(kind: str, block: int) -> bytes:
    """What the test, as worker 0 of 2, sends worker 1: a right round 1, then round 2 spoiled as ``kind`` says."""
    example = load_example()
    good = example.frame("5", 1, 0, 1, block)
    second = bytearray(example.frame("5", 2, 0, 1, block))
    header = example.HEADER
    if kind == "payload":
        second[header.size + block // 2] ^= 0xFF
    elif kind == "round":
        second[: header.size] = header.pack(example.MAGIC, 3, 0, block)
    elif kind == "sender":
        second[: header.size] = header.pack(example.MAGIC, 2, 1, block)
    elif kind == "length":
        second[: header.size] = header.pack(example.MAGIC, 2, 0, block + 1)
    elif kind == "magic":
        second[:4] = b"JUNK"
    elif kind == "eof":
        return good
    return good + bytes(second)


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("payload", 3, "round 2: the block differs at byte 2048"),
        ("round", 3, "expected round 2 from 0"),
        ("sender", 3, "from 1"),
        ("length", 3, "4097 bytes"),
        ("magic", 3, "bad magic"),
        ("eof", 4, "EOF in the header of round 2"),
    ],
)
def test_alltoall_wrong_bytes_from_a_peer(workers: Workers, kind: str, code: int, message: str):
    workers.start(2, ["--rounds", "5", "--every", "1", "--block", "4096"], fake=(0,))
    fake = workers.ends[0, 1]
    fake.sendall(fake_peer_frames(kind, 4096))
    if kind == "eof":
        fake.shutdown(socket.SHUT_WR)
    assert workers.wait() == [code], workers.output()
    worker = workers.workers[0]
    assert "worker 1 epoch 5 round 1 ok" in "".join(worker.stdout), workers.output()
    assert message in "".join(worker.stderr), workers.output()


def test_alltoall_bad_environment_exits_2(tmp_path: Path):
    env = {**os.environ, **environment(0, 2, {1: 1000}), "PYTHONPATH": str(ROOT)}
    del env["MESHD_FDS"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert done.returncode == 2 and "MESHD_FDS" in done.stderr, done.stdout + done.stderr


def test_alltoall_attached_until_fenced():
    """Two example workers in socket mode, each attached to its own fake meshd, stop at the fenced line."""
    near, far = socket.socketpair()
    fence = threading.Event()
    closed: list[bytes] = []  # what each worker said before closing its end

    def script_for(index: int, sock: socket.socket) -> Callable[[socket.socket, bytes], None]:
        def script(conn: socket.socket, line: bytes) -> None:
            assert json.loads(line) == {"op": "attach"}
            socket.send_fds(conn, [answer(index=index, size=2, epoch="9")], [sock.fileno()])
            sock.close()
            assert fence.wait(PROCESS_TIMEOUT)
            conn.sendall(b'{"event": "fenced", "reason": "the generation ended"}\n')
            closed.append(read_to_end(conn))

        return script

    daemons = [FakeMeshd(script_for(0, near)), FakeMeshd(script_for(1, far))]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                "--attach",
                meshd.path,
                "--timeout",
                "30",
                "--every",
                "10",
                "--block",
                "8192",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for meshd in daemons
    ]
    workers = [Worker(index, process) for index, process in enumerate(processes)]
    try:
        for worker in workers:
            with contextlib.suppress(queue.Empty):
                worker.lines.get(timeout=PROCESS_TIMEOUT)
        fence.set()
        for worker in workers:
            worker.process.wait(PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("the attached workers did not stop\n" + "\n".join(worker.output() for worker in workers))
    finally:
        fence.set()
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait(10)
            for reader in worker.readers:
                reader.join(5)
            for stream in (worker.process.stdout, worker.process.stderr):
                if stream is not None:
                    stream.close()
        for meshd in daemons:
            meshd.close()
    report = "\n".join(worker.output() for worker in workers)
    assert [worker.process.returncode for worker in workers] == [0, 0], report
    assert all("epoch 9 round 10 ok" in "".join(worker.stdout) for worker in workers), report
    assert all("the generation ended" in "".join(worker.stdout) for worker in workers), report
    assert closed == [b'{"op": "exit", "code": 0}\n'] * 2
