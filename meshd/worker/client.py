"""The worker's side of meshd: the mesh a worker is handed, from the environment (``--exec``) or over the worker
socket (``[worker] socket``).

The contract (the daemon side is ``meshd.worker.supervisor``):

- **--exec.** meshd starts the worker once its mesh is ready in a generation, with one connected TCP socket per peer
  inherited in blocking mode and the environment ``MESHD_INDEX``, ``MESHD_SIZE``, ``MESHD_CLUSTER``, ``MESHD_EPOCH``
  (as ``meshd status`` prints it: ``5``, or ``<ms>.<16 hex nonce>`` for self-minted generations),
  ``MESHD_INCARNATION`` (16 hex digits), ``MESHD_PEERS`` (every member's mesh address ``host:port``, comma-separated,
  in config order, its own included), ``MESHD_FDS`` (N comma-separated descriptor numbers in index order, ``-`` at the
  worker's own index, e.g. ``-,3,4`` for index 0 of 3) and, when the daemon has one, ``MESHD_ADMIN``. When the
  generation ends meshd sends SIGTERM, waits ``worker.stop_grace`` seconds, then sends SIGKILL.
- **Socket mode.** The worker connects to the Unix stream socket, sends ``{"op": "attach"}\\n`` and, once the mesh is
  ready, receives ONE JSON line with the same facts (``index``, ``size``, ``cluster``, ``epoch``, ``incarnation``,
  ``peers``, ``admin``) and the N-1 data sockets as SCM_RIGHTS in index order (own index skipped) on that message.
  The connection stays open; when the generation ends meshd writes ``{"event": "fenced", "reason": "..."}\\n`` and
  waits up to ``stop_grace`` for the worker to close its end. A worker that ends says how with
  ``{"op": "exit", "code": N}\\n`` before it closes (no exit line: it failed). A second attach gets
  ``{"error": "..."}\\n``.
- **Exit.** A worker that exits 0 says the job is done (meshd stops, exit 0); non-zero or a signal is a failure
  (meshd exits 70, the controller restarts it and a new generation forms, with new workers).
- Every byte read from peer j's socket was written by peer j's worker: meshd consumed its own handshake exactly.

This module imports the standard library only (no trio, no loguru), so that any worker can afford it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

__all__ = ["Mesh", "MeshError"]

# The most descriptors Linux passes in one SCM_RIGHTS message (SCM_MAX_FD): the largest mesh socket mode can hand.
SCM_MAX_FD = 253
# The longest line meshd writes on the worker socket that this client accepts (the attach answer names N peers).
MAX_LINE = 1 << 20
ATTACH = b'{"op": "attach"}\n'
_INCARNATION = re.compile(r"[0-9a-fA-F]{1,16}")
_ENVIRONMENT = ("MESHD_INDEX", "MESHD_SIZE", "MESHD_CLUSTER", "MESHD_EPOCH", "MESHD_INCARNATION", "MESHD_PEERS")

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class MeshError(Exception):
    """meshd refused or broke the attach: an ``{"error": ...}`` answer, a malformed answer, the wrong number of
    sockets, or the connection closed (or the generation ended) before the mesh was ready."""


@dataclass(frozen=True, eq=False)
class Mesh:
    """The mesh of one generation, as its worker sees it.

    ``sockets[j]`` is the connected data socket to peer j (blocking, not inheritable), ``None`` at ``index``: the
    shape Timely's ``initialize_networking_from_sockets`` takes. ``epoch`` is kept exactly as meshd gave it (a
    string); ``incarnation`` is this daemon's incarnation as an integer. ``ended`` is set once the generation ended
    (SIGTERM in ``--exec`` mode when watched, the ``fenced`` line or the control connection's end in socket mode);
    ``end_reason`` says why. A worker that watches ``ended`` must stop by itself promptly after it is set (meshd
    sends SIGKILL ``worker.stop_grace`` seconds after SIGTERM); meshd is leaving the generation by then, so the
    worker's exit code no longer decides anything (exiting 0 is fine).

    Use as a context manager, or call ``close()``: it closes the data sockets and the control connection and
    restores the SIGTERM handler that ``from_env`` replaced. In socket mode ``close(code)`` first reports the
    worker's exit code (0: the job is done) on the control connection; closing without a code says it failed.
    """

    index: int
    size: int
    cluster: str
    epoch: str
    incarnation: int
    peers: list[str]
    admin: str | None
    sockets: list[socket.socket | None]
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    _watch: _Watch = field(default=None, init=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_watch", _Watch(self.ended))

    # ---- construction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, watch_sigterm: bool = True) -> Mesh:
        """The mesh meshd handed to this process with ``--exec`` (the MESHD_* variables and inherited sockets).

        Raises ``ValueError`` naming the variable when one is missing or malformed: ``MESHD_FDS`` must have
        ``MESHD_SIZE`` entries, ``-`` exactly at ``MESHD_INDEX`` and a connected stream socket's descriptor
        everywhere else. On an error no descriptor is closed or changed.

        With ``watch_sigterm`` (the default) a SIGTERM handler is installed (main thread only) that sets ``ended``
        (and still calls a Python handler installed before it). SIGTERM then no longer ends the program by itself:
        the worker must watch ``ended`` and exit promptly; meshd's SIGKILL after ``worker.stop_grace`` is the
        backstop. Pass ``watch_sigterm=False`` to keep the default disposition (SIGTERM ends the process).
        """
        if watch_sigterm and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Mesh.from_env(watch_sigterm=True) must run in the main thread (signal handlers)")
        missing = [name for name in (*_ENVIRONMENT, "MESHD_FDS") if name not in environ]
        if missing:
            raise ValueError(f"{missing[0]}: not set (is this process started by `meshd run --exec`?)")
        size = _integer(environ, "MESHD_SIZE", 1)
        index = _integer(environ, "MESHD_INDEX", 0)
        if index >= size:
            raise ValueError(f"MESHD_INDEX: {index} is not below MESHD_SIZE {size}")
        peers = environ["MESHD_PEERS"].split(",")
        _check_peers("MESHD_PEERS", peers, size)
        facts = _facts(
            "MESHD_",
            index=index,
            size=size,
            cluster=environ["MESHD_CLUSTER"],
            epoch=environ["MESHD_EPOCH"],
            incarnation=environ["MESHD_INCARNATION"],
            admin=environ.get("MESHD_ADMIN") or None,
        )
        fds = _parse_fds(environ["MESHD_FDS"], size, index)
        sockets: list[socket.socket | None] = []
        try:
            for peer, fd in enumerate(fds):
                sockets.append(None if fd is None else _wrap(fd, f"MESHD_FDS: entry {peer} ({fd})"))
        except ValueError:
            for sock in sockets:
                if sock is not None:
                    sock.detach()  # the descriptor stays the caller's, as it was
            raise
        for sock in sockets:
            if sock is not None:
                _own(sock)
        mesh = cls(peers=peers, sockets=sockets, **facts)
        if watch_sigterm:
            try:
                mesh._watch.watch_sigterm()
            except BaseException:
                mesh.close()
                raise
        return mesh

    @classmethod
    def attach(cls, path: str | os.PathLike[str], timeout: float | None = None) -> Mesh:
        """Attach to meshd's worker socket at ``path`` and block until the mesh is ready (or ``timeout`` seconds:
        ``TimeoutError``). Keeps the control connection open; a daemon thread reading it sets ``ended`` on the
        ``fenced`` line or when the connection ends. ``OSError`` when the socket cannot be reached; ``MeshError``
        when meshd answers an error (e.g. another worker is attached) or breaks the contract."""
        deadline = None if timeout is None else time.monotonic() + timeout
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fds: list[int] = []
        try:
            control.settimeout(timeout)
            control.connect(os.fspath(path))
            control.sendall(ATTACH)
            buffer = b""
            while b"\n" not in buffer:
                if deadline is not None:
                    control.settimeout(max(deadline - time.monotonic(), 1e-3))
                try:
                    data, received, flags, _ = socket.recv_fds(control, 65536, SCM_MAX_FD)
                except TimeoutError:
                    raise TimeoutError(f"{path}: meshd did not answer the attach within {timeout} s") from None
                fds.extend(received)
                if flags & socket.MSG_CTRUNC:
                    raise MeshError(f"{path}: the data sockets did not fit one message (over {SCM_MAX_FD})")
                if not data:
                    raise MeshError(f"{path}: meshd closed the worker socket before the mesh was ready")
                buffer += data
                if len(buffer) > MAX_LINE:
                    raise MeshError(f"{path}: the attach answer is longer than {MAX_LINE} bytes")
            line, _, rest = buffer.partition(b"\n")
            mesh = cls._from_answer(line, fds, str(path))
            fds = []  # the mesh owns them now
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            control.close()
            raise
        control.settimeout(None)
        mesh._watch.watch_control(control, rest)
        return mesh

    @classmethod
    def _from_answer(cls, line: bytes, fds: list[int], path: str) -> Mesh:
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise MeshError(f"{path}: the attach answer is not JSON: {line[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise MeshError(f"{path}: the attach answer is not a JSON object: {line[:200]!r}")
        if "error" in answer:
            raise MeshError(f"{path}: meshd refused the attach: {answer['error']}")
        if "event" in answer:
            raise MeshError(f"{path}: the generation ended before the mesh was ready: {answer.get('reason')}")
        try:
            size, index, peers = answer["size"], answer["index"], answer["peers"]
            raw = {key: answer[key] for key in ("cluster", "epoch", "incarnation", "admin")}
        except KeyError as exc:
            raise MeshError(f"{path}: the attach answer has no {exc.args[0]!r}: {line[:200]!r}") from None
        try:
            if not (_is_int(size) and size >= 1 and _is_int(index) and 0 <= index < size):
                raise ValueError(f"index {index!r} and size {size!r}: expected integers with 0 <= index < size")
            if not (isinstance(peers, list) and all(isinstance(peer, str) for peer in peers)):
                raise ValueError(f"peers: expected a list of strings, got {peers!r}")
            _check_peers("peers", peers, size)
            epoch = raw["epoch"]
            if _is_int(epoch):
                epoch = str(epoch)
            incarnation = raw["incarnation"]
            if _is_int(incarnation):
                incarnation = f"{incarnation:x}"
            admin = raw["admin"]
            if admin is not None and not isinstance(admin, str):
                raise ValueError(f"admin: expected a string or null, got {admin!r}")
            facts = _facts(
                "",
                index=index,
                size=size,
                cluster=raw["cluster"],
                epoch=epoch,
                incarnation=incarnation,
                admin=admin or None,
            )
        except (ValueError, TypeError) as exc:
            raise MeshError(f"{path}: malformed attach answer: {exc}") from None
        if len(fds) != size - 1:
            raise MeshError(f"{path}: expected {size - 1} data sockets with the attach answer, got {len(fds)}")
        sockets: list[socket.socket | None] = []
        try:
            remaining = iter(fds)
            for peer in range(size):
                sockets.append(None if peer == index else _wrap(next(remaining), f"data socket of peer {peer}"))
        except ValueError as exc:
            for sock in sockets:
                if sock is not None:
                    sock.detach()  # the caller closes every received descriptor
            raise MeshError(f"{path}: {exc}") from None
        for sock in sockets:
            if sock is not None:
                _own(sock)
        return cls(peers=list(peers), sockets=sockets, **facts)

    # ---- use

    @property
    def end_reason(self) -> str | None:
        """Why ``ended`` was set (``"SIGTERM"``, the ``fenced`` line's reason, ...), None while it is not."""
        return self._watch.reason

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the generation ended (True) or ``timeout`` seconds passed (False)."""
        return self.ended.wait(timeout)

    def peers_except_me(self) -> list[tuple[int, socket.socket]]:
        """``(index, socket)`` of every other member, in index order."""
        return [(peer, sock) for peer, sock in enumerate(self.sockets) if sock is not None]

    def close(self, code: int | None = None) -> None:
        """Close the data sockets and the control connection (meshd takes that as the worker's release) and
        restore the SIGTERM handler ``from_env`` replaced (when called from the main thread). Idempotent.

        ``code``: in socket mode, the exit code reported as ``{"op": "exit", "code": code}`` before the control
        connection closes (0: the job is done, meshd stops with 0; other codes: a failure); without it meshd takes
        the close for a failure unless the generation ended already. With ``--exec`` the process's own exit code
        says it and ``code`` is ignored."""
        for sock in self.sockets:
            if sock is not None:
                sock.close()
        self._watch.close(code)

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Watch:
    """What sets ``ended``: a SIGTERM handler (``--exec``) or a thread reading the control connection (socket mode).

    The signal handler only writes a byte to a pipe; a daemon thread reading the pipe sets the event. Setting a
    ``threading.Event`` from a signal handler could deadlock on the event's lock should the signal land while the
    main thread holds it (in ``ended.wait()`` itself). When no other wakeup fd is set, the pipe is also the signal
    wakeup fd, so that SIGTERM reaches the thread even while the main thread is stuck in C code.
    """

    def __init__(self, ended: threading.Event) -> None:
        self.ended = ended
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._control: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None
        self._previous: _SignalHandler = None
        self._wakeup: int | None = None  # the previous wakeup fd, once ours is installed
        self._handler: Callable[[int, FrameType | None], None] | None = None

    def end(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.ended.set()

    # -- --exec: SIGTERM

    def watch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Mesh.from_env(watch_sigterm=True) must run in the main thread (signal handlers)")
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        previous = signal.getsignal(signal.SIGTERM)
        chained = previous if callable(previous) else None

        def handler(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(OSError):  # full (a byte is already there) or closed
                os.write(write, bytes([signum]))
            if chained is not None:
                chained(signum, frame)

        self._previous = previous
        self._handler = handler
        signal.signal(signal.SIGTERM, handler)
        old = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        if old == -1:
            self._wakeup = old
        else:  # someone else's (asyncio, trio): keep it; the handler writes our pipe
            signal.set_wakeup_fd(old)
        self._thread = threading.Thread(target=self._read_pipe, args=(read,), name="meshd-sigterm", daemon=True)
        self._thread.start()

    def _read_pipe(self, read: int) -> None:
        try:
            while True:
                data = os.read(read, 64)
                if not data:
                    return  # closed
                if signal.SIGTERM in data:
                    self.end("SIGTERM")
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                os.close(read)

    # -- socket mode: the control connection

    def watch_control(self, control: socket.socket, buffered: bytes) -> None:
        self._control = control
        self._thread = threading.Thread(
            target=self._read_control, args=(control, buffered), name="meshd-control", daemon=True
        )
        self._thread.start()

    def _read_control(self, control: socket.socket, buffer: bytes) -> None:
        try:
            while True:
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    self._control_line(line)
                data = control.recv(65536)
                if not data:
                    break
                buffer += data
                if len(buffer) > MAX_LINE:
                    buffer = buffer[-MAX_LINE:]
            reason = "meshd closed the worker connection"
        except OSError as exc:
            reason = f"the worker connection broke: {exc}"
        if not self._closed:
            self.end(reason)

    def _control_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return  # not ours to judge; the end of the connection still ends the generation
        if isinstance(message, dict) and message.get("event") == "fenced":
            self.end(str(message.get("reason") or "fenced"))

    # -- close

    def close(self, code: int | None = None) -> None:
        with self._lock:
            closing, self._closed = not self._closed, True
        if closing and self._control is not None:
            if code is not None:
                with contextlib.suppress(OSError):  # meshd is gone: nobody to tell
                    self._control.sendall(json.dumps({"op": "exit", "code": int(code)}).encode() + b"\n")
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)  # wakes the reader; close() alone would not
            self._control.close()
        if self._handler is not None:
            if threading.current_thread() is not threading.main_thread():
                return  # the handler stays (it writes the pipe); close() from the main thread restores it
            if signal.getsignal(signal.SIGTERM) is self._handler:
                signal.signal(signal.SIGTERM, self._previous)
            if self._wakeup is not None and self._pipe is not None:
                current = signal.set_wakeup_fd(self._wakeup)
                if current != self._pipe[1]:  # replaced since by someone else: theirs stays
                    signal.set_wakeup_fd(current)
            self._handler = None
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    os.close(self._pipe[1])  # the reader sees EOF and closes its end
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)


# ---- parsing and checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(environ: Mapping[str, str], name: str, minimum: int) -> int:
    text = environ[name]
    if not text.strip().isdigit():
        raise ValueError(f"{name}: expected a non-negative integer, got {text!r}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _check_peers(name: str, peers: list[str], size: int) -> None:
    if len(peers) != size:
        raise ValueError(f"{name}: expected {size} addresses (one per member), got {len(peers)}: {peers}")
    for peer in peers:
        host, sep, port = peer.rpartition(":")
        if not (sep and host and port.isdigit()):
            raise ValueError(f"{name}: expected HOST:PORT, got {peer!r}")


def _facts(prefix: str, **facts: Any) -> dict[str, Any]:
    """Check the shared facts; ``prefix`` names them as the caller knows them (MESHD_ variables or JSON keys)."""

    def name(key: str) -> str:
        return f"{prefix}{key.upper()}" if prefix else key

    if not isinstance(facts["cluster"], str) or not facts["cluster"]:
        raise ValueError(f"{name('cluster')}: expected a non-empty string, got {facts['cluster']!r}")
    epoch = facts["epoch"]
    if not isinstance(epoch, str) or not epoch or epoch != epoch.strip():
        raise ValueError(f"{name('epoch')}: expected an epoch as `meshd status` prints it, got {epoch!r}")
    incarnation = facts["incarnation"]
    if not isinstance(incarnation, str) or not _INCARNATION.fullmatch(incarnation):
        raise ValueError(f"{name('incarnation')}: expected up to 16 hex digits, got {incarnation!r}")
    return {**facts, "incarnation": int(incarnation, 16)}


def _parse_fds(text: str, size: int, index: int) -> list[int | None]:
    entries = text.split(",")
    if len(entries) != size:
        raise ValueError(
            f"MESHD_FDS: expected {size} comma-separated entries (MESHD_SIZE), '-' at index {index}, got {text!r}"
        )
    fds: list[int | None] = []
    for position, entry in enumerate(entries):
        if entry == "-":
            if position != index:
                raise ValueError(f"MESHD_FDS: '-' at entry {position}, but MESHD_INDEX is {index}: {text!r}")
            fds.append(None)
        elif position == index:
            raise ValueError(f"MESHD_FDS: entry {index} (MESHD_INDEX) must be '-', got {entry!r}: {text!r}")
        elif not entry.isdigit():
            raise ValueError(f"MESHD_FDS: entry {position} is not a descriptor number: {entry!r} in {text!r}")
        else:
            fds.append(int(entry))
    numbers = [fd for fd in fds if fd is not None]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"MESHD_FDS: a descriptor appears twice: {text!r}")
    return fds


def _wrap(fd: int, what: str) -> socket.socket:
    """A socket object over ``fd`` (owning it), after checking it is a stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"{what}: not a socket descriptor: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ValueError(f"{what}: not a stream socket ({sock.type!r})")
    return sock


def _own(sock: socket.socket) -> None:
    """Blocking (as the contract says) and not inherited by the worker's own children: a child that kept a copy
    would hold the connection open after the worker ends, and its peers would never see EOF."""
    sock.setblocking(True)
    sock.set_inheritable(False)
