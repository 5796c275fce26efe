"""A worker in another container (``worker.socket``): it attaches over a Unix stream socket and gets the data
sockets as SCM_RIGHTS ancillary data. The trio shell; the worker's side is ``meshd.worker.Mesh.attach``.

The protocol, one JSON object per line: the worker sends ``{"op": "attach"}``; once the mesh is ready meshd answers
with the facts (``meshd.worker.contract.Facts``) and the N-1 sockets in index order, the worker's own skipped. The
connection stays open: when the generation ends meshd writes ``{"event": "fenced", "reason": ...}`` and waits up to
``stop_grace`` for the worker to close its end. A worker that is done says ``{"op": "exit", "code": 0}`` before it
closes; a worker that closes without an exit line has failed (its container died). A second attach is refused.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable, Mapping

import trio

from meshd.core.status import WorkerState, WorkerStatus
from meshd.core.wire import Epoch
from meshd.worker.contract import Facts

# A request line is tiny; a longer one is not a worker speaking this protocol.
MAX_LINE = 64 * 1024
# How long a connecting worker may take to send its attach line.
ATTACH_TIMEOUT = 10.0


class AttachedWorker:
    """The one worker that attaches over ``path``; the daemon drives it as it drives a WorkerProcess."""

    def __init__(self, path: str, stop_grace: float, changed: Callable[[], None]) -> None:
        self.path = path
        self.stop_grace = stop_grace
        self.status = WorkerStatus()
        self.pid: int | None = None  # in another container: no pid of ours
        self._changed = changed  # the daemon's: it waits for a worker to attach
        self._conn: trio.socket.SocketType | None = None
        self._closed = trio.Event()
        self._exit: int | None = None
        self._told = False  # the end of the generation was written
        self._following = False  # a task of ours reads the worker's lines
        self._nursery: trio.Nursery | None = None

    @property
    def present(self) -> bool:
        return self._conn is not None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _remove_stale(self.path)
        try:
            await listener.bind(self.path)
            listener.listen()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._handle, conn)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _handle(self, conn: trio.socket.SocketType) -> None:
        reader = _Lines(conn)
        with trio.move_on_after(ATTACH_TIMEOUT):
            request = await reader.next()
            if request != {"op": "attach"}:
                await _send(conn, {"error": f"expected {{'op': 'attach'}}, got {request!r}"})
            elif self._conn is not None or self.status.state is not None:
                await _send(conn, {"error": "a worker is attached to this daemon already (one per daemon, ever)"})
            else:
                self._conn = conn
                self._changed()
                await self._follow(reader)
                return
        conn.close()

    async def _follow(self, reader: _Lines) -> None:
        """The attached worker's lines until it closes its end: an exit line says how it ended."""
        self._following = True
        try:
            while (message := await reader.next()) is not None:
                if isinstance(message, dict) and message.get("op") == "exit" and isinstance(message.get("code"), int):
                    self._exit = message["code"]
        finally:
            self._following = False
        self._closed.set()
        self._changed()

    async def start(self, sockets: Mapping[int, socket.socket], facts: Facts, epoch: Epoch, now: float) -> None:
        """Send the facts and the sockets (then closed here: meshd keeps no copy)."""
        assert self._conn is not None, "start() before a worker attached"
        self.status = WorkerStatus(None, WorkerState.STARTING, now, None, epoch)
        line = (json.dumps(facts.to_json()) + "\n").encode()
        fds = array.array("i", [sockets[peer].fileno() for peer in sorted(sockets)])
        try:
            with contextlib.suppress(OSError):  # it left meanwhile: ``wait`` reports that
                await self._conn.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        finally:
            for sock in sockets.values():
                sock.close()
        self.status = WorkerStatus(None, WorkerState.RUNNING, now, None, epoch)

    async def wait(self) -> int | None:
        """Until the worker closes its end: the exit code it reported, None when it said nothing (a failure)."""
        await self._closed.wait()
        self.status = WorkerStatus(None, WorkerState.EXITED, self.status.started, self._exit, self.status.epoch)
        return self._exit

    def terminate(self, reason: str) -> None:
        """The generation ends: tell the worker (now, if the daemon still runs; else ``stop`` does)."""
        if self._conn is None or self._told or self._nursery is None:
            return
        self._nursery.start_soon(self._tell, reason)

    async def stop(self, reason: str) -> None:
        """Tell the worker, wait up to ``stop_grace`` for it to close its end, then close ours."""
        if self._conn is None:
            return
        if not self._told:
            await self._tell(reason)
        with trio.move_on_after(self.stop_grace), contextlib.suppress(OSError):
            if self._following:
                await self._closed.wait()
            else:
                while not self._closed.is_set() and await self._conn.recv(4096):
                    pass  # the daemon's tasks are over: read to the worker's end here
        self._conn.close()

    async def _tell(self, reason: str) -> None:
        if self._told or self._conn is None:
            return
        self._told = True
        if self.status.state is not None and not self._closed.is_set():
            self.status = WorkerStatus(None, WorkerState.STOPPING, self.status.started, None, self.status.epoch)
        await _send(self._conn, {"event": "fenced", "reason": reason})


class _Lines:
    """JSON lines from a socket (None at the end, or for a line that is not JSON)."""

    def __init__(self, conn: trio.socket.SocketType) -> None:
        self._conn = conn
        self._buffer = b""

    async def next(self) -> object:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                return None
            try:
                data = await self._conn.recv(4096)
            except OSError:
                return None
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {"unreadable": line[:80].decode("utf-8", "replace")}


async def _send(conn: trio.socket.SocketType, message: dict[str, object]) -> None:
    data = (json.dumps(message) + "\n").encode()
    with contextlib.suppress(OSError):
        while data:
            sent = await conn.send(data)
            data = data[sent:]


def _remove_stale(path: str) -> None:
    """A socket file left by a dead daemon would make the bind fail; anything else at ``path`` is not ours."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
