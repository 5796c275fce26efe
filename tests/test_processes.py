"""Real-process tests: ``python -m meshd`` daemons on loopback, driven through signals, sockets and the admin API."""

from __future__ import annotations

import json
import re
import signal
import socket
import time

import pytest
import trio

from meshd.core.address import Address
from meshd.core.wire import MAX_FRAME_SIZE, FrameDecoder, Hello, Refuse, RefuseReason
from tests.proc_harness import (
    HOST,
    Harness,
    free_ports,
    is_ready,
    peer_row,
    watching,
    write_config,
)

EXIT_FENCED = 75
# How long a mesh may take to settle after a fault heals before it must stay ready.
SETTLE = 1.0
# Event kinds that mean a ready mesh was disturbed.
DISTURBANCES = ("link_down", "degraded", "forming", "fenced", "peer_restarted", "stopping")


def assert_full_mesh(harness: Harness, daemons, statuses, epoch: int) -> None:
    """Every daemon is ready at ``epoch`` and sees every other daemon up, as the process that really runs it."""
    incarnations = {status["index"]: status["incarnation"] for status in statuses}
    for daemon, status in zip(daemons, statuses, strict=True):
        harness.check(is_ready(status, epoch), f"{daemon.name} is not ready at epoch {epoch}: {status}")
        harness.check(status["index"] == daemon.index, f"{daemon.name} reports index {status['index']}")
        seen = sorted(peer["index"] for peer in status["peers"])
        others = sorted(other.index for other in daemons if other is not daemon)
        harness.check(seen == others, f"{daemon.name} has peers {seen}, expected {others}")
        for peer in status["peers"]:
            harness.check(
                peer["incarnation"] == incarnations[peer["index"]],
                f"{daemon.name} links to incarnation {peer['incarnation']} of peer {peer['index']}, "
                f"which runs {incarnations[peer['index']]}",
            )


# ----- 1. forming


async def test_four_daemons_form_a_full_mesh(harness: Harness):
    cluster = harness.cluster(4)
    daemons = harness.start_all(cluster, epoch=1, extra_args=["--log-format", "json"])
    statuses = await harness.wait_ready(daemons, epoch=1)
    assert_full_mesh(harness, daemons, statuses, epoch=1)
    for daemon, status in zip(daemons, statuses, strict=True):
        for peer in status["peers"]:
            harness.check(peer["connects"] >= 1, f"{daemon.name}: peer row {peer} counts no connect")
        # --log-format json: every stderr line is one JSON object carrying the daemon's index.
        lines = daemon.stderr().splitlines()
        harness.check(lines, f"{daemon.name} logged nothing")
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                harness.fail(f"{daemon.name}: log line is not JSON: {line!r}")
            harness.check({"time", "level", "message", "index"} <= record.keys(), f"log record {record}")
            harness.check(record["index"] == daemon.index, f"{daemon.name} logged as index {record['index']}")


# ----- 2. a replacement at a newer epoch fences the old generation


async def test_replacement_at_newer_epoch_fences_the_survivors(harness: Harness):
    cluster = harness.cluster(4)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)

    victim = daemons[3]
    victim.signal(signal.SIGKILL)
    harness.check(await harness.wait_exit(victim) == -signal.SIGKILL, "kill -9 did not kill the daemon")
    replacement = harness.start(cluster, 3, epoch=2)

    survivors = daemons[:3]
    codes = [await harness.wait_exit(daemon) for daemon in survivors]
    harness.check(codes == [EXIT_FENCED] * 3, f"old-generation daemons exited {codes}, expected 75 each")
    for daemon in survivors:
        harness.check("fenced" in daemon.stderr(), f"{daemon.name} exited 75 without logging why")
    harness.check(replacement.returncode is None, f"the replacement exited {replacement.returncode}")
    before = await harness.status(replacement.admin)
    harness.check(before is not None and before["epoch"] == 2, f"replacement status {before}")

    restarted = [harness.start(cluster, index, epoch=2) for index in range(3)]
    generation = [*restarted, replacement]
    statuses = await harness.wait_ready(generation, epoch=2)
    assert_full_mesh(harness, generation, statuses, epoch=2)
    after = next(status for status in statuses if status["index"] == 3)
    harness.check(after["incarnation"] == before["incarnation"], "the replacement restarted during the episode")


# ----- 3. a stale daemon cannot disturb a ready mesh


async def test_stale_epoch_daemon_exits_75_and_the_mesh_stays_ready(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=3)
    await harness.wait_ready(daemons, epoch=3)

    # A leftover of generation 2 that believes it is index 2; its own mesh port differs (the live index 2 holds
    # the real one), everything else is the cluster's config.
    stale_mesh, stale_admin = free_ports(2)
    stale_ports = [*cluster.mesh_ports[:2], stale_mesh]
    stale_config = write_config(harness.tmp / "stale.toml", cluster.name, stale_ports, cluster.timeouts)

    async with watching(harness, daemons) as watches:
        started = time.monotonic()
        stale = harness.start(cluster, 2, epoch=2, config=stale_config, admin=Address(HOST, stale_admin))
        code = await harness.wait_exit(stale)
        took = time.monotonic() - started
        # Give any late consequence (a link dropped by mistake) time to show up in the event streams.
        await trio.sleep(3 * cluster.timeouts["heartbeat_timeout"])
        statuses = await harness.statuses(daemons)

    harness.check(code == EXIT_FENCED, f"stale daemon exited {code}, expected 75")
    harness.check("fenced" in stale.stderr(), "the stale daemon exited 75 without logging why")
    print(f"\nstale daemon fenced and exited {took:.2f}s after it was started")
    for watch in watches:
        harness.check(watch.snapshot["state"] == "ready", f"watch at {watch.address} began in {watch.snapshot}")
        bad = watch.of(*DISTURBANCES)
        harness.check(not bad, f"the ready mesh was disturbed at {watch.address}: {bad}; all events {watch.events}")
    for daemon, status in zip(daemons, statuses, strict=True):
        harness.check(is_ready(status, 3), f"{daemon.name} left ready: {status}")
        for peer in status["peers"]:
            harness.check(peer["connects"] == 1, f"{daemon.name}: link to {peer['index']} reconnected: {peer}")


# ----- 4. a frozen peer is detected by heartbeats


async def test_sigstop_peer_is_seen_down_within_heartbeat_timeout_then_recovers(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    frozen, survivors = daemons[2], daemons[:2]
    timeout = cluster.timeouts["heartbeat_timeout"]

    async with watching(harness, survivors) as watches:
        stopped_wall, stopped = time.time(), trio.current_time()
        frozen.signal(signal.SIGSTOP)

        async def probe():
            found = await harness.statuses(survivors)
            down = all(s is not None and peer_row(s, frozen.index)["state"] == "down" for s in found)
            return down, found

        found = await harness.eventually(probe, "the survivors to see the stopped daemon down", interval=0.02)
        seen_down = trio.current_time() - stopped
        for daemon, status in zip(survivors, found, strict=True):
            harness.check(status["state"] == "degraded", f"{daemon.name} is {status['state']}, expected degraded")

        frozen.signal(signal.SIGCONT)
        resumed = trio.current_time()
        await harness.wait_ready(daemons, epoch=1)
        recovered = trio.current_time() - resumed
        # Connections the survivors dialed during the freeze wait in the frozen daemon's backlog and may flap the
        # links for a moment after SIGCONT; after that the mesh must stay ready.
        await trio.sleep(SETTLE)
        marks = [len(watch.events) for watch in watches]
        await trio.sleep(3 * timeout)
        settled = await harness.statuses(daemons)

    for watch, mark in zip(watches, marks, strict=True):
        late = [event for event in watch.events[mark:] if event["event"] in DISTURBANCES]
        harness.check(not late, f"the mesh at {watch.address} did not settle after SIGCONT: {late}")
    for daemon, status in zip(daemons, settled, strict=True):
        harness.check(is_ready(status, 1), f"{daemon.name} did not stay ready after SIGCONT: {status}")
    detections = []
    for watch in watches:
        downs = [event for event in watch.of("link_down") if event["peer"] == frozen.index]
        harness.check(downs, f"no link_down event for peer {frozen.index} at {watch.address}: {watch.events}")
        harness.check("no heartbeat" in downs[0]["reason"], f"link went down for another reason: {downs[0]}")
        detections.append(downs[0]["time"] - stopped_wall)
    print(
        f"\nSIGSTOP detection (heartbeat_timeout {timeout}s): link_down events "
        f"{', '.join(f'{d:.3f}s' for d in detections)} after SIGSTOP; status showed down after {seen_down:.3f}s; "
        f"all ready {recovered:.3f}s after SIGCONT"
    )
    # Generous for a busy CI box, yet far below anything but heartbeat detection (no FIN or RST reaches the peers).
    bound = timeout + 5.0
    harness.check(max(detections) < bound, f"detection took {detections}, bound {bound}s")
    harness.check(seen_down < bound, f"status showed the peer down only after {seen_down:.3f}s, bound {bound}s")


# ----- 5. garbage on a mesh port


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


def _frames(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    decoder.receive_eof()
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


INTRUDERS = {
    # A well-formed length prefix around a frame type meshd does not know.
    "garbage": b"\x00\x00\x00\x08\x09garbage!",
    # One byte more than the largest frame meshd accepts, followed by a little of the promised body.
    "oversize": (MAX_FRAME_SIZE + 1).to_bytes(4, "big") + b"\x01" + b"x" * 64,
    # Connects and says nothing at all.
    "silent": b"",
}


async def test_garbage_oversize_and_silent_clients_disturb_nothing(harness: Harness):
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
        frames = _frames(data)
        harness.check(
            frames and isinstance(frames[0], Hello) and frames[0].sender == index and frames[0].cluster == cluster.name,
            f"{where}: the daemon did not open with its hello: {frames}",
        )
        if kind == "silent":
            harness.check(len(frames) == 1, f"{where}: unexpected frames {frames}")
        else:
            harness.check(
                len(frames) == 2 and isinstance(frames[1], Refuse) and frames[1].reason is RefuseReason.PROTOCOL_ERROR,
                f"{where}: expected a PROTOCOL_ERROR refusal after the hello, got {frames}",
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


# ----- 6. configuration errors


@pytest.mark.parametrize(
    ("key", "timeouts", "extra", "args"),
    [
        pytest.param("timeouts.connect", {"connect": "1"}, "", [], id="string-for-seconds"),
        pytest.param("timeouts.conect", {"conect": 1.0}, "", [], id="unknown-key"),
        pytest.param("surprise", {}, "[surprise]\nanswer = 42\n", [], id="unknown-table"),
        pytest.param(
            "timeouts.heartbeat_timeout", {"heartbeat_interval": 1.0, "heartbeat_timeout": 0.5}, "", [], id="cross-key"
        ),
        pytest.param("--index", {}, "", ["--index", "7"], id="index-out-of-range"),
    ],
)
async def test_bad_config_exits_2_naming_the_key(harness: Harness, key, timeouts, extra, args):
    path = write_config(harness.tmp / "bad.toml", "bad", free_ports(2), timeouts, extra)
    (admin_port,) = free_ports(1)
    proc = harness.spawn(
        "bad-config",
        ["run", "--config", str(path), "--index", "0", "--epoch", "1", "--admin", f"{HOST}:{admin_port}", *args],
    )
    code = await harness.wait_exit(proc)
    stderr = proc.stderr()
    harness.check(code == 2, f"a bad config exited {code}, expected 2")
    harness.check(re.search(rf"configuration error: {re.escape(key)}\b", stderr), f"stderr does not name {key!r}")
    harness.check("Traceback" not in stderr, "a configuration error printed a traceback")


# ----- 7. a busy port


@pytest.mark.parametrize("which", ["mesh port", "admin websocket"])
async def test_busy_port_exits_1_naming_the_port(harness: Harness, which):
    """Exit 1 with a one-line error naming the port (not an uncaught exception that happens to exit 1 too)."""
    cluster = harness.cluster(2, bind=0.5)
    busy = cluster.mesh_ports[0] if which == "mesh port" else cluster.admin_ports[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, busy))
        holder.listen()
        started = time.monotonic()
        daemon = harness.start(cluster, 0, epoch=1)
        code = await harness.wait_exit(daemon)
        took = time.monotonic() - started
    stderr = daemon.stderr()
    harness.check(code == 1, f"a daemon whose {which} is busy exited {code}, expected 1")
    harness.check(f"{HOST}:{busy}" in stderr and which in stderr, f"stderr does not name the busy {which} {busy}")
    harness.check(
        "Traceback" not in stderr,
        "a busy port ended in an uncaught exception (traceback on stderr) instead of a clean error message",
    )
    harness.check(took >= 0.4, f"gave up after {took:.2f}s, before the bind period (0.5s) was over")
    print(f"\nbusy {which}: exit 1 after {took:.2f}s with timeouts.bind = 0.5")


# ----- 8. orderly stop


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_exits_0_and_peers_see_peer_left(harness: Harness, signum):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    leaving, stayers = daemons[2], daemons[:2]

    async with watching(harness, stayers) as watches:
        leaving.signal(signum)
        code = await harness.wait_exit(leaving)

        async def probe():
            found = await harness.statuses(stayers)
            return all(s is not None and peer_row(s, leaving.index)["state"] == "down" for s in found), found

        statuses = await harness.eventually(probe, "the stayers to see the stopped daemon down")

    harness.check(code == 0, f"{signal.Signals(signum).name} exited {code}, expected 0")
    for daemon, status in zip(stayers, statuses, strict=True):
        harness.check(status["state"] == "degraded", f"{daemon.name} is {status['state']}, expected degraded")
    for watch in watches:
        downs = [event for event in watch.of("link_down") if event["peer"] == leaving.index]
        harness.check(downs, f"no link_down for peer {leaving.index} at {watch.address}: {watch.events}")
        said = f"peer left: received {signal.Signals(signum).name}"
        harness.check(
            downs[0]["cause"] == "goodbye" and downs[0]["reason"] == said,
            f"link_down at {watch.address} is {downs[0]!r}",
        )


async def test_status_last_error_shows_peer_left_after_sigterm(harness: Harness):
    """The contract: after a peer's orderly stop, its row in ``status`` says why the link went down."""
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    leaving, stayers = daemons[2], daemons[:2]
    leaving.signal(signal.SIGTERM)
    harness.check(await harness.wait_exit(leaving) == 0, "SIGTERM did not exit 0")

    async def probe():
        found = await harness.statuses(stayers)
        return all(s is not None and peer_row(s, leaving.index)["state"] == "down" for s in found), found

    await harness.eventually(probe, "the stayers to see the stopped daemon down")
    # An operator looks a moment later; by then the stayers have tried to dial the departed peer again.
    await trio.sleep(1.0)
    for daemon, status in zip(stayers, await harness.statuses(stayers), strict=True):
        row = peer_row(status, leaving.index)
        harness.check(
            row["state"] == "down" and row["last_cause"] == "goodbye",
            f"{daemon.name}'s status row for the SIGTERMed peer does not say it left: {row}",
        )


async def test_stopping_daemon_is_not_linked_again_after_its_goodbye(harness: Harness):
    """Smoke test over real sockets: after a peer's goodbye no stayer reports a link_up to it while it shuts down.

    The rule itself (a stopping daemon answers every hello with GOODBYE, and a GOODBYE never links) is decided,
    with no race, by tests/test_mesh_model.py::test_a_stop_says_goodbye_to_every_later_hello_and_the_peer_does_not_link.
    """
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    leaving, stayers = daemons[0], daemons[1:]
    async with watching(harness, stayers) as watches:
        leaving.signal(signal.SIGTERM)
        harness.check(await harness.wait_exit(leaving) == 0, f"{leaving.name}: SIGTERM did not exit 0")
    for watch in watches:
        events = [event for event in watch.events if event.get("peer") == leaving.index]
        goodbye = next((n for n, event in enumerate(events) if event.get("cause") == "goodbye"), None)
        harness.check(goodbye is not None, f"no link_down of cause goodbye at {watch.address}: {watch.events}")
        again = [event for event in events[goodbye:] if event["event"] == "link_up"]
        harness.check(not again, f"{watch.address} linked the stopping daemon again after its goodbye: {again}")


# ----- 9. meshd status


async def test_status_cli_json_table_and_unreachable(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)
    address = cluster.admin(0)

    as_json = harness.spawn("status-json", ["status", "--admin", str(address), "--json"])
    harness.check(await harness.wait_exit(as_json) == 0, "meshd status --json did not exit 0")
    lines = as_json.stdout().splitlines()
    harness.check(len(lines) == 1, f"meshd status --json printed {len(lines)} lines, expected one JSON object")
    status = json.loads(lines[0])
    types = {"index": int, "epoch": int, "incarnation": str, "state": str, "peers": list}
    for name, kind in types.items():
        harness.check(name in status, f"status --json lacks {name!r}: {status}")
        harness.check(type(status[name]) is kind, f"status field {name} = {status[name]!r} is not {kind.__name__}")
    harness.check(status["index"] == 0 and status["epoch"] == 1, f"status of the wrong daemon: {status}")
    harness.check(re.fullmatch(r"[0-9a-f]{16}", status["incarnation"]), f"incarnation {status['incarnation']!r}")
    harness.check(status["state"] == "ready", f"state {status['state']!r}")
    harness.check(len(status["peers"]) == cluster.size - 1, f"peers {status['peers']}")
    peer_types = {
        "index": (int,),
        "address": (str,),
        "state": (str,),
        "epoch": (int, type(None)),
        "since": (float, int),
        "connects": (int,),
        "failures": (int,),
        "last_error": (str, type(None)),
    }
    for peer in status["peers"]:
        for name, kinds in peer_types.items():
            harness.check(name in peer, f"peer row lacks {name!r}: {peer}")
            harness.check(type(peer[name]) in kinds, f"peer field {name} = {peer[name]!r} has the wrong type")
        harness.check(peer["state"] in ("up", "down"), f"peer state {peer['state']!r}")
        harness.check(peer["address"] == f"{HOST}:{cluster.mesh_ports[peer['index']]}", f"peer address {peer}")
        harness.check(peer["state"] == "up" and peer["epoch"] == 1, f"peer row {peer}")
        harness.check(peer["since"] > 0 and peer["connects"] >= 1 and peer["failures"] >= 0, f"peer row {peer}")

    table = harness.spawn("status-table", ["status", "--admin", str(address)])
    harness.check(await harness.wait_exit(table) == 0, "meshd status did not exit 0")
    text = table.stdout()
    harness.check("ready" in text and "PEER" in text, f"status table lacks its header or state:\n{text}")
    for index in (1, 2):
        harness.check(f"{HOST}:{cluster.mesh_ports[index]}" in text, f"status table lacks peer {index}:\n{text}")

    (unused,) = free_ports(1)
    nobody = harness.spawn("status-unreachable", ["status", "--admin", f"{HOST}:{unused}"])
    code = await harness.wait_exit(nobody)
    stderr = nobody.stderr()
    harness.check(code == 1, f"meshd status against nothing exited {code}, expected 1")
    harness.check(f"{HOST}:{unused}" in stderr, f"the unreachable address is not named:\n{stderr}")
    harness.check("Traceback" not in stderr, "an unreachable daemon printed a traceback")


# ----- 10. meshd watch


async def test_watch_cli_prints_events_as_they_happen(harness: Harness):
    cluster = harness.cluster(3)
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)

    watcher = harness.spawn("watch", ["watch", "--admin", str(cluster.admin(0))], pipe_stdout=True)
    # The snapshot comes first, as a status table: once it is printed, the watcher is subscribed.
    await harness.read_line(watcher, lambda line: line.startswith("meshd index 0 "), "snapshot")
    victim = daemons[2]
    killed = trio.current_time()
    victim.signal(signal.SIGKILL)
    line = await harness.read_line(watcher, lambda line: " link_down " in line, "link_down")
    took = trio.current_time() - killed
    harness.check("peer=2" in line, f"link_down line names another peer: {line!r}")
    print(f"\nmeshd watch printed link_down {took:.3f}s after kill -9: {line.strip()}")

    watcher.signal(signal.SIGINT)
    code = await harness.wait_exit(watcher)
    harness.check(code == 0, f"meshd watch exited {code} on SIGINT, expected 0")
