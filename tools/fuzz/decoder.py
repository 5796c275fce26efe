"""The frame decoder's fuzz target: any byte stream decodes to frames or a RemoteProtocolError, nothing else.

The decoder is the first thing anyone who reaches the mesh port feeds; its sample frames (``frame_pool``) are also
what the handshake target's inputs are mutated with.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import cache

from meshd.core.wire import (
    NO_TARGET,
    NONCE_SIZE,
    TAG_SIZE,
    U64_MAX,
    Accept,
    Challenge,
    DataHello,
    Epoch,
    Frame,
    FrameDecoder,
    Goodbye,
    Heartbeat,
    Hello,
    Proof,
    Refuse,
    RefuseReason,
    Seal,
    View,
    encode,
)
from meshd.errors import RemoteProtocolError
from tools.fuzz.common import Violation, error_name, mutate, reframe


def sample_frames() -> list[Frame]:
    """Valid frames of every type, with edge values: what decoder inputs are mutated from."""
    epoch = Epoch(7, 0xABCDEF)
    return [
        Hello("demo", 1, 0, Epoch(3), 42),
        Hello("", 0, NO_TARGET, epoch, U64_MAX, auto=True),
        Hello("é" * 127, NO_TARGET - 1, 2, Epoch(U64_MAX, U64_MAX), 0),
        Accept(),
        Heartbeat(),
        Goodbye(""),
        Goodbye("stopping: SIGTERM ✓"),
        *(Refuse(reason, epoch, f"because {reason.name}") for reason in RefuseReason),
        View(Epoch(0), ()),
        View(epoch, (1, 0, U64_MAX), ready=True),
        DataHello(1, 2, epoch, 5, 6),
        Challenge(bytes(NONCE_SIZE), dialer=True),
        Challenge(bytes(range(NONCE_SIZE)), dialer=False, data=True),
        Proof(bytes(TAG_SIZE)),
        Seal(b"\xff" * TAG_SIZE),
    ]


@cache
def frame_pool() -> tuple[bytes, ...]:
    return tuple(encode(frame) for frame in sample_frames())


@cache
def frames_by_type() -> tuple[tuple[bytes, ...], ...]:
    """The samples grouped by frame type: inputs draw a type first, so that each is mutated as often."""
    groups: dict[type, list[bytes]] = {}
    for frame in sample_frames():
        groups.setdefault(type(frame), []).append(encode(frame))
    return tuple(map(tuple, groups.values()))


def decode_pieces(stream: Iterable[bytes], *, eof: bool = True) -> list[str]:
    """Feed the pieces of ``stream`` to a FrameDecoder, taking every whole frame after each, then (``eof``) the end
    of the stream: the names of the frames, then how the stream ended.

    The contract: frames, or RemoteProtocolError (UnsupportedVersion included), and every frame decoded re-encodes
    (the handshake re-encodes the peer's hello and answer to check their seals).
    """
    decoder = FrameDecoder()
    outcomes: list[str] = []
    try:
        for piece in stream:
            decoder.receive_data(piece)
            _take_frames(decoder, outcomes)
        if eof:
            decoder.receive_eof()
            _take_frames(decoder, outcomes)
    except RemoteProtocolError as exc:
        outcomes.append(error_name(exc))
    else:
        outcomes.append("end of stream" if eof else "awaiting more")
    return outcomes


def _take_frames(decoder: FrameDecoder, outcomes: list[str]) -> None:
    while (frame := decoder.next_frame()) is not None:
        if not isinstance(frame, Frame):
            raise Violation(f"the decoder returned {frame!r}, not a frame")
        encode(frame)
        outcomes.append(type(frame).__name__)


def decoder_input(rng: random.Random) -> bytes:
    """A stream: random bytes (1 in 10), or one to three frames (of a type drawn first), each usually mutated behind
    a right length prefix, the whole stream sometimes mutated again (length prefixes included)."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(64))
    pool = frame_pool()
    frames = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        frame = rng.choice(rng.choice(frames_by_type()))
        if rng.random() < 0.85:
            frame = reframe(mutate(rng, frame[4:], pool))
        frames.append(frame)
    stream = b"".join(frames)
    return mutate(rng, stream, pool) if rng.random() < 0.3 else stream


def run_decoder(data: bytes) -> list[str]:
    """The stream in two pieces (cut in the middle: a frame across two reads), then its end."""
    return decode_pieces((data[: len(data) // 2], data[len(data) // 2 :]))
