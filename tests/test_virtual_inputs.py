"""Real daemons on the in-memory network, in virtual time: what strangers send them (garbage, wrong hellos,
overlapping bad connections, bursts of connects) is closed within the handshake timeout and disturbs nothing."""

from __future__ import annotations

import itertools
import struct

import pytest
import trio

from meshd.core.address import Address
from meshd.core.wire import MAX_FRAME_SIZE, Epoch, FrameDecoder, Heartbeat, Hello, Refuse, RefuseReason, encode
from tests.virtual import (
    CLUSTER,
    EPS,
    FORM_WITHIN,
    TracingNetwork,
    address,
    all_ready,
    link_snapshot,
    make_config,
    make_daemon,
    read_until_eof,
    start_mesh,
    start_node,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("wall_clock_guard")


def bad_inputs() -> list[object]:
    other_cluster = encode(Hello("other", 1, 0, Epoch(1), 0xE1))
    return [
        pytest.param(b"GET / HTTP/1.1\r\nHost: meshd\r\n\r\n", RefuseReason.PROTOCOL_ERROR, id="http"),
        pytest.param(b"\x00\x00\x00\x04\xee\x01\x02\x03", RefuseReason.PROTOCOL_ERROR, id="unknown-frame-type"),
        pytest.param(struct.pack(">I", MAX_FRAME_SIZE + 1), RefuseReason.PROTOCOL_ERROR, id="oversize-length"),
        pytest.param(encode(Heartbeat()), RefuseReason.PROTOCOL_ERROR, id="heartbeat-before-hello"),
        pytest.param(other_cluster, RefuseReason.WRONG_CLUSTER, id="other-cluster"),
        pytest.param(encode(Hello(CLUSTER, 1, 0, Epoch(1), 0xE1, version=9)), RefuseReason.BAD_VERSION, id="version"),
        pytest.param(encode(Hello(CLUSTER, 7, 0, Epoch(1), 0xE1)), RefuseReason.WRONG_INDEX, id="unknown-index"),
        pytest.param(encode(Hello(CLUSTER, 0, 0, Epoch(1), 0xE1)), RefuseReason.WRONG_INDEX, id="own-index"),
        pytest.param(encode(Hello(CLUSTER, 1, 0, Epoch(0), 0xE1)), RefuseReason.STALE_EPOCH, id="stale-epoch"),
        pytest.param(encode(Hello(CLUSTER, 1, 0, Epoch(1), 0xE1, auto=True)), RefuseReason.WRONG_MODE, id="auto-mode"),
        pytest.param(encode(Hello(CLUSTER, 1, 0, Epoch(1), 0xE1))[:20], None, id="half-hello"),
        pytest.param(b"", None, id="silence"),
    ]


@pytest.mark.parametrize(("data", "refusal"), bad_inputs())
async def test_bad_input_is_closed_within_the_handshake_timeout_and_disturbs_nothing(autojump_clock, data, refusal):
    net = TracingNetwork()
    config = make_config(3, handshake=1.0)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        events_before = [len(node.events) for node in nodes]
        before = link_snapshot(nodes)
        stream = await net.for_node(Address("10.0.66.6", 4242)).connect(address(0))
        connected_at = trio.current_time()
        if data:
            await stream.send_all(data)
        decoder = FrameDecoder()
        with trio.fail_after(config.timeouts.handshake + EPS):
            frames = await read_until_eof(stream, decoder)
        closed_at = trio.current_time()
        # The daemon always says hello first; garbage and bad hellos get a refusal naming why, then the close.
        assert isinstance(frames[0], Hello) and frames[0].sender == 0
        if refusal is None:
            assert frames[1:] == []
            assert closed_at == pytest.approx(connected_at + config.timeouts.handshake, abs=EPS)
        else:
            [refuse] = frames[1:]
            assert isinstance(refuse, Refuse) and refuse.reason is refusal
            assert closed_at == pytest.approx(connected_at, abs=EPS)
        await stream.aclose()
        await trio.sleep(2 * config.timeouts.heartbeat_timeout)
        for node, count in zip(nodes, events_before, strict=True):
            assert node.events[count:] == [], f"node {node.index} saw {node.events[count:]}"
        assert all_ready(nodes)
        assert link_snapshot(nodes) == before
        nursery.cancel_scope.cancel()


async def test_overlapping_bad_connections_to_every_daemon_disturb_nothing(autojump_clock):
    """Every kind of bad input, to every daemon, all open at once: each is closed in time, the mesh stays ready."""
    net = TracingNetwork()
    config = make_config(3, handshake=1.0)
    inputs = [param.values[0] for param in bad_inputs()]  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        events_before = [len(node.events) for node in nodes]
        before = link_snapshot(nodes)
        open_for: list[float] = []

        async def bad_client(target: int, data: bytes) -> None:
            stream = await net.for_node(Address("10.0.66.6", 4242)).connect(address(target))
            connected_at = trio.current_time()
            if data:
                await stream.send_all(data)
            await read_until_eof(stream, FrameDecoder())
            open_for.append(trio.current_time() - connected_at)
            await stream.aclose()

        async with trio.open_nursery() as clients:
            for target, data in itertools.product(range(3), inputs):
                clients.start_soon(bad_client, target, data)
        assert len(open_for) == 3 * len(inputs)
        assert max(open_for) <= config.timeouts.handshake + EPS
        await trio.sleep(2 * config.timeouts.heartbeat_timeout)
        for node, count in zip(nodes, events_before, strict=True):
            assert node.events[count:] == []
        assert link_snapshot(nodes) == before
        nursery.cancel_scope.cancel()


async def test_simultaneous_connects_to_a_listening_daemon_are_accepted(autojump_clock):
    """A listening host queues simultaneous connections (the listen backlog); none is refused.

    (The in-memory listener once handed a connection only to an accept() already waiting, so the second of two
    connects in one scheduling step was refused by a listening daemon.)
    """
    net = TracingNetwork()
    config = make_config(2)
    async with trio.open_nursery() as nursery:
        await start_node(nursery, make_daemon(net, config, 0))
        await trio.sleep(0.5)
        refused: list[str] = []

        async def client(number: int) -> None:
            try:
                stream = await net.for_node(Address("10.0.66.6", 5000 + number)).connect(address(0))
            except ConnectionRefusedError as exc:
                refused.append(f"client {number}: {exc.strerror}")
            else:
                await stream.aclose()

        async with trio.open_nursery() as clients:
            for number in range(3):
                clients.start_soon(client, number)
        assert refused == []
        nursery.cancel_scope.cancel()
