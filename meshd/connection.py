"""The thin I/O shell around the sans-I/O protocol: one framed connection, and the handshake run over it.

Transport errors (OSError, trio's Broken/ClosedResourceError) and the peer's protocol errors are converted to
LinkFailure here and nowhere else, so the link code above sees one error type for "this connection is done".
"""

from __future__ import annotations

from contextlib import suppress

import trio

from meshd.core.wire import Frame, FrameDecoder, Hello, encode
from meshd.errors import Fenced, LinkFailure, MeshdError, NewerGeneration, RemoteProtocolError
from meshd.handshake import Established, Handshake, HandshakeEvent, Identity, MustAdopt, MustFence, Refused, Rejected
from meshd.net import describe_os_error

# Bytes asked of the transport per read; frames are tiny, this only bounds one read.
RECEIVE_CHUNK = 64 * 1024
# How long a parting frame (a refusal, a goodbye) may take before the connection is closed regardless.
PARTING_TIMEOUT = 0.5


def as_link_failure(exc: Exception) -> LinkFailure:
    """The LinkFailure that a transport or remote protocol error (one of LINK_ERRORS) stands for.

    This is the one place where those errors are classified; callers catch LINK_ERRORS, convert and re-raise.
    """
    match exc:
        case RemoteProtocolError():
            return LinkFailure(f"protocol error: {exc}")
        case trio.BrokenResourceError() | trio.ClosedResourceError():
            return LinkFailure(f"connection broken: {exc.__cause__ or exc}")
        case OSError():
            return LinkFailure(f"connection error: {describe_os_error(exc)}")
    return LinkFailure(f"connection error: {exc!r}")


LINK_ERRORS = (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class FramedConnection:
    """A byte stream carrying meshd frames: sends are serialised by one lock, one task reads."""

    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder | None = None) -> None:
        self.stream = stream
        self.decoder = decoder or FrameDecoder()
        self._send_lock = trio.Lock()

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
            await self.stream.send_all(data)
        except LINK_ERRORS as exc:
            raise as_link_failure(exc) from exc
        finally:
            self._send_lock.release()

    async def send(self, frame: Frame) -> None:
        await self.send_bytes(encode(frame))

    async def fill(self) -> None:
        """Read once from the transport into the decoder; end of stream is fed as such."""
        try:
            data = await self.stream.receive_some(RECEIVE_CHUNK)
        except LINK_ERRORS as exc:
            raise as_link_failure(exc) from exc
        if data:
            self.decoder.receive_data(data)
        else:
            self.decoder.receive_eof()

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
                raise LinkFailure("peer closed the connection")
            await self.fill()

    async def part(self, frame: Frame) -> None:
        """Send a last frame if the transport takes it quickly, then close. Never raises."""
        with trio.move_on_after(PARTING_TIMEOUT):
            with suppress(LinkFailure):
                await self.send(frame)
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def handshake(
    stream: trio.abc.Stream,
    me: Identity,
    expected_peer: int | None,
    timeout: float,
    holders: tuple[int, ...] | None = None,
) -> tuple[FramedConnection, Hello]:
    """Run the hello exchange; the established connection and the peer's hello (``holders``: see ``judge``).

    Raises LinkFailure (refused either way, garbage, timeout, transport error), Fenced or NewerGeneration; the
    stream is closed then.
    """
    machine = Handshake(me, expected_peer, holders)
    conn = FramedConnection(stream, machine.decoder)
    event: HandshakeEvent | None = None
    try:
        with trio.move_on_after(timeout):
            await conn.send_bytes(machine.data_to_send())
            while (event := machine.next_event()) is None:
                await conn.fill()
        if isinstance(event, Established):
            return conn, event.hello
        if isinstance(event, Refused):
            with trio.move_on_after(PARTING_TIMEOUT):
                await conn.send_bytes(machine.data_to_send())
        raise _handshake_error(event, me, timeout)
    except BaseException:
        await conn.aclose()
        raise


def _handshake_error(
    event: Refused | Rejected | MustFence | MustAdopt | None, me: Identity, timeout: float
) -> MeshdError:
    match event:
        case Refused(reason=reason, detail=detail):
            return LinkFailure(f"refused peer ({reason.name.lower()}): {detail}")
        case Rejected(reason=reason, detail=detail):
            return LinkFailure(f"peer refused us ({reason.name.lower() if reason else 'closed'}): {detail}")
        case MustFence(peer=peer, epoch=epoch):
            return Fenced(f"peer {peer}", epoch, me.epoch)
        case MustAdopt(peer=peer, epoch=epoch):
            return NewerGeneration(peer, epoch)
    return LinkFailure(f"handshake timed out after {timeout}s")
