"""The fuzz targets: for each untrusted-input surface, how to draw inputs and the contract one input is run against.

A target's ``run`` names the outcomes of one input (frame types, error classes, handshake events, parsed types) and
raises only when the surface broke its contract: any exception the contract does not allow, or a Violation that the
run itself detected (an event out of order, our state sent to a stranger). Inputs mix random bytes with mutations of
valid messages (every frame type, honest handshake transcripts, every admin message), which get past the first
length or magic check far more often than random bytes do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from typing import Any, ClassVar

from attrs import frozen

from meshd.admin.messages import (
    ErrorAnswer,
    MalformedMessage,
    Snapshot,
    StartRequest,
    StatusRequest,
    WatchRequest,
    parse_object,
    parse_request,
    start_answer_from_json,
    status_from_json,
    watch_message_from_json,
)
from meshd.core.address import Address
from meshd.core.auth import Authenticator, Keyring
from meshd.core.hello import UNDISCLOSED, Handshake, HandshakeEvent, PeerAnswer, PeerFailed, PeerHello, answer_name
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerRestarted,
    PeerRow,
    PeerState,
    StartAnswer,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
    WorkerStatus,
)
from meshd.core.wire import (
    MAX_FRAME_SIZE,
    NO_TARGET,
    NONCE_SIZE,
    TAG_SIZE,
    U64_MAX,
    Accept,
    Answer,
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


class Violation(Exception):
    """The surface broke its contract without raising: counted as a crash like any exception it may not raise."""


@frozen
class Target:
    """One surface: ``generate`` draws an input from a seeded generator; ``run`` runs it and names its outcomes."""

    name: str
    generate: Callable[[random.Random], bytes]
    run: Callable[[bytes], list[str]]


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


# ---------------------------------------------------------------------------------------------------------------
# The frame decoder: frames or RemoteProtocolError
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# The handshake machine: events in order, never an exception, nothing disclosed to a stranger
# ---------------------------------------------------------------------------------------------------------------

# The key our end holds against a stranger: no input is ever made with it.
SECRET_KEYS = Keyring((hashlib.sha256(b"meshd fuzz: the key no input knows").digest(),))
# The key of the honest peers whose transcripts inputs are mutated from; our end holds it too in keyholder runs.
SHARED_KEY = hashlib.sha256(b"meshd fuzz: the key the inputs know").digest()
SHARED_KEYS = Keyring((SHARED_KEY,))
# Our end's nonce: fixed, so that a transcript recorded against our end still fits it when replayed as an input.
OUR_NONCE = bytes(range(NONCE_SIZE))
OUR_HELLO = Hello("fuzz", 0, NO_TARGET, Epoch(7, 3), 0x5EED)
OUR_HELLO_BYTES = encode(OUR_HELLO)
# The largest piece a campaign input's stream arrives in.
MAX_CHUNK = 48
# Event sequences a machine may have produced so far; once the peer closed, only the complete ones.
PARTIAL = {(), ("PeerFailed",), ("PeerHello",), ("PeerHello", "PeerAnswer")}
COMPLETE = {("PeerFailed",), ("PeerHello", "PeerAnswer")}
# What our end may send before our hello: nothing of our state (refusals carry UNDISCLOSED, not our epoch).
BEFORE_HELLO = (Challenge, Proof, Refuse)


@frozen
class HandshakeCase:
    """One run of our end of the handshake: the peer's bytes, the pieces they arrive in, how our end is set up."""

    FLAGS: ClassVar[tuple[str, ...]] = ("auth", "keyholder", "dialer", "data", "eof", "refuse")

    stream: bytes
    chunks: tuple[int, ...] = ()  # the sizes of the first pieces; the rest of the stream arrives as one piece
    auth: bool = False  # our end has a cluster secret
    keyholder: bool = False  # (auth) our key is the one inputs are made with; else one no input knows
    dialer: bool = False  # our end dialed
    data: bool = False  # a data connection, not a control link
    eof: bool = False  # the peer closes after its bytes
    refuse: bool = False  # our end answers the peer's hello REFUSE, else ACCEPT

    @classmethod
    def from_bytes(cls, data: bytes) -> HandshakeCase:
        """A campaign input: a byte of flags (bit i: FLAGS[i]), a byte seeding the piece sizes (0: one piece), the
        stream."""
        flags, seed, stream = data[:1], data[1:2], data[2:]
        bits = flags[0] if flags else 0
        chunks = []
        if seed and seed[0]:
            sizes = random.Random(seed[0])
            while sum(chunks) < len(stream):
                chunks.append(sizes.randint(1, MAX_CHUNK))
        return cls(stream, tuple(chunks), **{name: bool(bits >> bit & 1) for bit, name in enumerate(cls.FLAGS)})

    @property
    def mode(self) -> str:
        """plain (no secret), stranger (the peer cannot know our key) or keyholder (it may)."""
        return "keyholder" if self.auth and self.keyholder else "stranger" if self.auth else "plain"


def describe(event: HandshakeEvent) -> str:
    """An event as an outcome: the answer's or the failure's kind, not its text."""
    match event:
        case PeerAnswer(answer=answer):
            return f"PeerAnswer({answer_name(answer)})"
        case PeerFailed(reason=reason):
            return f"PeerFailed({reason.name if reason else None})"
    return type(event).__name__


def run_handshake(case: HandshakeCase) -> list[str]:
    """Run ``case`` through our end and check its contract; the outcome names the mode and the events.

    For any input: no exception; events in order (PeerFailed, or PeerHello then PeerAnswer), complete once the peer
    closed; our own bytes well-formed. With a secret: our hello goes out only after the peer's proof verified, and
    nothing before it tells our state; against a stranger, no proof ever verifies and no PeerHello ever comes.
    """
    auth = None
    if case.auth:
        keys = SHARED_KEYS if case.keyholder else SECRET_KEYS
        auth = Authenticator(keys, dialer=case.dialer, data=case.data, nonce=OUR_NONCE)
    machine = Handshake(OUR_HELLO, auth)
    sent = bytearray(machine.data_to_send())
    events: list[HandshakeEvent] = []

    def drain() -> None:
        while True:
            event = machine.next_event()
            sent.extend(machine.data_to_send())
            if auth is not None and not auth.authenticated and OUR_HELLO_BYTES in sent:
                raise Violation("our hello went out before the peer proved a key")
            if event is None:
                return
            events.append(event)
            if isinstance(event, PeerHello):
                machine.answer(Refuse(RefuseReason.STALE_EPOCH, OUR_HELLO.epoch, "fuzz") if case.refuse else Accept())
                sent.extend(machine.data_to_send())

    for piece in pieces(case.stream, case.chunks):
        machine.receive_data(piece)
        drain()
    if case.eof:
        machine.receive_eof()
        drain()
    sequence = tuple(type(event).__name__ for event in events)
    if sequence not in (COMPLETE if case.eof else PARTIAL):
        raise Violation(f"events out of order: {sequence}")
    if case.mode == "stranger" and ("PeerHello" in sequence or (auth is not None and auth.authenticated)):
        raise Violation("a stranger's proof verified")
    _check_sent(bytes(sent), secret=auth is not None)
    return [f"{case.mode}: " + (" → ".join(map(describe, events)) or "waiting")]


def _check_sent(sent: bytes, *, secret: bool) -> None:
    """What our end sent is well-formed frames; with a secret, those before our hello tell nothing of our state."""
    decoder = FrameDecoder()
    decoder.receive_data(sent)
    decoder.receive_eof()
    hello_sent = not secret
    while (frame := decoder.next_frame()) is not None:
        hello_sent = hello_sent or isinstance(frame, Hello)
        discloses = not isinstance(frame, BEFORE_HELLO) or getattr(frame, "epoch", UNDISCLOSED) != UNDISCLOSED
        if discloses and not hello_sent:
            raise Violation(f"sent {frame!r} before our hello")


def answers(first: Answer, second: Answer) -> Callable[[int, Hello], Answer]:
    """An answer policy for ``converse``: the first end answers every hello ``first``, the second ``second``."""
    return lambda end, hello: second if end else first


ACCEPT_ALL = answers(Accept(), Accept())


def converse(
    ends: Sequence[Handshake],
    answer: Callable[[int, Hello], Answer] = ACCEPT_ALL,
    split: Callable[[bytes], Iterable[bytes]] = lambda data: (data,),
) -> tuple[list[list[HandshakeEvent]], list[bytes]]:
    """Wire two machines back to back (h11's ConnectionPair) until neither has more to send: each one's bytes reach
    the other in the pieces ``split`` cuts them into, every event is drained and a PeerHello answered with
    ``answer(end, hello)``. Returns each end's events and all the bytes each end sent."""
    events: list[list[HandshakeEvent]] = [[], []]
    sent = [bytearray(), bytearray()]
    moved = True
    while moved:
        moved = False
        for end in (0, 1):
            data, peer = ends[end].data_to_send(), 1 - end
            if not data:
                continue
            moved = True
            sent[end] += data
            for piece in split(data):
                ends[peer].receive_data(piece)
                while (event := ends[peer].next_event()) is not None:
                    events[peer].append(event)
                    if isinstance(event, PeerHello):
                        ends[peer].answer(answer(peer, event.hello))
    return events, [bytes(data) for data in sent]


# Honest transcripts recorded per setup of our end (inputs mutate them): enough to vary hellos and answers.
TRANSCRIPTS = 12


@cache
def transcripts(auth: bool, dialer: bool, data: bool) -> tuple[tuple[bytes, ...], ...]:
    """The frames honest peers (with the inputs' key) sent to our end set up so: a keyholder's valid transcripts,
    and a stranger's valid-looking ones (a challenge that fits, proofs and seals under another key)."""
    rng = random.Random(f"transcripts {auth} {dialer} {data}")
    recorded = []
    for _ in range(TRANSCRIPTS):
        peer_hello = Hello(
            rng.choice(("fuzz", "other", "")),
            rng.randrange(4),
            rng.choice((0, NO_TARGET)),
            Epoch(rng.choice((6, 7, 8)), rng.choice((0, 3))),
            rng.getrandbits(64),
            rng.random() < 0.2,
        )
        peer_answer = rng.choice((Accept(), Goodbye("leaving"), Refuse(rng.choice(list(RefuseReason)), Epoch(7), "no")))
        if auth:
            ours_auth = Authenticator(SHARED_KEYS, dialer=dialer, data=data, nonce=OUR_NONCE)
            theirs_auth = Authenticator(SHARED_KEYS, dialer=not dialer, data=data, nonce=rng.randbytes(NONCE_SIZE))
            ends = (Handshake(OUR_HELLO, ours_auth), Handshake(peer_hello, theirs_auth))
        else:
            ends = (Handshake(OUR_HELLO), Handshake(peer_hello))
        _, (_, peer_sent) = converse(ends, answers(Accept(), peer_answer))
        recorded.append(tuple(split_frames(peer_sent)))
    return tuple(recorded)


def handshake_input(rng: random.Random) -> bytes:
    """A campaign input (``HandshakeCase.from_bytes``): random setup and pieces; the stream random bytes (1 in 10)
    or an honest transcript (usually for our setup) with frames dropped, repeated, swapped, cut short, replaced or
    mutated, sometimes mutated again as a whole."""
    flags, seed = rng.randrange(1 << len(HandshakeCase.FLAGS)), rng.choice((0, rng.randrange(1, 256)))
    if rng.random() < 0.1:
        return bytes((flags, seed)) + rng.randbytes(rng.randrange(128))
    if rng.random() < 0.8:
        ours = HandshakeCase.from_bytes(bytes((flags,)))
        setup = (ours.auth, ours.dialer, ours.data)
    else:
        setup = (rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
    frames = list(rng.choice(transcripts(*setup)))
    pool = frame_pool()
    for _ in range(rng.choice((0, 1, 1, 2))):
        at = rng.randrange(len(frames) + 1)
        edit = rng.randrange(6)
        if edit == 0:
            del frames[at:]
        elif edit == 1:
            del frames[at : at + 1]
        elif edit == 2 and frames:
            frames.insert(at, rng.choice(frames))
        elif edit == 3 and len(frames) > 1:
            i, j = rng.sample(range(len(frames)), 2)
            frames[i], frames[j] = frames[j], frames[i]
        elif edit == 4:
            frames[at : at + rng.randint(0, 1)] = [rng.choice(pool)]
        elif frames:
            at %= len(frames)
            frames[at] = reframe(mutate(rng, frames[at][4:], pool))
    stream = b"".join(frames)
    if rng.random() < 0.2:
        stream = mutate(rng, stream, pool)
    return bytes((flags, seed)) + stream


# ---------------------------------------------------------------------------------------------------------------
# The admin API's JSON: a typed value, an ErrorAnswer, or MalformedMessage
# ---------------------------------------------------------------------------------------------------------------

# The readers of a JSON object the admin client calls, by name, and what each returns.
READERS: tuple[tuple[str, Callable[[dict[str, Any]], object], type | tuple[type, ...]], ...] = (
    ("status_from_json", status_from_json, Status),
    ("start_answer_from_json", start_answer_from_json, StartAnswer),
    ("watch_message_from_json", watch_message_from_json, (Snapshot, MeshEvent)),
)
REQUESTS = (StatusRequest, WatchRequest, StartRequest, ErrorAnswer)
# The largest admin message a daemon reads by default (``admin_message_bytes`` of meshd.config.Limits).
MAX_MESSAGE = 64 * 1024


def sample_messages() -> list[dict[str, Any]]:
    """A valid message of every kind the admin API sends either way, from the types' own ``to_json``."""
    epoch = Epoch(7, 0xABC)
    peers = (
        PeerRow(1, Address("127.0.0.1", 7001), PeerState.UP, Epoch(3), 0xBEEF, 1.5, 2, 1, "gone", None),
        PeerRow(2, Address("::1", 7002), last_cause=EndCause.REFUSED, last_refused=RefuseReason.STALE_EPOCH),
    )
    worker = WorkerStatus(1234, WorkerState.RUNNING, 2.0, None, Epoch(3))
    status = Status("demo", 0, 3, Epoch(3), "fixed", False, 0, 0xFEED, MeshState.READY, 1.0, 0.5, peers, worker)
    common = {"time": 1.25, "index": 0}
    events: list[MeshEvent] = [
        LinkUp(**common, peer=1, epoch=Epoch(3), direction="dialed"),
        LinkDown(**common, peer=1, reason="refused", cause=EndCause.REFUSED, refused=RefuseReason.BEHIND),
        PeerRestarted(**common, peer=2, incarnation=0xABC),
        GenerationMoved(**common, epoch=epoch, reason="joined"),
        StateChanged(**common, state=MeshState.DEGRADED, epoch=None, reason="link down"),
        Fenced(**common, epoch=Epoch(3), reason="newer", newer=epoch, source="peer 2", cause="newer_epoch"),
        WorkerStarted(**common, pid=None, epoch=epoch),
        WorkerExited(**common, pid=5, epoch=epoch, exit=-9, reason="killed"),
    ]
    return [
        StatusRequest().to_json(),
        WatchRequest().to_json(),
        StartRequest(Epoch(U64_MAX)).to_json(),
        ErrorAnswer("unknown op").to_json(),
        status.to_json(),
        Snapshot(status).to_json(),
        *(event.to_json() for event in events),
        StartAnswer(Epoch(9)).to_json(),
        StartAnswer(epoch, fenced=True).to_json(),
        StartAnswer(error="not awaiting").to_json(),
    ]


@cache
def message_pool() -> tuple[bytes, ...]:
    return tuple(json.dumps(message).encode() for message in sample_messages())


@cache
def message_keys() -> tuple[str, ...]:
    """Every key the admin messages use (plausible keys for random objects)."""
    keys = set()
    for message in sample_messages():
        for container in _containers(message):
            keys.update(container if isinstance(container, dict) else ())
    return tuple(sorted(keys))


# JSON values on the edges of what the readers take: out-of-range and mistyped epochs, counts and indices, text
# that is almost an epoch, an address, an incarnation, a state or an event name.
JSON_EDGES = (
    None,
    True,
    False,
    0,
    -1,
    U64_MAX,
    U64_MAX + 1,
    2**100,
    0.5,
    -0.0,
    1e308,
    float("inf"),
    float("nan"),
    "",
    "x",
    "1.zz",
    "1.",
    ".1",
    "-1",
    "ffffffffffffffffff",
    "127.0.0.1:99999",
    "[::1]:7000",
    ":",
    "ready",
    "fenced",
    "link_up",
    "snapshot",
    "stale_epoch",
    "é\x00",
    [],
    {},
    [1],
    {"event": "ready"},
)
# How deep random JSON nests.
JSON_DEPTH = 3


def json_edge(rng: random.Random) -> Any:
    """One of JSON_EDGES, a copy of its own (later edits change lists and objects in place)."""
    return copy.deepcopy(rng.choice(JSON_EDGES))


def random_json(rng: random.Random, depth: int = JSON_DEPTH) -> Any:
    """A random JSON value: scalars of every type (edge values among them), lists and objects with plausible keys."""
    roll = rng.randrange(10 if depth else 6)
    if roll == 0:
        return json_edge(rng)
    if roll == 1:
        return rng.choice((rng.randint(-10, 10), rng.getrandbits(rng.randrange(1, 80)) - (1 << 40)))
    if roll == 2:
        return rng.uniform(-1e6, 1e6)
    if roll == 3:
        return rng.choice(message_keys())
    if roll == 4:  # ASCII and any code point of the BMP, lone surrogates included
        codes = (rng.choice((rng.randrange(32, 127), rng.randrange(0x10000))) for _ in range(rng.randrange(8)))
        return "".join(map(chr, codes))
    if roll == 5:
        return rng.random() < 0.5
    if roll < 8:
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice(message_keys()): random_json(rng, depth - 1) for _ in range(rng.randrange(5))}


def _containers(value: Any) -> list[Any]:
    """Every object and list in ``value``, itself included."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def mutate_json(rng: random.Random, message: Any) -> Any:
    """``message`` (changed in place) with one to three edits, each in a random object or list of it: a key dropped,
    renamed or added, a value replaced by an edge value or random JSON; an item dropped, replaced or added."""
    for _ in range(rng.randint(1, MAX_EDITS)):
        container = rng.choice(_containers(message) or [[]])
        value = json_edge(rng) if rng.random() < 0.5 else random_json(rng)
        if isinstance(container, dict):
            key = rng.choice(list(container) or [rng.choice(message_keys())])
            edit = rng.randrange(3)
            if edit == 0:
                container.pop(key, None)
            elif edit == 1:
                container[rng.choice(message_keys())] = container.pop(key, value)
            else:
                container[key] = value
        elif container and rng.random() < 0.5:
            container[rng.randrange(len(container))] = value
        else:
            container.append(value)
    return message


def pathological(rng: random.Random) -> str:
    """Valid JSON that strains the parser rather than the readers: deep nesting, an integer of thousands of
    digits."""
    depth = rng.randint(100, 20_000)
    return rng.choice(
        (
            "[" * depth + "]" * depth,
            '{"op": ' * depth + "1" + "}" * depth,
            '{"op": "start", "epoch": ' + "9" * rng.randint(1_000, 10_000) + "}",
        )
    )


def admin_input(rng: random.Random) -> bytes:
    """A message: random bytes (1 in 20), a valid admin message (1 in 20), random JSON (1 in 10), an admin message
    with JSON edits (most), a valid message with byte edits (1 in 10), or pathological JSON (1 in 50); UTF-8, at
    most MAX_MESSAGE bytes."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(48))
    if roll < 0.1:
        return rng.choice(message_pool())
    if roll < 0.2:
        text = json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5)
    elif roll < 0.88:
        message = mutate_json(rng, json.loads(rng.choice(message_pool())))
        text = json.dumps(message, ensure_ascii=rng.random() < 0.5)
    elif roll < 0.98:
        return mutate(rng, rng.choice(message_pool()), message_pool())[:MAX_MESSAGE]
    else:
        text = pathological(rng)
    return text.encode("utf-8", "surrogatepass")[:MAX_MESSAGE]


def run_admin(data: bytes) -> list[str]:
    """Read ``data`` as both ends of the admin websocket do, as a binary and as a text message, and check each
    reader's contract: ``parse_request`` returns a request or an ErrorAnswer (it never raises: the server answers
    every message); ``parse_object`` returns an object or raises MalformedMessage; the status, start-answer and
    watch readers return their type or raise MalformedMessage (the client's NotAdmin)."""
    outcomes = []
    found = None
    for message in (data, data.decode("utf-8", "replace")):
        request = parse_request(message)
        if not isinstance(request, REQUESTS):
            raise Violation(f"parse_request returned {request!r}")
        try:
            found = parse_object(message)
        except MalformedMessage:
            found = None
    outcomes.append(f"parse_request: {type(request).__name__}")
    if found is None:
        return [*outcomes, "parse_object: MalformedMessage"]
    if not isinstance(found, dict):
        raise Violation(f"parse_object returned {found!r}")
    for name, reader, kinds in READERS:
        try:
            value = reader(found)
        except MalformedMessage:
            outcomes.append(f"{name}: MalformedMessage")
            continue
        if not isinstance(value, kinds):
            raise Violation(f"{name} returned {value!r}")
        outcomes.append(f"{name}: {type(value).__name__}")
    return outcomes


TARGETS = {
    target.name: target
    for target in (
        Target("decoder", decoder_input, run_decoder),
        Target("handshake", handshake_input, lambda data: run_handshake(HandshakeCase.from_bytes(data))),
        Target("admin", admin_input, run_admin),
    )
}
