"""The handshake machine's fuzz target: events in order, never an exception, nothing disclosed to a stranger.

Our end of the handshake runs against a peer's bytes (``HandshakeCase``); inputs are mutated from honest transcripts
recorded by wiring two machines back to back (``converse``), which the tests use on their own too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import ClassVar

from attrs import frozen

from meshd.core.auth import Authenticator, Keyring
from meshd.core.hello import UNDISCLOSED, Handshake, HandshakeEvent, PeerAnswer, PeerFailed, PeerHello, answer_name
from meshd.core.wire import (
    NO_TARGET,
    NONCE_SIZE,
    Accept,
    Answer,
    Challenge,
    Epoch,
    FrameDecoder,
    Goodbye,
    Hello,
    Proof,
    Refuse,
    RefuseReason,
    encode,
)
from tools.fuzz.common import Violation, mutate, pieces, reframe, split_frames
from tools.fuzz.decoder import frame_pool

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
