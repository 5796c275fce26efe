"""The thin I/O shell around the sans-I/O protocol: one framed connection, and the hello exchange run over it.

Transport errors (OSError, trio's Broken/ClosedResourceError) and the peer's protocol errors are converted to
LinkFailure here and nowhere else, so the link code above sees one error type for "this connection is done".
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from typing import NoReturn, Protocol

import trio
from attrs import frozen

from meshd.core.auth import Authenticator
from meshd.core.hello import Action, Handshake, HandshakeEvent, PeerAnswer, PeerFailed, PeerHello
from meshd.core.mesh import Exchange
from meshd.core.status import EndCause, LinkEnd
from meshd.core.wire import Answer, Epoch, Frame, FrameDecoder, Hello, RefuseReason, encode
from meshd.errors import MeshdError, RemoteProtocolError
from meshd.net import describe_os_error

# Bytes asked of the transport per read; frames are tiny, this only bounds one read.
RECEIVE_CHUNK = 64 * 1024
# How long a parting frame (a refusal, a goodbye) may take before the connection is closed regardless.
PARTING_TIMEOUT = 0.5
# Whether a TCP stream's socket may be written and read directly (``os.write``/``os.read`` on its descriptor).
DIRECT_IO = os.name == "posix"


class LinkFailure(MeshdError):
    """A peer link or a connection attempt ended; ``end`` says how, typed (its detail is the text shown in status
    and logs). Raised by the I/O shell only; it disturbs nothing beyond the link that raised it."""

    def __init__(self, cause: EndCause, detail: str, refused: RefuseReason | None = None) -> None:
        super().__init__(detail)
        self.end = LinkEnd(cause, detail, refused)


def as_link_failure(exc: Exception) -> LinkFailure:
    """The LinkFailure that a transport or remote protocol error (one of LINK_ERRORS) stands for.

    This is the one place where those errors are classified; callers catch LINK_ERRORS, convert and re-raise.
    """
    match exc:
        case RemoteProtocolError():
            return LinkFailure(EndCause.PROTOCOL, f"protocol error: {exc}")
        case trio.BrokenResourceError() | trio.ClosedResourceError():
            return LinkFailure(EndCause.CLOSED, f"connection broken: {exc.__cause__ or exc}")
        case OSError():
            return LinkFailure(EndCause.CLOSED, f"connection error: {describe_os_error(exc)}")
    return LinkFailure(EndCause.CLOSED, f"connection error: {exc!r}")


LINK_ERRORS = (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class FramedConnection:
    """A byte stream carrying meshd frames: sends are serialised by one lock, one task reads."""

    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder | None = None) -> None:
        self.stream = stream
        self.decoder = decoder or FrameDecoder()
        self._send_lock = trio.Lock()
        # A TCP stream's socket, written and read directly: a frame that fits the socket buffer (every frame, nearly
        # always) goes out in one system call, without trio's send_all around it (its checks, its reschedule); a
        # read waits until the socket is readable and then reads, instead of trying first (on an idle link: a failed
        # read, an exception raised and caught, then the wait) and rescheduling after. Errors are trio's.
        self._socket = stream.socket if DIRECT_IO and isinstance(stream, trio.SocketStream) else None

    async def send_bytes(self, data: bytes) -> None:
        if not data:
            return
        # Taken without a scheduling round trip when free (nearly always: sends are a heartbeat or a VIEW now and
        # then), so that an idle link costs one wake-up per heartbeat, not two; send_all is the checkpoint.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            sent = 0
            if self._socket is not None:
                await trio.lowlevel.checkpoint_if_cancelled()  # a checkpoint only when cancelled: no reschedule
                sent = self._send_now(self._socket, data)
            if sent < len(data):  # the socket's buffer is full, or it is closed: trio waits, or raises
                await self.stream.send_all(data[sent:] if sent else data)
        except LINK_ERRORS as exc:
            raise as_link_failure(exc) from exc
        finally:
            self._send_lock.release()

    @staticmethod
    def _send_now(sock: trio.socket.SocketType, data: bytes) -> int:
        """Write what the socket takes at once; 0 when it is full or closed (then send_all waits, or raises)."""
        descriptor = sock.fileno()
        if descriptor == -1 or sock.did_shutdown_SHUT_WR:
            return 0
        try:
            return os.write(descriptor, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            _raise_stream_error(exc)

    async def send(self, frame: Frame) -> None:
        await self.send_bytes(encode(frame))

    async def fill(self) -> None:
        """Read once from the transport into the decoder; end of stream is fed as such."""
        try:
            data = await self._read() if self._socket is not None else await self.stream.receive_some(RECEIVE_CHUNK)
        except LINK_ERRORS as exc:
            raise as_link_failure(exc) from exc
        if data:
            self.decoder.receive_data(data)
        else:
            self.decoder.receive_eof()

    async def _read(self) -> bytes:
        """One read from the socket once it is readable (b"" at the end of the stream)."""
        sock = self._socket
        assert sock is not None
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("this socket was already closed")
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), RECEIVE_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                _raise_stream_error(exc)

    async def receive(self) -> Frame:
        """The next frame; LinkFailure when the peer closed, broke the connection or sent garbage."""
        while True:
            try:
                frame = self.decoder.next_frame()
            except RemoteProtocolError as exc:
                raise as_link_failure(exc) from exc
            if frame is not None:
                return frame
            if self.decoder.at_eof:
                raise LinkFailure(EndCause.CLOSED, "peer closed the connection")
            await self.fill()

    async def part(self, frame: Frame) -> None:
        """Send a last frame if the transport takes it quickly, then close. Never raises."""
        with trio.move_on_after(PARTING_TIMEOUT):
            with suppress(LinkFailure):
                await self.send(frame)
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _raise_stream_error(exc: OSError) -> NoReturn:
    """Raise what trio's SocketStream raises for a socket's OSError (so that a direct read or write fails alike)."""
    if exc.errno == errno.EBADF:
        raise trio.ClosedResourceError("this socket was already closed") from None
    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class Judge(Protocol):
    """What an exchange needs from the mesh: our hello, and our verdict on the peer's (``MeshModel`` has both)."""

    def hello(self, target: int | None) -> Hello: ...

    def judge(self, hello: Hello, expected_peer: int | None, sent: Epoch) -> Exchange: ...


@frozen
class ExchangeResult:
    """A finished hello exchange: the connection, our judged exchange, and the peer's answer (None: none came)."""

    conn: FramedConnection
    exchange: Exchange
    answer: Answer | None


async def exchange_hellos(
    stream: trio.abc.Stream,
    mesh: Judge,
    expected_peer: int | None,
    timeout: float,
    read: bytes = b"",
    auth: Authenticator | None = None,
) -> ExchangeResult:
    """Run both rounds of the hello exchange on ``stream`` within ``timeout`` (with ``auth``: the authenticated
    handshake, its challenges and proofs first).

    Raises LinkFailure (and closes the stream) when no hello was judged: a timeout, garbage, a transport error, or
    a peer that closed or refused us before its hello. Once we have judged the peer's hello the result is returned
    even if its answer never comes (``answer`` None), because our verdict may have recorded it as a member.
    """
    ours = mesh.hello(expected_peer)
    machine = Handshake(ours, auth)
    machine.decoder.receive_data(read)  # what the caller already read to tell a data connection from a link
    conn = FramedConnection(stream, machine.decoder)
    exchange: Exchange | None = None
    answer: PeerAnswer | None = None
    try:
        with trio.move_on_after(timeout):
            await conn.send_bytes(machine.data_to_send())
            event = await _next_event(machine, conn)
            if isinstance(event, PeerFailed):
                with trio.move_on_after(PARTING_TIMEOUT):
                    await conn.send_bytes(machine.data_to_send())  # our refusal of the garbage, if any
                if event.reason is None:
                    raise LinkFailure(EndCause.CLOSED, f"no hello from the peer (closed): {event.detail}")
                if event.ours and event.reason is RefuseReason.AUTH_FAILED:
                    raise LinkFailure(EndCause.UNAUTHENTICATED, f"peer not authenticated: {event.detail}", event.reason)
                reason = event.reason.name.lower()
                raise LinkFailure(EndCause.REFUSED, f"no hello from the peer ({reason}): {event.detail}", event.reason)
            assert isinstance(event, PeerHello)
            exchange = mesh.judge(event.hello, expected_peer, ours.epoch)
            machine.answer(exchange.answer)
            with suppress(LinkFailure):  # once judged, a broken connection just means no answer
                await conn.send_bytes(machine.data_to_send())
                if exchange.judgement.action is not Action.NONE:  # else no answer can change anything
                    answer = await _next_event(machine, conn)  # type: ignore[assignment]
    except BaseException:
        await conn.aclose()
        raise
    if exchange is None:
        await conn.aclose()
        raise LinkFailure(EndCause.PROTOCOL, f"no hello from the peer within {timeout}s")
    return ExchangeResult(conn, exchange, answer.answer if isinstance(answer, PeerAnswer) else None)


async def _next_event(machine: Handshake, conn: FramedConnection) -> HandshakeEvent:
    """The machine's next event; what it queued meanwhile (a proof, our hello) goes out before each read."""
    while (event := machine.next_event()) is None:
        await conn.send_bytes(machine.data_to_send())
        await conn.fill()
    return event
