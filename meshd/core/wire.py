"""The meshd wire format: length-prefixed binary frames. Pure functions and data, no I/O.

Frame layout, all integers big-endian::

    u32 length   (of the type byte plus the payload; at most MAX_FRAME_SIZE)
    u8  type     (FrameType)
    ... payload

Payloads:

    HELLO      magic "MSHD", u16 version, u16 sender, u16 target (NO_TARGET from a listener),
               u64 epoch.major, u64 epoch.minor, u64 incarnation, u8 flags (bit 0: self-minted generations),
               u8 name length, cluster name (UTF-8)
    ACCEPT     empty: the sender's answer to the peer's hello is "link"
    REFUSE     u8 RefuseReason, u64 epoch.major, u64 epoch.minor (the refuser's), u16 length, detail (UTF-8): the
               sender's answer to the peer's hello is "no link", and why
    HEARTBEAT  empty
    GOODBYE    u16 length, reason (UTF-8)
    VIEW       u64 epoch.major, u64 epoch.minor, u8 flags (bit 0: the sender is ready with this view), u16 count,
               count x u64: the incarnation the sender links to in every slot, its own included, 0 while down
    DATA       magic, u16 version, u16 sender, u16 target, u64 epoch.major, u64 epoch.minor, u64 incarnation,
               u64 target incarnation (fixed size)
    CHALLENGE  magic, u16 version, u8 flags (bit 0: the sender dialed; bit 1: a data connection), 32-byte nonce
    PROOF      32-byte HMAC-SHA256 tag: the sender knows a key of the cluster's secret (``meshd.core.auth``)
    SEAL       32-byte HMAC-SHA256 tag over the handshake so far and the frame right before it

Every connection starts with two rounds: both ends send a HELLO at once, then each answers the other's with ACCEPT
or REFUSE (or GOODBYE when it is stopping). With a cluster secret, two rounds come first (CHALLENGE, PROOF) and a
SEAL follows every hello and answer (docs/protocol.md). Magic and version lead the hello (and the challenge) so that
a peer speaking another version is recognised before the rest is parsed.
"""

from __future__ import annotations

import enum
import struct
from functools import total_ordering

from attrs import frozen

from meshd.core.names import U64_MAX
from meshd.errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"MSHD"
# Version 2: the answer round (ACCEPT/REFUSE after both hellos), the BEHIND and BAD_EPOCH reasons, the VIEW flags.
# Version 3: the authenticated handshake (CHALLENGE, PROOF, SEAL) and the AUTH_FAILED reason.
PROTOCOL_VERSION = 3
# A hello is under 300 bytes; anything near this limit is garbage or an attack, never a meshd peer.
MAX_FRAME_SIZE = 64 * 1024
# The target index a listener puts in its hello: it learns who dialed only from the dialer's hello.
NO_TARGET = 0xFFFF
# Indices travel as u16 and NO_TARGET is reserved.
MAX_CLUSTER_SIZE = NO_TARGET
# The cluster name travels with a u8 length.
MAX_NAME_BYTES = 255

_LENGTH = struct.Struct(">I")
_HELLO_HEAD = struct.Struct(">4sH")
_HELLO_BODY = struct.Struct(">HHQQQBB")
_VIEW_HEAD = struct.Struct(">QQBH")
# View flag: the sender is ready with this view.
VIEW_READY = 0x01
_INCARNATION = struct.Struct(">Q")
# Hello flag: the sender mints and adopts its own generations (``--epoch auto``) instead of taking a fixed epoch.
FLAG_AUTO = 0x01
_REFUSE_HEAD = struct.Struct(">BQQH")
_DATA_BODY = struct.Struct(">HHQQQQ")
_TEXT_HEAD = struct.Struct(">H")
_CHALLENGE_BODY = struct.Struct(">B")
# A handshake nonce: fresh random bytes from each end of every authenticated connection.
NONCE_SIZE = 32
# An HMAC-SHA256 tag (PROOF, SEAL).
TAG_SIZE = 32
# Challenge flags: the sender dialed (else it accepted); the connection is a data connection (else a control link).
CHALLENGE_DIALER = 0x01
CHALLENGE_DATA = 0x02


class FrameType(enum.IntEnum):
    HELLO = 1  # first frame on every connection, from both ends
    REFUSE = 2  # the sender's answer to the peer's hello: no link, and why
    HEARTBEAT = 3  # liveness on an up link
    GOODBYE = 4  # the sender is shutting down on purpose; the link ends without an error
    VIEW = 5  # which incarnation of every slot the sender is linked to: the mesh is ready when all views agree
    ACCEPT = 6  # the sender's answer to the peer's hello: link (the link is up once both ends accepted)
    DATA = 7  # the first frame of a data connection (for the worker), from the dialer only
    CHALLENGE = 8  # with a secret, the first frame from both ends: a fresh nonce (discloses nothing else)
    PROOF = 9  # with a secret, the second: proof that the sender knows a key, bound to both nonces and roles
    SEAL = 10  # with a secret, after every hello and answer: the sender's tag over the handshake so far


class RefuseReason(enum.IntEnum):
    """Why the sender answers the receiver's hello with "no link". Code 6 (DUPLICATE, never sent) is retired."""

    STALE_EPOCH = 1  # the receiver's epoch is older than the sender's; (auto) it may join the sender's generation
    WRONG_CLUSTER = 2  # the hello names another cluster
    WRONG_INDEX = 3  # the sender or target index does not fit the receiver's view of the cluster
    BAD_VERSION = 4  # the peer speaks a protocol version we do not
    PROTOCOL_ERROR = 5  # the peer sent bytes that are not valid meshd frames
    RETIRED = 7  # the sender's ready mesh holds the receiver's slot with another incarnation (or, fixed epochs, a
    #              newer incarnation of that slot holds the link): the receiver is a duplicate; nothing changes
    SEALED = 8  # (auto) the sender's generation has another incarnation in the receiver's slot: the receiver may not
    #             join it and must leave it (mint a newer generation) or, once sealed, exit
    WRONG_MODE = 9  # one end takes fixed epochs, the other mints its own generations
    BEHIND = 10  # the sender's epoch is older than the receiver's: the sender follows (adopts, mints above, or exits)
    BAD_EPOCH = 11  # (auto) the receiver's generation lies beyond the range generations may take
    AUTH_FAILED = 12  # the receiver did not prove a key of the cluster's secret (or sent no proof at all)


@total_ordering
@frozen
class Epoch:
    """A totally ordered generation number: (major, minor), compared lexicographically.

    A controller's integer epoch E is ``Epoch(E, 0)``; a self-minted generation can be ``(milliseconds, nonce)``.
    """

    major: int
    minor: int = 0

    def __attrs_post_init__(self) -> None:
        for part in (self.major, self.minor):
            if not 0 <= part <= U64_MAX:
                raise LocalProtocolError(f"epoch parts must fit in 64 bits, got {self.major}.{self.minor}")

    def __lt__(self, other: Epoch) -> bool:
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return str(self.major) if self.minor == 0 else f"{self.major}.{self.minor:016x}"

    def to_json(self) -> int | str:
        """An integer for a controller epoch (what the user typed), a string for a two-part generation."""
        return self.major if self.minor == 0 else str(self)


@frozen
class Hello:
    """Who the sender is and what it believes: sent first by both ends of every connection."""

    cluster: str
    sender: int
    target: int
    epoch: Epoch
    incarnation: int
    auto: bool = False
    version: int = PROTOCOL_VERSION


@frozen
class DataHello:
    """The dialer's first and only frame on a data connection: which generation and which two incarnations it joins.

    Fixed size (DATA_HELLO_SIZE bytes with its header), so that the acceptor reads it exactly and not a byte of the
    worker traffic behind it.
    """

    sender: int
    target: int
    epoch: Epoch
    incarnation: int  # the sender's
    target_incarnation: int
    version: int = PROTOCOL_VERSION


@frozen
class Challenge:
    """With a cluster secret, the first frame from both ends: which end sent it, and its fresh nonce."""

    nonce: bytes
    dialer: bool  # the sender dialed the connection
    data: bool = False  # a data connection (else a control link)
    version: int = PROTOCOL_VERSION


@frozen
class Proof:
    """The sender knows a key of the cluster's secret: a tag over both challenges (``meshd.core.auth``)."""

    tag: bytes


@frozen
class Seal:
    """The sender's tag over the handshake so far and the frame it follows (a hello or an answer)."""

    tag: bytes


@frozen
class Accept:
    """The answer "link" to the peer's hello."""


@frozen
class Refuse:
    reason: RefuseReason
    epoch: Epoch
    detail: str


@frozen
class Heartbeat:
    pass


@frozen
class Goodbye:
    reason: str


@frozen
class View:
    """The sender's view of generation ``epoch``: ``incarnations[k]`` is the process it links to in slot k; ``ready``
    says that the sender is ready with exactly this view."""

    epoch: Epoch
    incarnations: tuple[int, ...]
    ready: bool = False

    def same_mesh(self, other: View | None) -> bool:
        """Whether ``other`` names the same processes in the same generation (readiness aside)."""
        return other is not None and self.epoch == other.epoch and self.incarnations == other.incarnations


Frame = Hello | Accept | Refuse | Heartbeat | Goodbye | View | DataHello | Challenge | Proof | Seal
# What one end says after reading the other's hello.
Answer = Accept | Refuse | Goodbye

# The bytes before a frame's payload: its length and its type (what an acceptor reads first to tell the kinds apart).
FRAME_HEAD_SIZE = _LENGTH.size + 1
# A data hello's whole size, header included: fixed.
DATA_HELLO_SIZE = FRAME_HEAD_SIZE + _HELLO_HEAD.size + _DATA_BODY.size
# An ACCEPT's whole size: the acceptor's answer on a data connection, the last byte meshd writes on it.
ACCEPT_SIZE = FRAME_HEAD_SIZE
# The whole sizes of the authentication frames: all fixed.
CHALLENGE_SIZE = FRAME_HEAD_SIZE + _HELLO_HEAD.size + _CHALLENGE_BODY.size + NONCE_SIZE
PROOF_SIZE = SEAL_SIZE = FRAME_HEAD_SIZE + TAG_SIZE


def _text(data: str, limit: int) -> bytes:
    """UTF-8 of ``data`` cut to at most ``limit`` bytes without splitting a character."""
    return data.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode(frame: Frame) -> bytes:
    """The bytes of one frame, length prefix included; LocalProtocolError for a field that does not fit."""
    try:
        return _encode(frame)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode {frame!r}: {exc}") from exc


def _encode(frame: Frame) -> bytes:
    match frame:
        case Hello():
            name = frame.cluster.encode("utf-8")
            if len(name) > MAX_NAME_BYTES:
                raise LocalProtocolError(f"cluster name longer than {MAX_NAME_BYTES} bytes")
            body = (
                _HELLO_HEAD.pack(MAGIC, frame.version)
                + _HELLO_BODY.pack(
                    frame.sender,
                    frame.target,
                    frame.epoch.major,
                    frame.epoch.minor,
                    frame.incarnation,
                    FLAG_AUTO if frame.auto else 0,
                    len(name),
                )
                + name
            )
            kind = FrameType.HELLO
        case Refuse():
            detail = _text(frame.detail, 1024)
            body = _REFUSE_HEAD.pack(frame.reason, frame.epoch.major, frame.epoch.minor, len(detail)) + detail
            kind = FrameType.REFUSE
        case Heartbeat():
            body = b""
            kind = FrameType.HEARTBEAT
        case Accept():
            body = b""
            kind = FrameType.ACCEPT
        case Goodbye():
            reason = _text(frame.reason, 1024)
            body = _TEXT_HEAD.pack(len(reason)) + reason
            kind = FrameType.GOODBYE
        case DataHello():
            body = _HELLO_HEAD.pack(MAGIC, frame.version) + _DATA_BODY.pack(
                frame.sender,
                frame.target,
                frame.epoch.major,
                frame.epoch.minor,
                frame.incarnation,
                frame.target_incarnation,
            )
            kind = FrameType.DATA
        case Challenge():
            if len(frame.nonce) != NONCE_SIZE:
                raise LocalProtocolError(f"a nonce has {NONCE_SIZE} bytes, not {len(frame.nonce)}")
            flags = (CHALLENGE_DIALER if frame.dialer else 0) | (CHALLENGE_DATA if frame.data else 0)
            body = _HELLO_HEAD.pack(MAGIC, frame.version) + _CHALLENGE_BODY.pack(flags) + frame.nonce
            kind = FrameType.CHALLENGE
        case Proof() | Seal():
            if len(frame.tag) != TAG_SIZE:
                raise LocalProtocolError(f"a tag has {TAG_SIZE} bytes, not {len(frame.tag)}")
            body = frame.tag
            kind = FrameType.PROOF if isinstance(frame, Proof) else FrameType.SEAL
        case View():
            count = len(frame.incarnations)
            flags = VIEW_READY if frame.ready else 0
            body = _VIEW_HEAD.pack(frame.epoch.major, frame.epoch.minor, flags, count) + struct.pack(
                f">{count}Q", *frame.incarnations
            )
            kind = FrameType.VIEW
        case _:
            raise LocalProtocolError(f"not a frame: {frame!r}")
    return _LENGTH.pack(len(body) + 1) + bytes([kind]) + body


class UnsupportedVersion(RemoteProtocolError):
    """The peer's hello carries our magic but another protocol version."""

    def __init__(self, version: int) -> None:
        super().__init__(f"peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}")
        self.version = version


def _decode_text(payload: bytes, offset: int, what: str) -> str:
    """The length-prefixed UTF-8 text that ends the payload at ``offset``."""
    start = offset + _TEXT_HEAD.size
    if len(payload) < start:
        raise RemoteProtocolError(f"truncated {what} frame")
    (length,) = _TEXT_HEAD.unpack_from(payload, offset)
    if len(payload) != start + length:
        raise RemoteProtocolError(f"{what} text length does not match the frame")
    try:
        return payload[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{what} text is not UTF-8") from exc


def _decode_hello(payload: bytes) -> Hello:
    if len(payload) < _HELLO_HEAD.size or payload[:4] != MAGIC:
        raise RemoteProtocolError("hello without the meshd magic")
    _, version = _HELLO_HEAD.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version)
    if len(payload) < _HELLO_HEAD.size + _HELLO_BODY.size:
        raise RemoteProtocolError("truncated hello")
    sender, target, major, minor, incarnation, flags, name_length = _HELLO_BODY.unpack_from(payload, _HELLO_HEAD.size)
    name = payload[_HELLO_HEAD.size + _HELLO_BODY.size :]
    if len(name) != name_length:
        raise RemoteProtocolError("hello cluster name length does not match the frame")
    try:
        cluster = name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("hello cluster name is not UTF-8") from exc
    return Hello(cluster, sender, target, Epoch(major, minor), incarnation, bool(flags & FLAG_AUTO), version)


def _decode_refuse(payload: bytes) -> Refuse:
    if len(payload) < _REFUSE_HEAD.size:
        raise RemoteProtocolError("truncated refuse frame")
    code, major, minor, _ = _REFUSE_HEAD.unpack_from(payload)
    try:
        reason = RefuseReason(code)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown refuse reason {code}") from exc
    detail = _decode_text(payload, _REFUSE_HEAD.size - _TEXT_HEAD.size, "refuse")
    return Refuse(reason, Epoch(major, minor), detail)


def _decode_view(payload: bytes) -> View:
    if len(payload) < _VIEW_HEAD.size:
        raise RemoteProtocolError("truncated view frame")
    major, minor, flags, count = _VIEW_HEAD.unpack_from(payload)
    if len(payload) != _VIEW_HEAD.size + count * _INCARNATION.size:
        raise RemoteProtocolError("view frame length does not match its count")
    incarnations = struct.unpack_from(f">{count}Q", payload, _VIEW_HEAD.size)
    return View(Epoch(major, minor), incarnations, bool(flags & VIEW_READY))


def decode_frame(kind: int, payload: bytes) -> Frame:
    """One frame from its type byte and payload; raises RemoteProtocolError on anything malformed."""
    match kind:
        case FrameType.HELLO:
            return _decode_hello(payload)
        case FrameType.REFUSE:
            return _decode_refuse(payload)
        case FrameType.HEARTBEAT:
            if payload:
                raise RemoteProtocolError("heartbeat with a payload")
            return Heartbeat()
        case FrameType.GOODBYE:
            return Goodbye(_decode_text(payload, 0, "goodbye"))
        case FrameType.ACCEPT:
            if payload:
                raise RemoteProtocolError("accept with a payload")
            return Accept()
        case FrameType.VIEW:
            return _decode_view(payload)
        case FrameType.DATA:
            return _decode_data_hello(payload)
        case FrameType.CHALLENGE:
            return _decode_challenge(payload)
        case FrameType.PROOF | FrameType.SEAL:
            if len(payload) != TAG_SIZE:
                raise RemoteProtocolError(f"a tag of {len(payload)} bytes, not {TAG_SIZE}")
            return Proof(payload) if kind == FrameType.PROOF else Seal(payload)
    raise RemoteProtocolError(f"unknown frame type {kind}")


def _decode_data_hello(payload: bytes) -> DataHello:
    if len(payload) < _HELLO_HEAD.size or payload[:4] != MAGIC:
        raise RemoteProtocolError("data hello without the meshd magic")
    _, version = _HELLO_HEAD.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version)
    if len(payload) != _HELLO_HEAD.size + _DATA_BODY.size:
        raise RemoteProtocolError("data hello of the wrong size")
    sender, target, major, minor, incarnation, target_incarnation = _DATA_BODY.unpack_from(payload, _HELLO_HEAD.size)
    return DataHello(sender, target, Epoch(major, minor), incarnation, target_incarnation)


def _decode_challenge(payload: bytes) -> Challenge:
    if len(payload) < _HELLO_HEAD.size or payload[:4] != MAGIC:
        raise RemoteProtocolError("challenge without the meshd magic")
    _, version = _HELLO_HEAD.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version)
    if len(payload) != _HELLO_HEAD.size + _CHALLENGE_BODY.size + NONCE_SIZE:
        raise RemoteProtocolError("challenge of the wrong size")
    (flags,) = _CHALLENGE_BODY.unpack_from(payload, _HELLO_HEAD.size)
    nonce = payload[_HELLO_HEAD.size + _CHALLENGE_BODY.size :]
    return Challenge(nonce, bool(flags & CHALLENGE_DIALER), bool(flags & CHALLENGE_DATA))


class FrameDecoder:
    """Turns a byte stream into frames: feed bytes with ``receive_data``, take frames with ``next_frame``.

    End of stream is an explicit input; after it, a partial frame left in the buffer is a protocol error.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max = max_frame_size
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise LocalProtocolError("data fed after end of stream")
        self._buffer += data

    def receive_eof(self) -> None:
        self._eof = True

    @property
    def at_eof(self) -> bool:
        """True once the stream ended and every whole frame was taken."""
        return self._eof and not self._buffer

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None when more bytes are needed (or the stream ended cleanly)."""
        if len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length == 0 or length > self._max:
                raise RemoteProtocolError(f"frame length {length} outside 1..{self._max}")
            end = _LENGTH.size + length
            if len(self._buffer) >= end:
                kind = self._buffer[_LENGTH.size]
                payload = bytes(self._buffer[_LENGTH.size + 1 : end])
                del self._buffer[:end]
                return decode_frame(kind, payload)
        if self._eof and self._buffer:
            raise RemoteProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes left)")
        return None


def decode_all(data: bytes) -> list[Frame]:
    """Every frame of ``data``, a whole stream (RemoteProtocolError when it ends inside one, or holds garbage)."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    decoder.receive_eof()
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames
