"""The one admin websocket client: ``meshd status``/``watch``, ``meshd cluster``, the scripts and the tests use it.

Every call is bounded by ``timeout`` (connecting, the handshake, and the answer or the watch's snapshot) and fails
as an AdminUnreachable that says why: nothing listens (refused), nothing answers (AdminTimeout: a stopped daemon,
a silent listener), or what answers is not a meshd admin websocket (NotAdmin: a mesh port, another server).

The TCP socket is closed however the connection ends. trio-websocket 0.12 alone never closes it when the server
vanishes without a close handshake (``_abort_web_socket`` marks the connection closed, so ``aclose`` returns early),
which leaves it to the garbage collector and a ResourceWarning; killed daemons, and daemons fenced while answering
or streaming, do exactly that.

Two layers: ``request`` and ``watch`` hand over the documented JSON objects (for tools that read them as such, or
that send anything); ``status``, ``start`` and ``events`` the typed values of ``meshd.admin.messages``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

import h11
import trio
import wsproto.utilities
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection, wrap_client_stream

from meshd.admin import DEFAULT_TIMEOUT
from meshd.admin.messages import (
    JsonObject,
    MalformedMessage,
    Request,
    StartRequest,
    StatusRequest,
    WatchMessage,
    WatchRequest,
    parse_object,
    start_answer_from_json,
    status_from_json,
    watch_message_from_json,
)
from meshd.core.address import Address
from meshd.core.status import StartAnswer, Status
from meshd.core.wire import Epoch
from meshd.errors import AdminUnreachable
from meshd.net import describe_os_error

# How long closing the websocket politely may take before its socket is closed regardless.
CLOSE_TIMEOUT = 1.0
# What the far end of a handshake that is not a websocket's makes trio-websocket raise (h11 and wsproto are the
# HTTP and websocket parsers beneath it): a mesh port's hello is garbage to them, an HTTP server refuses.
HANDSHAKE_ERRORS = (HandshakeError, ConnectionClosed, h11.ProtocolError, wsproto.utilities.ProtocolError)
# What a daemon that is not there, not meshd, or gone makes a call of this module raise (AdminUnreachable), or a
# websocket from ``connect`` once it went away (ConnectionClosed).
CLIENT_ERRORS = (AdminUnreachable, ConnectionClosed)

T = TypeVar("T")
U = TypeVar("U")


class AdminTimeout(AdminUnreachable):
    """Nothing answered within the timeout: a stopped (SIGSTOP) daemon, or a listener that never speaks."""

    def __init__(self, address: Address, seconds: float, what: str) -> None:
        super().__init__(f"{what} from {address} within {seconds:g} s: is the daemon stopped, or is it no meshd?")
        self.address = address
        self.seconds = seconds


class NotAdmin(AdminUnreachable):
    """Something answered, but not as a meshd admin websocket does (a mesh port, another server)."""

    def __init__(self, address: Address, why: str) -> None:
        super().__init__(f"{address} is not a meshd admin websocket: {why}")
        self.address = address
        self.why = why


class AdminUnauthorized(AdminUnreachable):
    """The daemon wants an admin token (``admin.token_file``) and we presented none (401) or a wrong one (403)."""

    def __init__(self, address: Address, status_code: int, presented: bool) -> None:
        what = "refused our token" if presented else "wants a token"
        super().__init__(f"the meshd admin websocket at {address} {what} (HTTP {status_code}): give --token-file")
        self.address = address
        self.status_code = status_code


def lone_error(error: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (a nursery wraps even one), else ``error``."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class _Transport(trio.abc.Stream):
    """The TCP stream beneath the websocket, noting when it ends: trio-websocket does not wake a handshake in
    progress when the far end closes, it would wait for ever."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def aclose(self) -> None:
        self.ended.set()
        await self._stream.aclose()


@asynccontextmanager
async def connect(
    address: Address, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None
) -> AsyncIterator[WebSocketConnection]:
    """An open websocket to a daemon's admin address (opening it takes at most ``timeout``), closed on the way out;
    ``token`` is presented as ``Authorization: Bearer``.

    Errors of the caller's block come out as themselves, not wrapped in the group of the websocket's nursery.
    """
    deadline = trio.current_time() + timeout
    with trio.CancelScope(deadline=deadline) as dialing:
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise AdminUnreachable(f"no meshd admin websocket at {address}: {describe_os_error(exc)}") from exc
    if dialing.cancelled_caught:
        raise AdminTimeout(address, timeout, "no connection")
    transport = _Transport(stream)
    opened = False
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope(deadline=deadline) as handshaking:
                ws = await _handshake(nursery, transport, address, token)
            if handshaking.cancelled_caught:
                raise AdminTimeout(address, timeout, "no websocket handshake")
            opened = True
            try:
                yield ws
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = lone_error(group)
        if not opened and isinstance(error, ConnectionRejected) and error.status_code in (401, 403):
            raise AdminUnauthorized(address, error.status_code, token is not None) from error
        if not opened and isinstance(error, HANDSHAKE_ERRORS):
            raise NotAdmin(address, _handshake_failure(error)) from error
        if error is group:
            raise
        raise error from None
    finally:
        await trio.aclose_forcefully(stream)


async def _handshake(
    nursery: trio.Nursery, transport: _Transport, address: Address, token: str | None
) -> WebSocketConnection:
    headers = None if token is None else [(b"Authorization", b"Bearer " + token.encode())]
    with trio.CancelScope() as handshake:
        nursery.start_soon(_cancel_when_ended, transport, handshake)
        return await wrap_client_stream(
            nursery,
            transport,  # type: ignore[arg-type]
            address.host,
            "/",
            extra_headers=headers,
        )
    raise NotAdmin(address, "it closed the connection during the websocket handshake")


async def _cancel_when_ended(transport: _Transport, scope: trio.CancelScope) -> None:
    await transport.ended.wait()
    scope.cancel()


def _handshake_failure(error: BaseException) -> str:
    if isinstance(error, ConnectionRejected):
        return f"it refused the websocket handshake (HTTP {error.status_code})"
    return "it did not answer the websocket handshake as a websocket does (a meshd mesh port?)"


async def request(
    address: Address,
    message: Request | Mapping[str, Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
) -> JsonObject:
    """Send one request (typed, or any JSON object) and return the one answer, all within ``timeout``."""
    body = message if isinstance(message, Mapping) else message.to_json()
    answer: str | bytes | None = None
    with trio.move_on_after(timeout):
        async with connect(address, timeout=timeout, token=token) as ws:
            try:
                await ws.send_message(json.dumps(body))
                answer = await ws.get_message()
            except ConnectionClosed as exc:
                raise AdminUnreachable(f"the admin websocket at {address} closed before answering") from exc
    if answer is None:
        raise AdminTimeout(address, timeout, "no answer")
    return _parsed(address, parse_object, answer)


async def watch(
    address: Address, *, timeout: float = DEFAULT_TIMEOUT, liveness: float | None = None, token: str | None = None
) -> AsyncIterator[JsonObject]:
    """The daemon's watch messages: the snapshot (within ``timeout``), then each event until the daemon goes away.

    A quiet mesh sends no events, and neither does a stopped daemon: with ``liveness``, a silence that long sends a
    ping, and a pong not back within as long ends the watch in AdminTimeout.
    """
    async with connect(address, timeout=timeout, token=token) as ws:
        snapshot: str | bytes | None = None
        with trio.move_on_after(timeout):
            try:
                await ws.send_message(json.dumps(WatchRequest().to_json()))
                snapshot = await ws.get_message()
            except ConnectionClosed as exc:
                raise AdminUnreachable(f"the admin websocket at {address} closed before answering") from exc
        if snapshot is None:
            raise AdminTimeout(address, timeout, "no snapshot")
        yield _parsed(address, parse_object, snapshot)
        while (text := await _next_message(ws, address, liveness)) is not None:
            yield _parsed(address, parse_object, text)


async def _next_message(ws: WebSocketConnection, address: Address, liveness: float | None) -> str | bytes | None:
    """The next message, or None once the daemon closed the websocket; pings after ``liveness`` of silence."""
    silence = math.inf if liveness is None else liveness
    while True:
        with trio.move_on_after(silence):
            try:
                return await ws.get_message()
            except ConnectionClosed:
                return None
        with trio.move_on_after(silence) as pinging:
            try:
                await ws.ping()
            except ConnectionClosed:
                return None
        if pinging.cancelled_caught:
            if ws.closed is not None:  # it went away meanwhile: trio-websocket does not wake a ping in flight
                return None
            raise AdminTimeout(address, silence, "no answer to a ping")


async def status(address: Address, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> Status:
    """The daemon's status, typed."""
    answer = await request(address, StatusRequest(), timeout=timeout, token=token)
    return _parsed(address, status_from_json, answer)


async def start(
    address: Address, epoch: Epoch, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None
) -> StartAnswer:
    """The controller's ``start`` op (``--epoch await``), its answer typed."""
    answer = await request(address, StartRequest(epoch), timeout=timeout, token=token)
    return _parsed(address, start_answer_from_json, answer)


async def events(
    address: Address, *, timeout: float = DEFAULT_TIMEOUT, liveness: float | None = None, token: str | None = None
) -> AsyncIterator[WatchMessage]:
    """``watch``, typed: the Snapshot, then MeshEvents."""
    async with aclosing(watch(address, timeout=timeout, liveness=liveness, token=token)) as messages:
        async for message in messages:
            yield _parsed(address, watch_message_from_json, message)


def _parsed(address: Address, parse: Callable[[T], U], data: T) -> U:
    try:
        return parse(data)
    except MalformedMessage as exc:
        raise NotAdmin(address, str(exc)) from exc
