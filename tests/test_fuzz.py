"""Untrusted input: whatever bytes a stranger sends, meshd answers with a value or its one error, nothing else.

Three surfaces take bytes nobody vouched for: the frame decoder (anyone who reaches the mesh port), the handshake
machine on top of it, and the admin API's JSON (anyone who reaches the admin port, and whatever answers the admin
client). Any other exception there is a crash, a connection task or a daemon lost to one message. The contracts are
stated once, in the target modules of ``tools.fuzz`` (the long campaigns of ``scripts/fuzz`` check the same ones);
here hypothesis draws the inputs, and a short campaign of each target runs too.
"""

import contextlib
import json
from typing import get_args

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

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
from meshd.core.auth import Authenticator, Keyring
from meshd.core.hello import UNDISCLOSED, Handshake, PeerAnswer, PeerFailed, PeerHello
from meshd.core.status import MeshEvent, StartAnswer, Status
from meshd.core.wire import (
    MAGIC,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    TAG_SIZE,
    Accept,
    Challenge,
    Epoch,
    Frame,
    FrameType,
    Hello,
    Proof,
    Refuse,
    RefuseReason,
    Seal,
    decode_all,
    decode_frame,
    encode,
)
from meshd.errors import RemoteProtocolError
from tools.fuzz.admin import message_keys, message_pool, mutate_json, run_admin, sample_messages
from tools.fuzz.campaign import run
from tools.fuzz.common import mutate, pieces, reframe
from tools.fuzz.decoder import decode_pieces, frame_pool
from tools.fuzz.handshake import (
    OUR_HELLO,
    OUR_HELLO_BYTES,
    OUR_NONCE,
    SECRET_KEYS,
    HandshakeCase,
    converse,
    run_handshake,
    transcripts,
)

# Sizes of the pieces a byte stream arrives in (what is left arrives whole).
chunkings = st.lists(st.integers(1, 64), max_size=12).map(tuple)
# A deterministic random that hypothesis draws from and shrinks: it drives the campaign's own mutators.
mutators = st.randoms(use_true_random=False)


def drain(machine):
    """Every event the machine has now (callers that may get a PeerHello answer it themselves)."""
    events = []
    while (event := machine.next_event()) is not None:
        events.append(event)
    return events


# ---------------------------------------------------------------------------------------------------------------
# The frame decoder: frames, or RemoteProtocolError (UnsupportedVersion included); nothing else
# ---------------------------------------------------------------------------------------------------------------

# The edges of the wire's u8, u16, u32 and u64 fields (zero, one, the top bit, all ones), packed big-endian.
EDGE_FIELDS = [value.to_bytes(width, "big") for width in (1, 2, 4, 8) for value in (0, 1, 1 << 8 * width - 1)]
EDGE_FIELDS += [b"\xff" * width for width in (1, 2, 4, 8)]
# Payloads that look like meshd's: the magic and a version first (or not), then edge fields and random bytes.
payloads = st.one_of(
    st.binary(max_size=120),
    st.tuples(
        st.sampled_from([MAGIC, b"MSH", b"XXXX"]),
        st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION - 1, 0xFFFF]).map(lambda v: v.to_bytes(2, "big")),
        st.lists(st.one_of(st.sampled_from(EDGE_FIELDS), st.binary(max_size=40)), max_size=8),
    ).map(lambda parts: parts[0] + parts[1] + b"".join(parts[2])),
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), chunkings, st.booleans())
def test_any_bytes_in_any_pieces_are_frames_or_a_remote_protocol_error(data, chunks, eof):
    """The decoder's whole contract on random bytes, cut anywhere: the peer can make it fail only one way."""
    outcomes = decode_pieces(pieces(data, chunks), eof=eof)
    assert outcomes[-1] in ("end of stream", "awaiting more") or outcomes[-1].startswith(
        ("RemoteProtocolError", "UnsupportedVersion")
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(frame_pool()), min_size=1, max_size=3), mutators, chunkings, st.booleans())
def test_mutated_frames_are_frames_or_a_remote_protocol_error(frames, rng, chunks, whole):
    """Valid frames of every type with edits inside (``whole``: behind a right length prefix, so the payload parser
    sees them), as the campaign makes them: random bytes rarely get past the length check."""
    edited = [reframe(mutate(rng, frame[4:], frame_pool())) if whole else frame for frame in frames]
    stream = b"".join(edited) if whole else mutate(rng, b"".join(edited), frame_pool())
    decode_pieces(pieces(stream, chunks))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.sampled_from(FrameType), st.integers(0, 255)), payloads)
@example(FrameType.VIEW, bytes(16) + b"\x00" + b"\xff\xff")  # a count far beyond the payload
@example(FrameType.HELLO, MAGIC + PROTOCOL_VERSION.to_bytes(2, "big") + bytes(29) + b"\x02\xc3\x28")  # bad UTF-8
def test_decode_frame_returns_a_frame_that_re_encodes_or_raises_a_remote_protocol_error(kind, payload):
    """One frame's parser; a frame it returns encodes back to itself, since the handshake re-encodes the peer's
    hello and answer to check their seals (texts here stay under the 1024 bytes ``encode`` keeps)."""
    try:
        frame = decode_frame(kind, payload)
    except RemoteProtocolError:
        return
    assert isinstance(frame, Frame)
    assert decode_all(encode(frame)) == [frame]


# ---------------------------------------------------------------------------------------------------------------
# The handshake machine: only its events, in order, for any bytes; a stranger learns nothing and is never heard
# ---------------------------------------------------------------------------------------------------------------

setups = st.fixed_dictionaries(
    {"auth": st.booleans(), "dialer": st.booleans(), "data": st.booleans(), "refuse": st.booleans()}
)


@st.composite
def transcript_streams(draw, auth, dialer, data):
    """An honest peer's frames for this setup (recorded under the inputs' key), edited by the campaign's mutator."""
    frames = list(draw(st.sampled_from(transcripts(auth, dialer, data))))
    keep = draw(st.integers(0, len(frames)))
    stream = b"".join(frames[:keep])
    return mutate(draw(mutators), stream, frame_pool()) if draw(st.booleans()) else stream


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), chunkings, setups, st.booleans(), st.booleans())
def test_any_bytes_yield_only_handshake_events_in_order(stream, chunks, setup, keyholder, eof):
    """Never an exception; PeerFailed, or PeerHello then PeerAnswer; complete once the peer closed (so a connection
    task always ends with a verdict)."""
    (outcome,) = run_handshake(HandshakeCase(stream, chunks, keyholder=keyholder, eof=eof, **setup))
    if eof:
        assert "PeerFailed" in outcome or "PeerAnswer" in outcome


@settings(max_examples=300, deadline=None)
@given(st.data(), chunkings, setups, st.booleans(), st.booleans())
def test_mutated_transcripts_yield_only_handshake_events_in_order(data, chunks, setup, keyholder, eof):
    """The same contract on an honest peer's frames, cut short or edited: these reach the later phases (proof,
    sealed hello, sealed answer) that random bytes never get to."""
    stream = data.draw(transcript_streams(setup["auth"], setup["dialer"], setup["data"]))
    run_handshake(HandshakeCase(stream, chunks, keyholder=keyholder, eof=eof, **setup))


@st.composite
def forgeries(draw, dialer, data):
    """What a stranger can send: a challenge that fits ours, then a proof, a hello and seals it made up."""
    challenge = Challenge(draw(st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)), not dialer, data)
    tags = st.binary(min_size=TAG_SIZE, max_size=TAG_SIZE)
    hello = Hello("fuzz", 1, 0, Epoch(draw(st.integers(0, 9))), 1)
    frames = [encode(challenge), encode(Proof(draw(tags))), encode(hello), encode(Seal(draw(tags)))]
    return b"".join(frames[: draw(st.integers(1, len(frames)))])


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans(), st.booleans(), chunkings)
def test_a_stranger_learns_nothing_and_is_never_heard(data, dialer, kind, chunks):
    """Against a key the inputs never saw, whatever arrives (random bytes, a fitting challenge with a made-up
    proof, an honest transcript under another key): no PeerHello, our hello never sent, and every refusal carries
    UNDISCLOSED instead of our epoch. Only challenges, proofs and refusals go out."""
    stream = data.draw(
        st.one_of(st.binary(max_size=200), forgeries(dialer, kind), transcript_streams(True, dialer, kind))
    )
    machine = Handshake(OUR_HELLO, Authenticator(SECRET_KEYS, dialer=dialer, data=kind, nonce=OUR_NONCE))
    sent, events = machine.data_to_send(), []
    for piece in [*pieces(stream, chunks), None]:
        if piece is None:
            machine.receive_eof()
        else:
            machine.receive_data(piece)
        events += drain(machine)
        sent += machine.data_to_send()
    assert len(events) == 1 and isinstance(events[0], PeerFailed)
    assert OUR_HELLO_BYTES not in sent
    for frame in decode_all(sent):
        assert isinstance(frame, Challenge | Proof | Refuse)
        assert getattr(frame, "epoch", UNDISCLOSED) == UNDISCLOSED


# Keys for the honest pairs: the machines derive their MAC keys from these.
K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))
# A keyring: some of those keys, in any order (an end signs with the first).
keyrings = st.lists(st.sampled_from([K1, K2, K3]), min_size=1, max_size=3, unique=True).map(tuple)


def pair(keys_a, keys_b, *, nonces=(b"a" * NONCE_SIZE, b"b" * NONCE_SIZE), data=False):
    """Two ends of one connection (a dialed b), with these keyrings (None: no secret)."""

    def end(keys, dialer, nonce, index):
        auth = None if keys is None else Authenticator(Keyring(keys), dialer=dialer, data=data, nonce=nonce)
        return Handshake(Hello("demo", index, 1 - index, Epoch(5), 100 + index), auth)

    return end(keys_a, True, nonces[0], 0), end(keys_b, False, nonces[1], 1)


def splitter(data):
    """Cuts every write into pieces at points hypothesis chooses (``data``: st.data())."""
    return lambda sent: list(pieces(sent, data.draw(chunkings)))


@settings(max_examples=100, deadline=None)
@given(st.data(), st.booleans())
def test_two_ends_with_the_same_key_link_whatever_the_pieces(data, data_connection):
    """Both ends hear each other's hello, then each other's ACCEPT, however TCP cuts the bytes."""
    events, _ = converse(pair((K1,), (K1,), data=data_connection), split=splitter(data))
    for own, theirs in ((events[0], 1), (events[1], 0)):
        assert [type(event) for event in own] == [PeerHello, PeerAnswer]
        assert own[0].hello.sender == theirs and own[1] == PeerAnswer(Accept())


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_two_ends_without_a_secret_link_whatever_the_pieces(data):
    events, _ = converse(pair(None, None), split=splitter(data))
    assert [[type(event) for event in own] for own in events] == [[PeerHello, PeerAnswer]] * 2
    assert events[0][1] == events[1][1] == PeerAnswer(Accept())


@settings(max_examples=100, deadline=None)
@given(st.data(), st.booleans())
def test_two_ends_with_different_keys_fail_and_never_hear_a_hello(data, a_dials_with_the_secret):
    """Different keys, or a secret at one end only: both refuse or are refused, neither judges a hello."""
    cases = [((K1,), (K2,)), ((K1,), None) if a_dials_with_the_secret else (None, (K1,))]
    for rings in cases:
        events, sent = converse(pair(*rings), split=splitter(data))
        for own in events:
            assert [type(event) for event in own] == [PeerFailed]
            assert own[0].reason is RefuseReason.AUTH_FAILED
        for ring, output in zip(rings, sent, strict=True):
            if ring is not None:  # (an end without a secret sends its hello at once, to anyone)
                assert not any(isinstance(frame, Hello) for frame in decode_all(output))


@settings(max_examples=200, deadline=None)
@given(keyrings, keyrings, st.data())
def test_keyrings_link_exactly_when_each_end_signs_with_a_key_the_other_lists(ring_a, ring_b, data):
    """Key rotation (``meshd.core.auth``): an end signs with its first key and accepts any key it lists, so two
    ends link iff each one's first key is in the other's ring; otherwise neither hears a hello."""
    events, _ = converse(pair(ring_a, ring_b), split=splitter(data))
    if ring_a[0] in ring_b and ring_b[0] in ring_a:
        assert [[type(event) for event in own] for own in events] == [[PeerHello, PeerAnswer]] * 2
        assert events[0][1] == events[1][1] == PeerAnswer(Accept())
    else:
        assert not any(isinstance(event, PeerHello) for own in events for event in own)
        assert all(isinstance(own[-1], PeerFailed) for own in events)


@pytest.mark.parametrize(
    ("ring_a", "ring_b", "linked"),
    [
        ((K1, K2), (K1,), True),  # k2 listed at a only: both still sign with k1
        ((K2, K1), (K1, K2), True),  # a signs with k2, which b lists already
        ((K2, K1), (K2,), True),  # k1 dropped at b: a lists k2 too
        ((K2, K1), (K1,), False),  # a signs with k2 before b lists it: b refuses a, and so a hears no hello
    ],
    ids=["listed", "promoted", "dropped", "promoted-too-early"],
)
def test_key_rotation_steps(ring_a, ring_b, linked):
    """A rotation (list the new key everywhere, then sign with it everywhere, then drop the old one) links at each
    step between neighbouring steps; signing with a key the peer does not list yet does not link."""
    events, _ = converse(pair(ring_a, ring_b))
    heard = [any(isinstance(event, PeerHello) for event in own) for own in events]
    assert heard == [linked, linked]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE), st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE))
def test_a_recorded_handshake_replays_nowhere(first, second):
    """A keyholder's whole transcript, recorded on one connection, is a stranger's on the next: its proof is bound
    to the nonces of the connection it was made on."""
    assume(first != second)
    _, (_, recorded) = converse(pair((K1,), (K1,), nonces=(first, b"b" * NONCE_SIZE)))
    victim = pair((K1,), (K1,), nonces=(second, b"b" * NONCE_SIZE))[0]
    victim.receive_data(recorded)
    victim.receive_eof()
    event = victim.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.AUTH_FAILED
    assert not any(isinstance(frame, Hello) for frame in decode_all(victim.data_to_send()))


@settings(max_examples=50, deadline=None)
@given(st.booleans(), st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE))
def test_an_end_does_not_take_its_own_proof_reflected(dialer, nonce):
    """A peer that answers an end's proof with that very proof proves nothing: the sender's role is in the tag."""
    machine = pair((K1,), (K1,))[0 if dialer else 1]
    machine.data_to_send()
    machine.receive_data(encode(Challenge(nonce, dialer=not dialer)))
    events = drain(machine)
    proofs = [frame for frame in decode_all(machine.data_to_send()) if isinstance(frame, Proof)]
    machine.receive_data(b"".join(map(encode, proofs)))
    events += drain(machine)
    assert [(type(event), event.reason) for event in events] == [(PeerFailed, RefuseReason.AUTH_FAILED)]
    assert not any(isinstance(frame, Hello) for frame in decode_all(machine.data_to_send()))


# ---------------------------------------------------------------------------------------------------------------
# The admin API's JSON: a request or an ErrorAnswer (server); an object, then a typed value, or MalformedMessage
# (client)
# ---------------------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["ready", "link_up", "snapshot", "stale_epoch", "1.zz", "7.00ff", "127.0.0.1:7000", "-1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.sampled_from(message_keys()), children, max_size=4)
    ),
    max_leaves=12,
)
# Names a message's "op" or "event" may plausibly have.
NAMES = ["status", "watch", "start", "snapshot", "link_up", "link_down", "peer_restarted", "generation", "fenced"]
NAMES += ["ready", "forming", "degraded", "awaiting", "stopping", "worker_started", "worker_exited"]
# Objects with the admin messages' own keys and any JSON values, a plausible "op" and "event" among them or not.
plausible_objects = st.builds(
    lambda names, rest: {**rest, **names},
    st.fixed_dictionaries({}, optional={"op": st.sampled_from(NAMES), "event": st.sampled_from(NAMES)}),
    st.dictionaries(st.sampled_from(message_keys()), json_values, max_size=8),
)
# Valid JSON that the parser itself fails on, short of MAX_MESSAGE: nesting deeper than Python's recursion limit,
# an integer of more digits than int() takes from text (sys.get_int_max_str_digits).
PATHOLOGICAL = pytest.mark.parametrize(
    "message",
    ["[" * 5000 + "]" * 5000, '{"op": "start", "epoch": ' + "9" * 5000 + "}"],
    ids=["deep-nesting", "5000-digit-integer"],
)
messages = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    plausible_objects.map(json.dumps),
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_parse_request_answers_every_message(message):
    """The server answers each message with the request's answer or an error, and the connection (and the daemon)
    lives on: parse_request returns and never raises."""
    assert isinstance(parse_request(message), StatusRequest | WatchRequest | StartRequest | ErrorAnswer)


@PATHOLOGICAL
def test_parse_request_answers_json_the_parser_fails_on(message):
    """One such message must not end the admin server (and with it the daemon), as an exception out of
    parse_request does: it leaves AdminSession.serve and the websocket server's nursery."""
    assert isinstance(parse_request(message), ErrorAnswer)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_parse_object_returns_an_object_or_raises_malformed_message(message):
    """The client's first reading of every answer: MalformedMessage is its only failure (NotAdmin to the user)."""
    with contextlib.suppress(MalformedMessage):
        assert isinstance(parse_object(message), dict)


@PATHOLOGICAL
def test_parse_object_reads_json_the_parser_fails_on_as_malformed(message):
    with pytest.raises(MalformedMessage):
        parse_object(message)


def read_every_way(obj):
    """Each reader of an admin object returns its type or raises MalformedMessage."""
    for reader, kinds in (
        (status_from_json, Status),
        (start_answer_from_json, StartAnswer),
        (watch_message_from_json, Snapshot | MeshEvent),
    ):
        with contextlib.suppress(MalformedMessage):
            assert isinstance(reader(obj), kinds)


@settings(max_examples=400, deadline=None)
@given(plausible_objects | st.dictionaries(st.text(max_size=6), json_values, max_size=4))
@example({"ok": True, "epoch": -1})  # epochs outside 0..2**64-1
@example({"ok": True, "epoch": 2**64})
@example({"event": "link_up", "time": 0, "index": 0, "peer": 1, "epoch": "99999999999999999999999.0", "direction": ""})
def test_every_reader_returns_its_type_or_raises_malformed_message(obj):
    read_every_way(obj)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(message_pool()), mutators)
def test_edited_admin_messages_read_as_their_type_or_malformed(message, rng):
    """Every message the admin API sends, with keys dropped or renamed and values replaced (edge values:
    out-of-range and mistyped epochs, counts, addresses, names), as the campaign edits them."""
    read_every_way(mutate_json(rng, json.loads(message)))


def test_the_messages_edits_start_from_are_valid():
    """The campaign's admin samples parse back to their own types, so that an edit starts from a valid message."""
    for message in sample_messages():
        outcomes = run_admin(json.dumps(message).encode())
        assert any(not outcome.endswith(("MalformedMessage", "ErrorAnswer")) for outcome in outcomes), message


# ---------------------------------------------------------------------------------------------------------------
# A short campaign of each target: no crash, and the inputs reach every outcome that matters
# ---------------------------------------------------------------------------------------------------------------

# What a short campaign must reach, or its generator has gone blind: every frame type; a stranger refused, a
# keyholder heard and accepted; every admin type read back.
MUST_REACH = {
    "decoder": {frame.__name__ for frame in get_args(Frame)}
    | {"UnsupportedVersion: peer speaks protocol version N, we speak N"},
    "handshake": {"stranger: PeerFailed(AUTH_FAILED)", "keyholder: PeerHello → PeerAnswer(ACCEPT)"},
    "admin": {"status_from_json: Status", "watch_message_from_json: Snapshot", "parse_request: StartRequest"},
}


@pytest.mark.parametrize(("target", "inputs"), [("decoder", 20_000), ("handshake", 2_000), ("admin", 2_000)])
def test_a_short_campaign_finds_no_crash(target, inputs):
    result = run(target, inputs, seed=1)
    assert result.inputs == inputs
    assert MUST_REACH[target] <= set(result.outcomes)
    crashes = {crash.signature: crash.data[:200].hex() for crash in result.crashes.values()}
    assert not crashes
