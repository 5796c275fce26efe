"""What the fuzz targets share: the Violation a run raises, an error named as an outcome, and the byte mutations.

Every target's run raises Violation when the surface breaks its contract without raising, and every target's inputs
are mutated with the same byte edits (``mutate``); the helpers that cut streams into frames and pieces sit with them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence

from meshd.core.wire import MAX_FRAME_SIZE, U64_MAX


class Violation(Exception):
    """The surface broke its contract without raising: counted as a crash like any exception it may not raise."""


def error_name(exc: Exception) -> str:
    """An error as an outcome: its class and its message with the numbers taken out (one outcome per check)."""
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc))}"


# ---------------------------------------------------------------------------------------------------------------
# Byte mutations
# ---------------------------------------------------------------------------------------------------------------

# Values on the edges of the wire's big-endian integer fields, by width in bytes: zero, one, signed and unsigned
# limits, and the frame size limit for the u32 length.
EDGES = {
    1: (0, 1, 0x7F, 0x80, 0xFE, 0xFF),
    2: (0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF),
    4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1),
    8: (0, 1, 2**63 - 1, 2**63, U64_MAX),
}
# Bytes that break UTF-8: a lone lead byte, a lone continuation byte, an encoded surrogate, an overlong "/", 0xFF.
NOT_UTF8 = (b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff")
# The most edits one mutation stacks.
MAX_EDITS = 3


def mutate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """``data`` with 1..MAX_EDITS random edits: a bit flipped, a byte set, an edge value (or the bytes left) written
    over an integer field, random or non-UTF-8 bytes inserted, a range deleted or duplicated, the tail cut off or
    replaced by the tail of another input from ``pool``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, MAX_EDITS)):
        size = len(buf)
        at = rng.randrange(size + 1)
        edit = rng.randrange(9)
        if edit == 0 and size:
            buf[at % size] ^= 1 << rng.randrange(8)
        elif edit == 1 and size:
            buf[at % size] = rng.randrange(256)
        elif edit == 2:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice((*EDGES[width], size - at - width, size - at - width + 1))
            buf[at : at + width] = (value % (1 << 8 * width)).to_bytes(width, "big")
        elif edit == 3:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif edit == 4:
            buf[at:at] = rng.choice(NOT_UTF8)
        elif edit == 5:
            del buf[at : at + rng.randint(1, 8)]
        elif edit == 6:
            del buf[at:]
        elif edit == 7:
            start = rng.randrange(size + 1)
            buf[at:at] = buf[start : start + rng.randint(1, 16)]
        else:
            other = rng.choice(pool)
            buf[at:] = other[rng.randrange(len(other) + 1) :]
    return bytes(buf)


def split_frames(data: bytes) -> list[bytes]:
    """Well-formed frames (ours) one by one, each with its length prefix."""
    frames = []
    while data:
        end = 4 + int.from_bytes(data[:4], "big")
        frames.append(data[:end])
        data = data[end:]
    return frames


def reframe(body: bytes) -> bytes:
    """A type byte and payload behind the right length prefix."""
    return len(body).to_bytes(4, "big") + body


def pieces(data: bytes, chunks: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the sizes ``chunks``; whatever they leave comes as one last piece."""
    at = 0
    for size in chunks:
        if at >= len(data):
            return
        yield data[at : at + size]
        at += size
    if at < len(data) or not data:
        yield data[at:]
