"""The worker's side of ``[worker] socket`` (``meshd.worker.Mesh.attach``), with this test playing meshd over a
Unix socket: the answer, the sockets, the fenced line, errors, timeouts, and the exit report. No daemon."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from meshd.worker import Mesh, MeshError
from tests.test_worker_client import EPOCH_AUTO, INCARNATION, PROCESS_TIMEOUT, peers


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
