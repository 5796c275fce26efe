"""Failure mode: a daemon is stopped in order. SIGTERM or SIGINT (or ``Daemon.stop``) ends it with exit 0: every
link says goodbye, its peers see it leave (cause ``goodbye``) and do not link it again while it shuts down, and a
stop that comes while it is still binding its port (busy, or just listening) ends it in order too.

Variants:
- virtual time (``tests.harness.virtual``, under ``autojump_clock``): the goodbye reaches the peers at the instant
  of the stop, and every connection of the stopped daemon is closed;
- real processes (``tests.harness.procs``): the signals themselves, exit code 0, the status row that says the peer
  left, and SIGTERM while waiting for a busy mesh port or right after the port listens.

A port that stays busy for ``timeouts.bind`` (exit 1) is in test_cli.py.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.connection import PARTING_TIMEOUT
from meshd.core.status import MeshState
from meshd.daemon import STOP_GRACE
from meshd.errors import ExitCode
from tests.harness.procs import HOST, Harness, peer_row, watching
from tests.harness.virtual import (
    EPS,
    FORM_WITHIN,
    TracingNetwork,
    all_ready,
    make_config,
    start_mesh,
    virtual_time,
    wait_until,
)

# ----- virtual time


@virtual_time
async def test_orderly_stop_returns_0_and_peers_see_it_leave(autojump_clock):
    net = TracingNetwork()
    config = make_config(3)
    async with trio.open_nursery() as nursery:
        nodes = await start_mesh(nursery, net, config)
        await wait_until(lambda: all_ready(nodes), FORM_WITHIN)
        await trio.sleep(0.5)
        stop_at = trio.current_time()
        await nodes[2].daemon.stop("test")
        with trio.fail_after(STOP_GRACE + PARTING_TIMEOUT):
            await nodes[2].finished.wait()
        assert nodes[2].exit_code == ExitCode.OK
        assert nodes[2].state is MeshState.STOPPING
        assert [event["event"] for _, event in nodes[2].events][-1] == "stopping"
        await wait_until(lambda: all(node.state is MeshState.DEGRADED for node in nodes[:2]), 0.1)
        for node in nodes[:2]:
            [(down_at, event)] = node.events_of("link_down", peer=2)
            assert event["cause"] == "goodbye", event
            assert "test" in event["reason"]
            assert down_at == pytest.approx(stop_at, abs=EPS)
        # Every connection the stopped daemon held is closed.
        mine = nodes[2].daemon.mesh_address
        assert not [c for c in net.connections if c.open and mine in (c.source, c.target)]
        nursery.cancel_scope.cancel()


# ----- real processes: a stop signal


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


# ----- real processes: a stop while binding


async def test_sigterm_while_waiting_for_a_busy_mesh_port_exits_0(harness: Harness):
    cluster = harness.cluster(2, name="busy", bind=30.0)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((HOST, cluster.mesh_ports[0]))
        holder.listen()
        daemon = harness.start(cluster, 0, epoch=1)

        async def in_its_event_loop() -> tuple[bool, Any]:
            """trio runs (its epoll descriptor is open): the daemon is past its start, retrying the port."""
            harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} with its port busy")
            try:
                links = [os.readlink(entry) for entry in Path(f"/proc/{daemon.pid}/fd").iterdir()]
            except OSError as exc:
                return False, repr(exc)
            return "anon_inode:[eventpoll]" in links, links

        await harness.eventually(in_its_event_loop, "the daemon to run its event loop")
        await trio.sleep(0.5)
        harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} with its port busy")
        daemon.signal(signal.SIGTERM)
        code = await harness.wait_exit(daemon, timeout=5.0)
    harness.check(code == 0, f"SIGTERM while waiting for a busy mesh port: exit {code}, expected 0")
    harness.check("Traceback" not in daemon.stderr(), "SIGTERM while waiting for a port printed a traceback")


async def test_sigterm_as_soon_as_the_mesh_port_listens_exits_0(harness: Harness):
    """``meshd run`` listens before it loads trio: a SIGTERM in that window is noted and still stops it in order."""
    cluster = harness.cluster(2, name="early")
    daemon = harness.start(cluster, 0, epoch=1)

    async def listening() -> tuple[bool, Any]:
        harness.check(daemon.returncode is None, f"the daemon exited {daemon.returncode} before it listened")
        try:
            stream = await trio.open_tcp_stream(HOST, cluster.mesh_ports[0])
        except OSError as exc:
            return False, repr(exc)
        await stream.aclose()
        return True, None

    await harness.eventually(listening, "the mesh port to accept a connection", interval=0.002)
    daemon.signal(signal.SIGTERM)
    code = await harness.wait_exit(daemon, timeout=5.0)
    harness.check(code == 0, f"SIGTERM right after the mesh port listened: exit {code}, expected 0")
    harness.check("Traceback" not in daemon.stderr(), "SIGTERM right after the listen printed a traceback")
