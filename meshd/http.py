"""The daemon's HTTP endpoint (``[http] listen``): probes for an orchestrator and metrics for Prometheus.

- ``GET /livez``: 200 while the daemon's event loop runs (this handler runs on it);
- ``GET /readyz``: 200 when the mesh is ready and, with a worker configured, the worker runs; else 503. The body is
  a small JSON object either way: ``{"ready": true, "state": "ready", "epoch": 5, "worker": "running"}``;
- ``GET /metrics``: the daemon's own registry (``meshd.metrics``) in the Prometheus text format, or in OpenMetrics
  when the scraper's Accept header asks for it (negotiated as prometheus_client's own servers do);
- any other path 404, any other method 405.

One small trio server speaking HTTP/1.1 through h11 (sans-I/O): one task per connection, one request per
connection (every response says ``Connection: close``). Strangers are bounded as on the admin port: at most
HTTP_CLIENTS connections at once (more are closed unheard and counted), a request head buffered up to
MAX_REQUEST_HEAD bytes (beyond, 431), the head within REQUEST_TIMEOUT, the whole connection within CLIENT_TIMEOUT.
Nothing a client sends can end the daemon: a connection that breaks the server is logged and closed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import h11
import trio
from attrs import frozen
from loguru import logger

from meshd.core.status import MeshState, Status, WorkerState, epoch_json
from meshd.metrics import MeshMetrics

# Connections served at once; beyond, new ones are closed at once (meshd_http_rejected_total).
HTTP_CLIENTS = 16
# How much of an incomplete request head (request line and headers) is buffered; beyond, it is answered 431 (h11
# checks between reads: a head completed by its last read may exceed it by up to RECEIVE_BYTES).
MAX_REQUEST_HEAD = 8 * 1024
# How long a client may take to send its request head.
REQUEST_TIMEOUT = 5.0
# How long one connection may last in all (the request, the answer, the close).
CLIENT_TIMEOUT = 10.0
# After the answer, how long the server reads (and drops) what the client still sends before it closes: closing
# with unread bytes would reset the connection and could discard the answer before the client reads it.
LINGER = 1.0
RECEIVE_BYTES = 16 * 1024
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@frozen
class Reply:
    """One HTTP answer, before h11 frames it."""

    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def readiness(status: Status, worker: bool) -> tuple[bool, dict[str, Any]]:
    """Whether ``/readyz`` answers 200, and its body: the mesh is ready and, with ``worker``, the worker runs."""
    running = status.worker.state
    ready = status.state is MeshState.READY and (not worker or running is WorkerState.RUNNING)
    body = {
        "ready": ready,
        "state": str(status.state),
        "epoch": epoch_json(status.epoch),
        "worker": None if running is None else str(running),
    }
    return ready, body


def answer(method: bytes, target: bytes, metrics: MeshMetrics, accept: bytes = b"") -> Reply:
    """The answer to one request (the query string is ignored); ``accept`` is its Accept header (for /metrics)."""
    path = target.split(b"?", 1)[0]
    if path not in (b"/livez", b"/readyz", b"/metrics"):
        return Reply(404, b"not found: try /livez, /readyz or /metrics\n")
    if method != b"GET":
        return Reply(405, b"only GET\n", headers=(("Allow", "GET"),))
    if path == b"/livez":
        return Reply(200, b"ok\n")
    if path == b"/readyz":
        ready, body = readiness(metrics.status(), metrics.worker)
        return Reply(200 if ready else 503, json.dumps(body).encode() + b"\n", JSON)
    body, content_type = metrics.exposition(accept.decode("latin-1"))
    return Reply(200, body, content_type)


def _answer_safely(request: h11.Request, metrics: MeshMetrics) -> Reply:
    try:
        accept = b",".join(value for name, value in request.headers if name == b"accept")
        return answer(request.method, request.target, metrics, accept)
    except Exception as exc:  # a bug of ours: the client learns it, the daemon goes on
        logger.opt(exception=exc).error("HTTP {} {} failed: {!r}", request.method, request.target, exc)
        return Reply(500, b"internal error\n")


def _frame(conn: h11.Connection, reply: Reply) -> bytes:
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *reply.headers,
    ]
    response = h11.Response(status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase)
    head = conn.send(response) or b""
    return head + (conn.send(h11.Data(data=reply.body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")


async def _read_request(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Request | None:
    """The request head, or None when the client closed without sending one."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
        elif isinstance(event, h11.Request):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:  # a server sees nothing else before a request
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before a request", 400)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read (and drop) what the client still sends until it closes, bounded by LINGER."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(LINGER):
        while await stream.receive_some(RECEIVE_BYTES):
            pass


async def serve_client(stream: trio.abc.Stream, metrics: MeshMetrics) -> None:
    """One connection: one request, one answer, an orderly close; every step bounded."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    try:
        with trio.move_on_after(CLIENT_TIMEOUT):
            request: h11.Request | None = None
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    request = await _read_request(stream, conn)
                if request is None:
                    return  # closed, or no request head in time: nothing to answer
                reply = _answer_safely(request, metrics)
            except h11.RemoteProtocolError as exc:
                reply = Reply(exc.error_status_hint, f"bad request: {exc}\n".encode())
            await stream.send_all(_frame(conn, reply))
            await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away
    except Exception as exc:  # no client may end the daemon: this one alone is dropped
        logger.opt(exception=exc).error("HTTP client dropped: {!r}", exc)
    finally:
        await trio.aclose_forcefully(stream)


def _address(listener: trio.abc.Listener[trio.abc.Stream]) -> str | None:
    """The bound host of a socket listener (None over a transport without one)."""
    if not isinstance(listener, trio.SocketListener):
        return None
    return str(listener.socket.getsockname()[0])


async def serve_http(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    metrics: MeshMetrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP endpoint on ``listeners`` (from the Network) until cancelled."""
    for listener in listeners:
        host = _address(listener)
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            logger.warning(
                "HTTP endpoint listens on non-loopback address {}: anyone who reaches it can read the mesh's "
                "status and metrics",
                host,
            )
    open_clients = 0

    async def client(stream: trio.abc.Stream) -> None:
        nonlocal open_clients
        try:
            await serve_client(stream, metrics)
        finally:
            open_clients -= 1

    async def accept_loop(listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery) -> None:
        nonlocal open_clients
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError:  # out of file descriptors and the like: pause, keep serving
                    await trio.sleep(0.1)
                    continue
                if open_clients >= HTTP_CLIENTS:
                    metrics.http_rejected()
                    await trio.aclose_forcefully(stream)
                    continue
                open_clients += 1
                nursery.start_soon(client, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started()
