"""Data connections, unit level: the DATA hello on the wire, the acceptor's verdict, and reads that stop exactly
where meshd's bytes end (the worker's first byte is never taken)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshd.connection import LinkFailure
from meshd.core.data import data_hello, dials_data, judge_data
from meshd.core.hello import Identity
from meshd.core.wire import (
    ACCEPT_SIZE,
    DATA_HELLO_SIZE,
    Accept,
    DataHello,
    Epoch,
    FrameDecoder,
    Refuse,
    RefuseReason,
    encode,
)
from meshd.data import receive_exactly

ME = Identity("c", 1, 3, Epoch(7), 0xB1)
DIALER = Identity("c", 0, 3, Epoch(7), 0xA0)


def test_the_lower_index_dials_once_per_pair():
    assert [dials_data(0, 1), dials_data(1, 0), dials_data(1, 2), dials_data(2, 1)] == [True, False, True, False]


def test_a_data_hello_and_an_accept_have_fixed_sizes_and_read_back():
    hello = data_hello(DIALER, 1, ME.incarnation)
    assert len(encode(hello)) == DATA_HELLO_SIZE and len(encode(Accept())) == ACCEPT_SIZE
    decoder = FrameDecoder()
    decoder.receive_data(encode(hello))
    assert decoder.next_frame() == hello == DataHello(0, 1, Epoch(7), 0xA0, 0xB1)


def test_the_member_of_our_generation_is_accepted():
    assert judge_data(data_hello(DIALER, 1, ME.incarnation), ME, holder=DIALER.incarnation) == Accept()


@pytest.mark.parametrize(
    ("hello", "holder", "reason"),
    [
        (DataHello(0, 1, Epoch(6), 0xA0, 0xB1), 0xA0, RefuseReason.STALE_EPOCH),  # another generation, older
        (DataHello(0, 1, Epoch(8), 0xA0, 0xB1), 0xA0, RefuseReason.BEHIND),  # or newer: never across generations
        (DataHello(0, 1, Epoch(7), 0xA0, 0xB2), 0xA0, RefuseReason.RETIRED),  # for a previous incarnation of ours
        (DataHello(0, 1, Epoch(7), 0xA9, 0xB1), 0xA0, RefuseReason.RETIRED),  # a stale incarnation of the dialer
        (DataHello(0, 1, Epoch(7), 0xA0, 0xB1), None, RefuseReason.RETIRED),  # no control link to it yet
        (DataHello(2, 1, Epoch(7), 0xC0, 0xB1), 0xC0, RefuseReason.WRONG_INDEX),  # the higher index never dials
        (DataHello(0, 2, Epoch(7), 0xA0, 0xB1), 0xA0, RefuseReason.WRONG_INDEX),  # meant for someone else
    ],
    ids=["older", "newer", "not-us", "stale-dialer", "no-link", "wrong-direction", "wrong-target"],
)
def test_anything_else_is_refused(hello, holder, reason):
    answer = judge_data(hello, ME, holder)
    assert isinstance(answer, Refuse) and answer.reason is reason


async def test_exact_reads_leave_the_workers_bytes_in_the_socket():
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(encode(Accept()) + b"worker bytes")
    assert await receive_exactly(ours, ACCEPT_SIZE) == encode(Accept())
    assert await ours.receive_some(100) == b"worker bytes"


async def test_an_early_end_of_stream_is_a_link_failure():
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"\x00\x00")
    await theirs.aclose()
    with pytest.raises(LinkFailure):
        await receive_exactly(ours, ACCEPT_SIZE)
