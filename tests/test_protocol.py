"""The wire format (meshd.core.wire): frame round trips, the stream decoder, malformed input, and Epoch.

Malformed frames are built by hand with ``raw_frame`` so that each test states the exact bytes a peer sent.
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.wire import (
    MAGIC,
    MAX_FRAME_SIZE,
    MAX_NAME_BYTES,
    NO_TARGET,
    PROTOCOL_VERSION,
    U64_MAX,
    Epoch,
    FrameDecoder,
    FrameType,
    Goodbye,
    Heartbeat,
    Hello,
    Refuse,
    RefuseReason,
    UnsupportedVersion,
    View,
    encode,
)
from meshd.errors import LocalProtocolError, RemoteProtocolError

# ---------------------------------------------------------------------------------------------------------------
# Helpers and strategies
# ---------------------------------------------------------------------------------------------------------------


def raw_frame(kind, payload=b""):
    """A frame with a correct length prefix around any type byte and payload."""
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def hello_payload(
    *, magic=MAGIC, version=PROTOCOL_VERSION, sender=1, target=0, epoch=(7, 0), inc=9, flags=0, name=b"demo"
):
    """A HELLO payload with every field settable, including a name length that may disagree with the name."""
    head = struct.pack(">4sH", magic, version)
    body = struct.pack(">HHQQQBB", sender, target, epoch[0], epoch[1], inc, flags, len(name))
    return head + body + name


def refuse_payload(code, detail=b"", *, detail_length=None):
    length = len(detail) if detail_length is None else detail_length
    return struct.pack(">BQQH", code, 3, 0, length) + detail


def drain(decoder):
    """Every whole frame the decoder holds now."""
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def decode_all(data):
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frames = drain(decoder)
    decoder.receive_eof()
    assert decoder.next_frame() is None
    assert decoder.at_eof
    return frames


def utf8_prefix(text, limit):
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, U64_MAX)
# Small parts make ties and near-ties common; full-range parts exercise the 64-bit encoding.
epoch_parts = st.one_of(st.integers(0, 3), u64)
epochs = st.builds(Epoch, epoch_parts, epoch_parts)
cluster_names = st.text(max_size=MAX_NAME_BYTES).map(lambda name: utf8_prefix(name, MAX_NAME_BYTES))
texts = st.text(max_size=300).map(lambda text: utf8_prefix(text, 1024))

hellos = st.builds(
    Hello, cluster=cluster_names, sender=u16, target=u16, epoch=epochs, incarnation=u64, auto=st.booleans()
)
views = st.builds(View, epoch=epochs, incarnations=st.lists(u64, max_size=64).map(tuple))
refuses = st.builds(Refuse, reason=st.sampled_from(RefuseReason), epoch=epochs, detail=texts)
goodbyes = st.builds(Goodbye, reason=texts)
frames = st.one_of(hellos, refuses, st.just(Heartbeat()), goodbyes, views)


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------

EXAMPLES = [
    Hello("demo", 0, 1, Epoch(1), 0xDEADBEEF),
    Hello("", 0xFFFE, NO_TARGET, Epoch(U64_MAX, U64_MAX), U64_MAX),
    Hello("é" * 127, 3, 4, Epoch(0, 5), 0),  # 254 UTF-8 bytes
    Hello("x" * MAX_NAME_BYTES, 1, 2, Epoch(2), 1),
    Refuse(RefuseReason.STALE_EPOCH, Epoch(4), "peer epoch 3 is older than ours"),
    Refuse(RefuseReason.BEHIND, Epoch(0, U64_MAX), ""),
    Heartbeat(),
    Goodbye("stopping"),
    Goodbye(""),
]


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda frame: type(frame).__name__)
def test_example_frames_round_trip(frame):
    assert decode_all(encode(frame)) == [frame]


@pytest.mark.parametrize("reason", list(RefuseReason))
def test_every_refuse_reason_round_trips(reason):
    frame = Refuse(reason, Epoch(9, 1), "why")
    assert decode_all(encode(frame)) == [frame]


def test_frame_layout_of_a_heartbeat():
    assert encode(Heartbeat()) == b"\x00\x00\x00\x01\x03"


def test_frame_layout_of_a_hello():
    data = encode(Hello("ab", 1, NO_TARGET, Epoch(2, 3), 4))
    assert data == raw_frame(FrameType.HELLO, hello_payload(sender=1, target=0xFFFF, epoch=(2, 3), inc=4, name=b"ab"))
    assert data[5:9] == MAGIC


@given(hellos)
def test_hello_round_trips(frame):
    assert decode_all(encode(frame)) == [frame]


@given(refuses)
def test_refuse_round_trips(frame):
    assert decode_all(encode(frame)) == [frame]


@given(goodbyes)
def test_goodbye_round_trips(frame):
    assert decode_all(encode(frame)) == [frame]


def test_cluster_name_over_255_bytes_is_not_encoded():
    with pytest.raises(LocalProtocolError):
        encode(Hello("é" * 128, 0, 1, Epoch(1), 0))  # 256 bytes


def test_long_texts_are_cut_on_a_character_boundary():
    detail = "a" + "é" * 600  # 1201 bytes; 1024 bytes would split an "é"
    (refuse,) = decode_all(encode(Refuse(RefuseReason.PROTOCOL_ERROR, Epoch(1), detail)))
    assert refuse.detail == "a" + "é" * 511
    (goodbye,) = decode_all(encode(Goodbye("z" * 5000)))
    assert goodbye.reason == "z" * 1024


def test_encoding_a_non_frame_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        encode("hello")


# ---------------------------------------------------------------------------------------------------------------
# The stream decoder
# ---------------------------------------------------------------------------------------------------------------


def test_decoder_fed_byte_by_byte():
    sent = [*EXAMPLES, Heartbeat()]
    stream = b"".join(encode(frame) for frame in sent)
    decoder = FrameDecoder()
    received = []
    for position in range(len(stream)):
        decoder.receive_data(stream[position : position + 1])
        received += drain(decoder)
    assert received == sent
    decoder.receive_eof()
    assert decoder.next_frame() is None
    assert decoder.at_eof


def test_decoder_waits_for_a_whole_frame():
    data = encode(Goodbye("bye"))
    decoder = FrameDecoder()
    decoder.receive_data(data[:-1])
    assert decoder.next_frame() is None
    assert not decoder.at_eof
    decoder.receive_data(data[-1:])
    assert decoder.next_frame() == Goodbye("bye")
    assert decoder.next_frame() is None


@given(st.lists(frames, max_size=6), st.data())
def test_decoder_any_chunking_yields_the_same_frames(sent, data):
    stream = b"".join(encode(frame) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder()
    received = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        received += drain(decoder)
    decoder.receive_eof()
    assert decoder.next_frame() is None
    assert received == sent
    assert decoder.at_eof


def test_clean_end_of_stream():
    decoder = FrameDecoder()
    assert not decoder.at_eof
    decoder.receive_eof()
    assert decoder.next_frame() is None
    assert decoder.at_eof


def test_data_after_end_of_stream_is_a_local_error():
    decoder = FrameDecoder()
    decoder.receive_eof()
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"\x00")


def test_frame_of_exactly_max_size_is_awaited_not_refused():
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">I", MAX_FRAME_SIZE) + bytes([FrameType.GOODBYE]))
    assert decoder.next_frame() is None


# ---------------------------------------------------------------------------------------------------------------
# Malformed input: always RemoteProtocolError
# ---------------------------------------------------------------------------------------------------------------


def decode_bytes(data, *, eof=False):
    """The frames decoded from ``data``; lets RemoteProtocolError through."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    if eof:
        decoder.receive_eof()
    return drain(decoder)


MALFORMED = {
    "zero length": struct.pack(">I", 0),
    "oversize length, refused before the body arrives": struct.pack(">I", MAX_FRAME_SIZE + 1),
    "length 0xFFFFFFFF": b"\xff\xff\xff\xff",
    "unknown frame type 0": raw_frame(0),
    "unknown frame type 5": raw_frame(5, b"x"),
    "unknown frame type 255": raw_frame(255),
    "hello shorter than the magic": raw_frame(FrameType.HELLO, b"MS"),
    "hello with another magic": raw_frame(FrameType.HELLO, hello_payload(magic=b"HTTP")),
    "empty hello": raw_frame(FrameType.HELLO),
    "truncated hello": raw_frame(FrameType.HELLO, hello_payload()[:-10]),
    "hello head only": raw_frame(FrameType.HELLO, MAGIC + struct.pack(">H", PROTOCOL_VERSION)),
    "hello name shorter than its length": raw_frame(FrameType.HELLO, hello_payload(name=b"demo")[:-1]),
    "hello name longer than its length": raw_frame(FrameType.HELLO, hello_payload(name=b"demo") + b"!"),
    "hello name not UTF-8": raw_frame(FrameType.HELLO, hello_payload(name=b"\xff\xfe")),
    "hello name with a split character": raw_frame(FrameType.HELLO, hello_payload(name="é".encode()[:1])),
    "heartbeat with a payload": raw_frame(FrameType.HEARTBEAT, b"\x00"),
    "refuse reason 0": raw_frame(FrameType.REFUSE, refuse_payload(0)),
    "unknown refuse reason": raw_frame(FrameType.REFUSE, refuse_payload(max(RefuseReason) + 1)),
    "refuse reason 255": raw_frame(FrameType.REFUSE, refuse_payload(255)),
    "truncated refuse": raw_frame(FrameType.REFUSE, refuse_payload(RefuseReason.BEHIND)[:-1]),
    "refuse detail longer than said": raw_frame(FrameType.REFUSE, refuse_payload(1, b"abc", detail_length=2)),
    "refuse detail shorter than said": raw_frame(FrameType.REFUSE, refuse_payload(1, b"abc", detail_length=4)),
    "refuse detail not UTF-8": raw_frame(FrameType.REFUSE, refuse_payload(1, b"\xc3")),
    "empty goodbye": raw_frame(FrameType.GOODBYE),
    "goodbye text length mismatch": raw_frame(FrameType.GOODBYE, b"\x00\x05bye"),
    "goodbye text not UTF-8": raw_frame(FrameType.GOODBYE, b"\x00\x01\x80"),
    "bad frame after a good one": encode(Heartbeat()) + raw_frame(9),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_a_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError) as info:
        decode_bytes(data)
    assert type(info.value) is RemoteProtocolError


TRUNCATED_STREAMS = {
    "two bytes of a length": (b"\x00\x00", []),
    "length only": (struct.pack(">I", 5), []),
    "hello minus its last byte": (encode(Hello("demo", 0, 1, Epoch(1), 2))[:-1], []),
    "whole heartbeat then half a goodbye": (encode(Heartbeat()) + encode(Goodbye("bye"))[:6], [Heartbeat()]),
}


@pytest.mark.parametrize(("data", "complete"), TRUNCATED_STREAMS.values(), ids=TRUNCATED_STREAMS.keys())
def test_stream_ending_inside_a_frame_is_a_remote_protocol_error(data, complete):
    decoder = FrameDecoder()
    decoder.receive_data(data)
    assert drain(decoder) == complete
    decoder.receive_eof()
    assert not decoder.at_eof
    with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
        decoder.next_frame()


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 0xFFFF])
def test_hello_with_another_version_is_unsupported(version):
    data = encode(Hello("demo", 0, 1, Epoch(1), 2, version=version))
    with pytest.raises(UnsupportedVersion) as info:
        decode_bytes(data)
    assert info.value.version == version
    assert isinstance(info.value, RemoteProtocolError)


def test_another_version_is_recognised_before_the_rest_is_parsed():
    """A future version may change everything after magic and version: only those six bytes are read."""
    data = raw_frame(FrameType.HELLO, MAGIC + struct.pack(">H", PROTOCOL_VERSION + 1) + b"\xff")
    with pytest.raises(UnsupportedVersion) as info:
        decode_bytes(data)
    assert info.value.version == PROTOCOL_VERSION + 1


def decoder_outcome(data, eof):
    """Frames decoded until the decoder needs more bytes, or the RemoteProtocolError it raised."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    if eof:
        decoder.receive_eof()
    try:
        return drain(decoder)
    except RemoteProtocolError as exc:
        return exc


@given(st.binary(max_size=200), st.booleans())
def test_decoder_on_arbitrary_bytes_only_raises_remote_protocol_error(data, eof):
    outcome = decoder_outcome(data, eof)
    assert isinstance(outcome, list | RemoteProtocolError)


@given(st.lists(frames, min_size=1, max_size=3), st.data(), st.booleans())
def test_decoder_on_corrupted_frames_only_raises_remote_protocol_error(sent, data, eof):
    """Random bytes rarely get past the length prefix; corrupting valid frames reaches every payload parser."""
    stream = bytearray(b"".join(encode(frame) for frame in sent))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream[position] = data.draw(st.integers(0, 255))
    stream = stream[: data.draw(st.integers(0, len(stream)))]
    outcome = decoder_outcome(bytes(stream), eof)
    assert isinstance(outcome, list | RemoteProtocolError)


# ---------------------------------------------------------------------------------------------------------------
# Epoch
# ---------------------------------------------------------------------------------------------------------------


def test_epoch_order_is_lexicographic():
    assert Epoch(1, U64_MAX) < Epoch(2, 0)
    assert Epoch(2, 0) < Epoch(2, 1)
    assert Epoch(3) > Epoch(2, U64_MAX)
    assert Epoch(5) == Epoch(5, 0)
    assert Epoch(5) <= Epoch(5, 0) <= Epoch(5)
    assert max([Epoch(1, 9), Epoch(2), Epoch(1, 10)]) == Epoch(2)


@given(epochs, epochs)
def test_epoch_order_is_total_and_matches_tuples(a, b):
    pair_a, pair_b = (a.major, a.minor), (b.major, b.minor)
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a < b) == (pair_a < pair_b)
    assert (a > b) == (pair_a > pair_b)
    assert (a <= b) == (pair_a <= pair_b)
    assert (a >= b) == (pair_a >= pair_b)
    assert (a == b) == (pair_a == pair_b)


@given(u64)
def test_controller_epoch_serialises_to_its_integer(value):
    assert Epoch(value).to_json() == value
    assert str(Epoch(value)) == str(value)


def test_two_part_epoch_serialises_to_a_string():
    assert Epoch(1700000000000, 0xAB).to_json() == "1700000000000.00000000000000ab"


@pytest.mark.parametrize(
    ("major", "minor"),
    [(-1, 0), (U64_MAX + 1, 0), (0, -1), (0, U64_MAX + 1), (2**80, 2**80)],
)
def test_epoch_outside_64_bits_is_a_local_error(major, minor):
    with pytest.raises(LocalProtocolError):
        Epoch(major, minor)


def test_epoch_at_the_64_bit_limits_is_valid():
    assert Epoch(U64_MAX, U64_MAX).minor == U64_MAX
    assert Epoch(0, 0) == Epoch(0)
