"""examples/alltoall.py, the verified all-to-all worker, as real processes over hand-made sockets (this test
playing meshd): three workers exchange, SIGTERM stops them cleanly, a peer's death or wrong bytes end them, a bad
environment exits 2, and an attached worker runs until fenced. No daemon."""

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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_worker_attach import FakeMeshd, answer, read_to_end
from tests.test_worker_client import EPOCH_AUTO, EXAMPLE, PROCESS_TIMEOUT, ROOT, environment


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
