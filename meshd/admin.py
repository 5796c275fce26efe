"""The local admin websocket: JSON requests in, JSON answers and event streams out.

Ops (one JSON text message each):
- ``{"op": "status"}`` answers one message: the same object ``meshd status --json`` prints;
- ``{"op": "watch"}`` answers ``{"event": "snapshot", "status": {...}}`` then streams one event per message;
- ``{"op": "start", "epoch": E}`` (``--epoch await`` only) gives the daemon its epoch; a newer one later fences it.
Bad JSON or an unknown op answers ``{"error": "..."}`` and keeps the connection open.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio
from loguru import logger
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    open_websocket,
)

from meshd.bus import EventBus
from meshd.core.address import Address
from meshd.core.wire import U64_MAX, Epoch
from meshd.errors import AdminUnreachable
from meshd.net import describe_os_error

# A request is a tiny JSON object; refuse anything bigger before parsing it.
MAX_REQUEST_BYTES = 64 * 1024
# Websocket close code (policy violation) for a watcher that could not keep up with the events.
WATCHER_DROPPED = 1008


Handler = Callable[["AdminSession", dict[str, Any]], Awaitable[None]]


class Served(Protocol):
    """What the admin websocket serves (the Daemon)."""

    bus: EventBus

    def status(self) -> dict[str, Any]: ...

    def request_start(self, epoch: Epoch) -> dict[str, Any]: ...


class AdminSession:
    """One admin websocket client: dispatches its requests; ``watch`` streams events beside further requests."""

    def __init__(self, ws: WebSocketConnection, daemon: Served, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.daemon = daemon
        self._nursery = nursery
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_message(json.dumps(message))

    async def serve(self) -> None:
        while True:
            text = await self.ws.get_message()
            try:
                request = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                await self.send({"error": f"bad JSON: {exc}"})
                continue
            op = request.get("op") if isinstance(request, dict) else None
            handler = OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                await self.send({"error": f"unknown op {op!r}; known ops: {', '.join(sorted(OPS))}"})
                continue
            await handler(self, request)

    async def op_status(self, _: dict[str, Any]) -> None:
        await self.send(self.daemon.status())

    async def op_start(self, request: dict[str, Any]) -> None:
        epoch = request.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= U64_MAX:
            await self.send({"error": f"start needs an integer epoch in 0..2**64-1, got {epoch!r}"})
            return
        await self.send(self.daemon.request_start(Epoch(epoch)))

    async def op_watch(self, _: dict[str, Any]) -> None:
        await self._nursery.start(self._stream_events)

    async def _stream_events(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.daemon.bus.subscribe() as events:
            await self.send({"event": "snapshot", "status": self.daemon.status()})
            task_status.started()
            async for event in events:
                await self.send(event.to_json())
        await self.ws.aclose(WATCHER_DROPPED, "watcher fell too far behind the event stream")


OPS: dict[str, Handler] = {
    "status": AdminSession.op_status,
    "watch": AdminSession.op_watch,
    "start": AdminSession.op_start,
}


async def serve_admin(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    daemon: Served,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin websocket on ``listeners`` (from the Network) until cancelled."""
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


@asynccontextmanager
async def connect_admin(address: Address) -> AsyncIterator[WebSocketConnection]:
    """A client websocket to a daemon's admin address; AdminUnreachable when nothing answers.

    A client tool, not the daemon: it uses trio-websocket's own connector rather than the injectable Network.
    """
    try:
        async with open_websocket(address.host, address.port, "/", use_ssl=False) as ws:
            yield ws
    except (OSError, HandshakeError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        reason = describe_os_error(cause) if isinstance(cause, OSError) else "websocket handshake failed"
        raise AdminUnreachable(f"no meshd admin websocket at {address}: {reason}") from exc


async def request(address: Address, message: dict[str, Any]) -> dict[str, Any]:
    """Send one admin request and return the one answer."""
    async with connect_admin(address) as ws:
        await ws.send_message(json.dumps(message))
        try:
            return json.loads(await ws.get_message())
        except ConnectionClosed as exc:
            raise AdminUnreachable(f"admin websocket at {address} closed before answering") from exc


async def watch(address: Address) -> AsyncIterator[dict[str, Any]]:
    """The daemon's events, starting with a snapshot, until the daemon goes away."""
    async with connect_admin(address) as ws:
        await ws.send_message(json.dumps({"op": "watch"}))
        try:
            while True:
                yield json.loads(await ws.get_message())
        except ConnectionClosed:
            return
