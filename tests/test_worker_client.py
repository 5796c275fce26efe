"""The worker's side of the contract under ``--exec`` (``meshd.worker.Mesh.from_env``), with this test playing
meshd: hand-built MESHD_* environments over socketpairs, bad facts and descriptors, SIGTERM. No daemon. The attached
worker is in test_worker_attach.py, examples/alltoall.py in test_alltoall.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.worker import Mesh

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
