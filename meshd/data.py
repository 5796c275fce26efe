"""The worker's data connections (the trio shell around ``meshd.core.data``): dial, accept, verify, hand over.

One connection per pair of processes and generation, kept from the moment both incarnations verified it until the
worker takes it (``hand_over``); meshd reads and writes only the DATA hello and its one-frame answer (with a secret:
the challenges and proofs before them, a seal after each), every frame read exactly, and closes its copies once the
worker holds them. A generation change drops every connection of the old one.

With a cluster secret a data connection authenticates like a control link (``meshd.core.auth``), in this order, so
that neither end discloses its generation before the other proved a key::

    dialer: CHALLENGE  ->  acceptor: CHALLENGE PROOF  ->  dialer: PROOF DATA SEAL  ->  acceptor: answer SEAL
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from attrs import frozen
from loguru import logger

from meshd.config import Timeouts
from meshd.connection import LinkFailure
from meshd.core.address import Address
from meshd.core.auth import Authenticator
from meshd.core.backoff import Backoff
from meshd.core.data import data_hello, dials_data, judge_data
from meshd.core.hello import UNDISCLOSED, Identity
from meshd.core.status import EndCause
from meshd.core.wire import (
    CHALLENGE_SIZE,
    DATA_HELLO_SIZE,
    FRAME_HEAD_SIZE,
    Accept,
    Challenge,
    DataHello,
    Frame,
    FrameDecoder,
    FrameType,
    Proof,
    Refuse,
    RefuseReason,
    Seal,
    encode,
)
from meshd.errors import RemoteProtocolError
from meshd.gate import Gate
from meshd.net import Network

# The largest frame a data connection's handshake carries (a refusal with its longest detail is about 1 KiB).
MAX_DATA_FRAME = 2048
# The whole size of the first frames that make a connection a data connection, by frame type.
FIRST_FRAME_SIZES = {FrameType.DATA: DATA_HELLO_SIZE, FrameType.CHALLENGE: CHALLENGE_SIZE}
TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

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


def _frame(data: bytes) -> Frame | None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return decoder.next_frame()


async def receive_frame(stream: trio.abc.Stream) -> Frame:
    """Exactly one whole frame (at most MAX_DATA_FRAME bytes), never a byte of what follows it; RemoteProtocolError
    for garbage, LinkFailure at end of stream."""
    head = await receive_exactly(stream, 4)
    length = int.from_bytes(head, "big")
    if not 1 <= length <= MAX_DATA_FRAME:
        raise RemoteProtocolError(f"frame length {length} outside 1..{MAX_DATA_FRAME} on a data connection")
    frame = _frame(head + await receive_exactly(stream, length))
    assert frame is not None  # the bytes are one whole frame
    return frame


@frozen
class FirstFrame:
    """The first frame of an inbound connection: ``read`` are its bytes; ``frame`` is it, decoded, when it is one
    that may open a data connection (a DATA hello, a CHALLENGE)."""

    read: bytes
    frame: Frame | None

    @property
    def data(self) -> bool:
        """Whether the connection is a data connection (else a control link)."""
        return isinstance(self.frame, DataHello) or (isinstance(self.frame, Challenge) and self.frame.data)


async def receive_first_frame(stream: trio.abc.Stream) -> FirstFrame:
    """The first frame's header, and the rest when it is a DATA hello or a CHALLENGE (both of a fixed size);
    anything else is left to the control link's handshake to read and judge."""
    head = await receive_exactly(stream, FRAME_HEAD_SIZE)
    size = FIRST_FRAME_SIZES.get(head[-1])  # type: ignore[call-overload]
    if size is None or int.from_bytes(head[:4], "big") != size - 4:
        return FirstFrame(head, None)
    read = head + await receive_exactly(stream, size - FRAME_HEAD_SIZE)
    try:
        return FirstFrame(read, _frame(read))
    except RemoteProtocolError:
        return FirstFrame(read, None)


async def _refuse_unauthenticated(stream: trio.abc.Stream, detail: str) -> LinkFailure:
    """Tell the peer AUTH_FAILED (disclosing nothing) and return the failure to raise."""
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await stream.send_all(encode(Refuse(RefuseReason.AUTH_FAILED, UNDISCLOSED, detail)))
    return LinkFailure(EndCause.UNAUTHENTICATED, detail, RefuseReason.AUTH_FAILED)


async def dial_data(stream: trio.abc.Stream, hello: DataHello, auth: Authenticator | None) -> Frame:
    """The dialer's side of a data connection: authenticate (with ``auth``), send ``hello``, return the acceptor's
    answer, every frame read exactly. LinkFailure(UNAUTHENTICATED) when the acceptor proves no key of ours."""
    data = encode(hello)
    if auth is None:
        await stream.send_all(data)
        return await receive_frame(stream)
    await stream.send_all(encode(auth.challenge))
    challenge = await receive_frame(stream)
    proof = auth.take_challenge(challenge) if isinstance(challenge, Challenge) else None
    peer_proof = await receive_frame(stream) if proof is not None else None
    refusal = next((frame for frame in (challenge, peer_proof) if isinstance(frame, Refuse)), None)
    if refusal is not None:
        detail = f"data connection refused ({refusal.reason.name.lower()}): {refusal.detail}"
        raise LinkFailure(EndCause.REFUSED, detail, refusal.reason)
    if proof is None or not isinstance(peer_proof, Proof) or not auth.check_proof(peer_proof):
        detail = f"the acceptor did not prove a key of ours ({type(peer_proof or challenge).__name__})"
        raise LinkFailure(EndCause.UNAUTHENTICATED, detail, RefuseReason.AUTH_FAILED)
    await stream.send_all(encode(proof) + data + encode(auth.seal_hello(data)))
    answer = await receive_frame(stream)
    seal = await receive_frame(stream)
    if not isinstance(seal, Seal) or not auth.check_answer(encode(answer), seal):
        raise LinkFailure(EndCause.UNAUTHENTICATED, "the acceptor's answer is not sealed", RefuseReason.AUTH_FAILED)
    return answer


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
        gate: Gate,
    ) -> None:
        self._me = me
        self._gate = gate
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

    async def accept(self, stream: trio.abc.Stream, first: Frame | None, remote: str) -> None:
        """An inbound data connection (its first frame read): authenticate, read the hello, judge, answer."""
        auth = self._gate.authenticator(dialer=False, data=True)
        try:
            hello = await self._accepted_hello(stream, first, auth)
        except (RemoteProtocolError, LinkFailure, *TRANSPORT_ERRORS) as exc:
            if isinstance(exc, LinkFailure) and exc.end.cause is EndCause.UNAUTHENTICATED:
                self._gate.auth_failed(remote, str(exc))
            else:
                self._log().warning("data connection from {} closed: {}", remote, exc)
            await stream.aclose()
            return
        answer = judge_data(hello, self._me(), self._holder(hello.sender))
        if self._handed and isinstance(answer, Accept):  # the worker holds this generation's connections
            answer = Refuse(RefuseReason.RETIRED, self._me().epoch, "the data connections are handed over")
        data = encode(answer)
        try:
            await stream.send_all(data if auth is None else data + encode(auth.seal_answer(data)))
        except TRANSPORT_ERRORS:
            await stream.aclose()
            return
        if isinstance(answer, Refuse):
            await stream.aclose()
            return
        self._keep(hello.sender, hello.incarnation, stream)

    async def _accepted_hello(
        self, stream: trio.abc.Stream, first: Frame | None, auth: Authenticator | None
    ) -> DataHello:
        """The dialer's data hello, once it proved a key (with a secret); LinkFailure when it did not."""
        if auth is None:
            if isinstance(first, Challenge):
                raise await _refuse_unauthenticated(stream, "peer authenticates with a cluster secret; we have none")
            assert isinstance(first, DataHello)
            return first
        proof = auth.take_challenge(first) if isinstance(first, Challenge) else None
        if proof is None:
            raise await _refuse_unauthenticated(stream, "data connection without a fitting challenge")
        await stream.send_all(encode(auth.challenge) + encode(proof))
        peer_proof = await receive_frame(stream)
        if not isinstance(peer_proof, Proof) or not auth.check_proof(peer_proof):
            raise await _refuse_unauthenticated(stream, "peer's proof verifies under none of our keys")
        hello, seal = await receive_frame(stream), await receive_frame(stream)
        if not isinstance(hello, DataHello) or not isinstance(seal, Seal) or not auth.check_hello(encode(hello), seal):
            raise await _refuse_unauthenticated(stream, "peer's data hello is not sealed by its key")
        return hello

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
                auth = self._gate.authenticator(dialer=True, data=True)
                answer = await dial_data(stream, data_hello(self._me(), peer, incarnation), auth)
            except LinkFailure as exc:
                await stream.aclose()
                if exc.end.cause is EndCause.UNAUTHENTICATED:
                    self._gate.auth_failed(str(self._addresses[peer]), str(exc))
                raise
            except (*TRANSPORT_ERRORS, RemoteProtocolError) as exc:
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
