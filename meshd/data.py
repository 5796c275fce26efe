"""The worker's data connections (the trio shell around ``meshd.core.data``): dial, accept, verify, hand over.

One connection per pair of processes and generation, kept from the moment both incarnations verified it until the
worker takes it (``hand_over``); meshd reads and writes only the DATA hello and its one-frame answer, each exactly,
and closes its copies once the worker holds them. A generation change drops every connection of the old one.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from loguru import logger

from meshd.config import Timeouts
from meshd.connection import LinkFailure
from meshd.core.address import Address
from meshd.core.backoff import Backoff
from meshd.core.data import data_hello, dials_data, judge_data
from meshd.core.hello import Identity
from meshd.core.status import EndCause
from meshd.core.wire import (
    ACCEPT_SIZE,
    DATA_HELLO_SIZE,
    FRAME_HEAD_SIZE,
    Accept,
    DataHello,
    FrameDecoder,
    Refuse,
    RefuseReason,
    encode,
)
from meshd.errors import RemoteProtocolError
from meshd.net import Network

if TYPE_CHECKING:
    from loguru import Logger


async def receive_exactly(stream: trio.abc.Stream, count: int) -> bytes:
    """Exactly ``count`` bytes, never one more (a worker's bytes may follow); LinkFailure at end of stream."""
    data = bytearray()
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise LinkFailure(EndCause.CLOSED, f"the connection closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def _frame(data: bytes) -> object:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return decoder.next_frame()


class DataPlane:
    """The data connections of this process's current generation, by peer (over real sockets: they are handed on)."""

    def __init__(
        self,
        me: Callable[[], Identity],
        holder: Callable[[int], int | None],
        addresses: list[Address],
        net: Network,
        timeouts: Timeouts,
        rng: random.Random,
        changed: Callable[[], None],
    ) -> None:
        self._me = me
        self._signal = changed  # the daemon's: its worker waits for every connection
        self._holder = holder
        self._addresses = addresses
        self._net = net
        self._timeouts = timeouts
        self._rng = rng
        self._streams: dict[int, tuple[int, trio.abc.Stream]] = {}  # peer -> (its incarnation, the connection)
        self._dials: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._handed = False  # the connections went to the worker: none is made or taken any more

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def complete(self) -> bool:
        me = self._me()
        return all(peer in self._streams for peer in range(me.size) if peer != me.index)

    def link_up(self, peer: int, incarnation: int) -> None:
        """The control link to ``peer`` (``incarnation``) is up in our generation: the lower index dials its data
        connection, unless one to that incarnation exists."""
        held = self._streams.get(peer)
        if self._handed or (held is not None and held[0] == incarnation):
            return  # handed over: the generation is final, its worker holds its connections
        self._drop(peer)
        if dials_data(self._me().index, peer) and self._nursery is not None:
            scope = trio.CancelScope()
            self._dials[peer] = scope
            self._nursery.start_soon(self._dial, peer, incarnation, scope)

    def generation_changed(self) -> None:
        for peer in list(self._streams) + list(self._dials):
            self._drop(peer)

    async def accept(self, stream: trio.abc.Stream, head: bytes) -> None:
        """An inbound connection whose first frame header says DATA: read the hello exactly, judge, answer."""
        try:
            hello = _frame(head + await receive_exactly(stream, DATA_HELLO_SIZE - FRAME_HEAD_SIZE))
        except (RemoteProtocolError, LinkFailure) as exc:
            hello = exc
        if not isinstance(hello, DataHello):
            self._log().warning("data connection closed: not a data hello ({})", hello)
            await stream.aclose()
            return
        answer = judge_data(hello, self._me(), self._holder(hello.sender))
        if self._handed and isinstance(answer, Accept):  # the worker holds this generation's connections
            answer = Refuse(RefuseReason.RETIRED, self._me().epoch, "the data connections are handed over")
        try:
            await stream.send_all(encode(answer))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.aclose()
            return
        if isinstance(answer, Refuse):
            await stream.aclose()
            return
        self._keep(hello.sender, hello.incarnation, stream)

    async def _dial(self, peer: int, incarnation: int, scope: trio.CancelScope) -> None:
        backoff = Backoff(self._timeouts.backoff_initial, self._timeouts.backoff_max, self._rng)
        with scope:
            while True:
                epoch = self._me().epoch
                try:
                    stream = await self._connect(peer, incarnation)
                except LinkFailure as exc:
                    self._log().debug("data connection to {}: {}", peer, exc)
                    await trio.sleep(backoff.next_delay())
                    continue
                if self._me().epoch != epoch:
                    await stream.aclose()
                    return
                self._dials.pop(peer, None)
                self._keep(peer, incarnation, stream)
                return

    async def _connect(self, peer: int, incarnation: int) -> trio.abc.Stream:
        with trio.move_on_after(self._timeouts.connect + self._timeouts.handshake):
            try:
                stream = await self._net.connect(self._addresses[peer])
            except OSError as exc:
                raise LinkFailure(EndCause.UNREACHABLE, f"connect failed: {exc}") from exc
            try:
                await stream.send_all(encode(data_hello(self._me(), peer, incarnation)))
                head = await receive_exactly(stream, ACCEPT_SIZE)
                answer = _frame(head)
                if answer is None:  # a REFUSE: its payload follows; the connection is closed anyway
                    answer = _frame(head + await receive_exactly(stream, int.from_bytes(head[:4], "big") - 1))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, RemoteProtocolError) as exc:
                await stream.aclose()
                raise LinkFailure(EndCause.CLOSED, f"data hello failed: {exc}") from exc
            except BaseException:
                await stream.aclose()
                raise
            if isinstance(answer, Accept):
                return stream
            await stream.aclose()
            raise LinkFailure(EndCause.REFUSED, f"data hello refused: {answer}")
        raise LinkFailure(EndCause.UNREACHABLE, "data hello timed out")

    def _keep(self, peer: int, incarnation: int, stream: trio.abc.Stream) -> None:
        self._drop(peer)
        self._streams[peer] = (incarnation, stream)
        self._log().debug("data connection to {} ready", peer)
        self._signal()

    def _drop(self, peer: int) -> None:
        scope = self._dials.pop(peer, None)
        if scope is not None:
            scope.cancel()
        held = self._streams.pop(peer, None)
        if held is not None:
            _close(held[1])
        self._signal()

    def hand_over(self) -> dict[int, socket.socket]:
        """The data sockets, blocking, as plain sockets of their own descriptors; meshd's copies are closed."""
        handed = {}
        for peer, (_, stream) in sorted(self._streams.items()):
            sock = stream.socket  # type: ignore[attr-defined]
            copy = socket.socket(fileno=os.dup(sock.fileno()))
            copy.setblocking(True)  # O_NONBLOCK lives in the shared file description: this sets it for both
            handed[peer] = copy
            _close(stream)
        self._streams.clear()
        self._handed = True
        return handed

    def close(self) -> None:
        self.generation_changed()

    def _log(self) -> Logger:
        me = self._me()
        return logger.bind(index=me.index, epoch=str(me.epoch))


def _close(stream: trio.abc.Stream) -> None:
    """Close without a shutdown: a worker may hold the same connection (closing a copy never ends it)."""
    sock = getattr(stream, "socket", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.close()
