"""The daemon's admin websocket: typed requests in, JSON answers and event streams out.

Ops (one JSON text message each; ``meshd.admin.messages`` reads and writes them):
- ``{"op": "status"}`` answers one message: the same object ``meshd status --json`` prints;
- ``{"op": "watch"}`` answers ``{"event": "snapshot", "status": {...}}`` then streams one event per message;
- ``{"op": "start", "epoch": E}`` (``--epoch await`` only) gives the daemon its epoch; a newer one later fences it.
Bad JSON or an unknown op answers ``{"error": "..."}`` and keeps the connection open.

trio-websocket (with wsproto and h11) is imported when the server starts, not with this module: ``meshd run``
binds its mesh port first, and the websocket stack is a good part of a daemon's start-up.
"""

from __future__ import annotations

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
from meshd.core.wire import Epoch

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketServer

# A request is a tiny JSON object; refuse anything bigger before parsing it.
MAX_REQUEST_BYTES = 64 * 1024
# Websocket close code (policy violation) for a watcher that could not keep up with the events.
WATCHER_DROPPED = 1008
# Websocket close code (going away) for every watcher when the daemon ends.
GOING_AWAY = 1001
# How long the close handshake with a watcher may take at the daemon's end.
CLOSE_TIMEOUT = 0.5


class Served(Protocol):
    """What the admin websocket serves (the Daemon): the status and start answers come in their JSON form."""

    bus: EventBus  # closed when the daemon ends

    def status(self) -> dict[str, Any]: ...

    def request_start(self, epoch: Epoch) -> dict[str, Any]: ...


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


async def serve_admin(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    daemon: Served,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin websocket on ``listeners`` (from the Network) until cancelled."""
    import ipaddress

    from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

    for listener in listeners:
        address = listener.socket.getsockname() if isinstance(listener, trio.SocketListener) else None
        if address and not ipaddress.ip_address(address[0]).is_loopback:
            logger.warning(
                "admin websocket listens on non-loopback address {}: anyone who reaches it can query", address[0]
            )

    async def handle(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            async with trio.open_nursery() as nursery:
                await AdminSession(ws, daemon, nursery).serve()
        except* ConnectionClosed:
            pass  # the client went away; nothing else to clean up

    server = WebSocketServer(handle, list(listeners), max_message_size=MAX_REQUEST_BYTES)  # type: ignore[arg-type]
    await server.run(task_status=task_status)
