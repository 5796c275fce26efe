"""Failure mode: bad input on a mesh port. What strangers send (garbage, unknown frame types, oversize length
prefixes, bad hellos: another cluster, version, index, epoch or mode; half a hello, silence), overlapping bad
connections and bursts of connects: each connection is refused or closed within the handshake timeout, and the
ready mesh is not disturbed.

Variants:
- virtual time (``tests.harness.virtual``, under ``autojump_clock``): every kind of bad input, each with the refusal
  it gets and the exact instant of the close; all of them at once to every daemon; simultaneous connects;
- real processes (``tests.harness.procs``): garbage, oversize and silent clients over real TCP, which must end in an
  orderly close (EOF, not a reset) with the daemon's hello and refusal delivered.

Bad configuration is in test_config.py.
"""

from __future__ import annotations

import itertools
import struct

import pytest
import trio

from meshd.core.address import Address
from meshd.core.wire import (
    MAX_FRAME_SIZE,
    Challenge,
    Epoch,
    FrameDecoder,
    Heartbeat,
    Hello,
    Refuse,
    RefuseReason,
    decode_all,
    encode,
)
from tests.harness.procs import DISTURBANCES, HOST, Harness, is_ready, watching
from tests.harness.virtual import (
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
    virtual_time,
    wait_until,
)

# ----- virtual time


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


@virtual_time
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


@virtual_time
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


@virtual_time
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


# ----- real processes


async def _probe_mesh_port(host: str, port: int, payload: bytes, bound: float) -> tuple[bytes, str, float]:
    """Connect, send ``payload``, read until the daemon closes; (bytes received, how it ended, seconds)."""
    stream = await trio.open_tcp_stream(host, port)
    started = trio.current_time()
    received = bytearray()
    ending = "still open"
    async with stream:
        if payload:
            await stream.send_all(payload)
        with trio.move_on_after(bound):
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
                ending = "eof"
            except trio.BrokenResourceError as exc:
                ending = f"reset ({exc.__cause__!r})"
    return bytes(received), ending, trio.current_time() - started


INTRUDERS = {
    # A well-formed length prefix around a frame type meshd does not know.
    "garbage": b"\x00\x00\x00\x08\x09garbage!",
    # One byte more than the largest frame meshd accepts, followed by a little of the promised body.
    "oversize": (MAX_FRAME_SIZE + 1).to_bytes(4, "big") + b"\x01" + b"x" * 64,
    # Connects and says nothing at all.
    "silent": b"",
}


async def test_garbage_oversize_and_silent_clients_disturb_nothing(harness: Harness):
    """Over real TCP, against a cluster with a secret: the daemon's challenge and refusal arrive and the connection
    ends in EOF; the daemon discloses nothing of its state (no hello; the refusal carries epoch 0). Which input gets
    which refusal, and when each is closed, is decided by
    test_bad_input_is_closed_within_the_handshake_timeout_and_disturbs_nothing."""
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    bound = 10.0
    results: dict[tuple[int, str], tuple[bytes, str, float]] = {}

    async def intrude(daemon, kind: str) -> None:
        results[daemon.index, kind] = await _probe_mesh_port(
            HOST, cluster.mesh_ports[daemon.index], INTRUDERS[kind], bound
        )

    async with watching(harness, daemons) as watches:
        async with trio.open_nursery() as nursery:
            for daemon in daemons:
                for kind in INTRUDERS:
                    nursery.start_soon(intrude, daemon, kind)
        await trio.sleep(3 * cluster.timeouts["heartbeat_timeout"])
        statuses = await harness.statuses(daemons)

    for (index, kind), (data, ending, took) in sorted(results.items()):
        where = f"{kind} client on daemon {index}'s mesh port"
        harness.check(ending == "eof", f"{where}: connection {ending} after {took:.2f}s, expected EOF within {bound}s")
        frames = decode_all(data)
        harness.check(
            frames and isinstance(frames[0], Challenge) and not frames[0].dialer,
            f"{where}: the daemon did not open with its challenge: {frames}",
        )
        if kind == "silent":
            harness.check(len(frames) == 1, f"{where}: unexpected frames {frames}")
        else:
            harness.check(
                len(frames) == 2
                and isinstance(frames[1], Refuse)
                and frames[1].reason is RefuseReason.PROTOCOL_ERROR
                and frames[1].epoch == Epoch(0),
                f"{where}: expected a PROTOCOL_ERROR refusal disclosing no epoch after the challenge, got {frames}",
            )
    closing = {kind: max(results[i, kind][2] for i in range(cluster.size)) for kind in INTRUDERS}
    print("\nintruders closed after at most " + ", ".join(f"{kind} {took:.3f}s" for kind, took in closing.items()))
    for watch in watches:
        bad = watch.of(*DISTURBANCES)
        harness.check(not bad, f"intruders disturbed the mesh at {watch.address}: {bad}")
    for daemon, status in zip(daemons, statuses, strict=True):
        harness.check(is_ready(status, 1), f"{daemon.name} left ready: {status}")
        for peer in status["peers"]:
            harness.check(peer["connects"] == 1, f"{daemon.name}: link to {peer['index']} reconnected: {peer}")
