"""The daemon's admin websocket: typed requests in, JSON answers and event streams out.

Ops (one JSON text message each; ``meshd.admin.messages`` reads and writes them):
- ``{"op": "status"}`` answers one message: the same object ``meshd status --json`` prints;
- ``{"op": "watch"}`` answers ``{"event": "snapshot", "status": {...}}`` then streams one event per message;
- ``{"op": "start", "epoch": E}`` (``--epoch await`` only) gives the daemon its epoch; a newer one later fences it.
Bad JSON or an unknown op answers ``{"error": "..."}`` and keeps the connection open.

Strangers are bounded: at most ``limits.admin_clients`` connections at once (more are closed unheard), an HTTP
upgrade within ADMIN_HANDSHAKE_TIMEOUT, requests of at most ``limits.admin_message_bytes``. With ``admin.token_file``
every upgrade request must carry ``Authorization: Bearer <token>``; without it the upgrade is rejected (401, or 403
for a wrong token) and nothing is served.

trio-websocket (with wsproto and h11) is imported when the server starts, not with this module: ``meshd run``
binds its mesh port first, and the websocket stack is a good part of a daemon's start-up.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio
from loguru import logger

from meshd.admin.messages import (
    ErrorAnswer,
    JsonObject,
    StartRequest,
    StatusRequest,
    WatchRequest,
    parse_request,
    snapshot_json,
)
from meshd.bus import EventBus
from meshd.config import Limits
from meshd.core.wire import Epoch
from meshd.gate import Gate

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketServer

# How long a client may take to send its HTTP upgrade request (trio-websocket's default is a minute).
ADMIN_HANDSHAKE_TIMEOUT = 5.0
# Websocket close code (policy violation) for a watcher that could not keep up with the events.
WATCHER_DROPPED = 1008
# Websocket close code (going away) for every watcher when the daemon ends.
GOING_AWAY = 1001
# Websocket close code (internal error) for a client whose request broke the server.
INTERNAL_ERROR = 1011
# How long the close handshake with a watcher may take at the daemon's end.
CLOSE_TIMEOUT = 0.5


class Served(Protocol):
    """What the admin websocket serves (the Daemon): the status and start answers come in their JSON form."""

    bus: EventBus  # closed when the daemon ends

    def status(self) -> dict[str, Any]: ...

    def request_start(self, epoch: Epoch) -> dict[str, Any]: ...

    gate: Gate  # counts the connections refused: no or a wrong token, or one client too many


class _Counted(trio.abc.Stream):
    """An accepted admin connection that frees its place among ``limits.admin_clients`` when it closes."""

    def __init__(self, stream: trio.SocketStream, release: Any) -> None:
        self.socket = stream.socket  # trio-websocket reads the endpoints from it
        self._stream = stream
        self._release = release

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        await self._stream.aclose()


class BoundedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that holds at most ``limit`` connections open; beyond, it closes new ones at once (counted)."""

    def __init__(self, listener: trio.SocketListener, limit: int, rejected: Any) -> None:
        self._listener = listener
        self._limit = limit
        self._rejected = rejected
        self.open = 0

    async def accept(self) -> trio.abc.Stream:
        while True:
            stream = await self._listener.accept()
            if self.open < self._limit:
                self.open += 1
                return _Counted(stream, self._release)
            self._rejected()
            await trio.aclose_forcefully(stream)

    def _release(self) -> None:
        self.open -= 1

    async def aclose(self) -> None:
        await self._listener.aclose()


class AdminSession:
    """One admin websocket client: serves its requests in order; ``watch`` streams events beside further requests."""

    def __init__(self, ws: WebSocketConnection, daemon: Served, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.daemon = daemon
        self._nursery = nursery
        self._send_lock = trio.Lock()

    async def send(self, message: JsonObject) -> None:
        async with self._send_lock:
            await self.ws.send_message(json.dumps(message))

    async def serve(self) -> None:
        while True:
            match parse_request(await self.ws.get_message()):
                case StatusRequest():
                    await self.send(self.daemon.status())
                case WatchRequest():
                    await self._nursery.start(self._stream_events)
                case StartRequest(epoch=epoch):
                    await self.send(self.daemon.request_start(epoch))
                case ErrorAnswer() as error:
                    await self.send(error.to_json())

    async def _stream_events(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The snapshot, then every event; at the daemon's end (the bus closed) a polite close, so that the watcher
        reads every event before the connection ends, instead of a reset that may discard the last ones."""
        bus = self.daemon.bus
        with bus.subscribe() as events:
            await self.send(snapshot_json(self.daemon.status()))
            task_status.started()
            async for event in events:
                await self.send(event.to_json())
            with trio.move_on_after(CLOSE_TIMEOUT):
                if bus.closed:
                    await self.ws.aclose(GOING_AWAY, "the daemon ends")
                else:
                    await self.ws.aclose(WATCHER_DROPPED, "watcher fell too far behind the event stream")


def token_verdict(headers: Sequence[tuple[bytes, bytes]], token: str | None) -> int | None:
    """None when the upgrade request may go on; else the HTTP status to reject it with (401: no token, 403: wrong)."""
    if token is None:
        return None
    presented = [value for name, value in headers if name.lower() == b"authorization"]
    if not presented or not presented[0].startswith(b"Bearer "):
        return 401
    return None if hmac.compare_digest(presented[0][len(b"Bearer ") :].strip(), token.encode()) else 403


async def serve_admin(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    daemon: Served,
    token: str | None = None,
    limits: Limits | None = None,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin websocket on ``listeners`` (from the Network) until cancelled; with ``token``, only to
    clients that present it."""
    import ipaddress

    from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

    for listener in listeners:
        address = listener.socket.getsockname() if isinstance(listener, trio.SocketListener) else None
        if address and not ipaddress.ip_address(address[0]).is_loopback and token is None:
            logger.warning(
                "admin websocket listens on non-loopback address {}: anyone who reaches it can query", address[0]
            )
    limits = limits or Limits()
    bounded = [
        BoundedListener(listener, limits.admin_clients, daemon.gate.admin_rejected)
        if isinstance(listener, trio.SocketListener)
        else listener
        for listener in listeners
    ]

    async def handle(request: WebSocketRequest) -> None:
        verdict = token_verdict(request.headers, token)
        if verdict is not None:
            daemon.gate.admin_rejected()
            await request.reject(verdict, body=b"a meshd admin token is required (Authorization: Bearer ...)\n")
            # trio-websocket 0.12 would keep a rejected connection open until the client closes it (its aclose
            # returns early once the handshake is rejected), holding one of limits.admin_clients places: a client
            # without the token could lock every other client out. Close it now.
            await trio.aclose_forcefully(request._connection._stream)
            return
        ws = await request.accept()
        daemon.gate.admin_clients += 1
        try:
            async with trio.open_nursery() as nursery:
                await AdminSession(ws, daemon, nursery).serve()
        except* ConnectionClosed:
            pass  # the client went away; nothing else to clean up
        except* Exception as group:  # no client's input may end the daemon: this client alone is dropped
            logger.error("admin client {} dropped: {!r}", request.remote, group.exceptions[0])
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose(INTERNAL_ERROR, "internal error")
        finally:
            daemon.gate.admin_clients -= 1

    server = WebSocketServer(
        handle,
        bounded,  # type: ignore[arg-type]
        max_message_size=limits.admin_message_bytes,
        connect_timeout=ADMIN_HANDSHAKE_TIMEOUT,
    )
    await server.run(task_status=task_status)
