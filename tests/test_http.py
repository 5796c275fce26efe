"""The HTTP endpoint (``[http] listen``): probes and Prometheus metrics.

- The metrics they serve, without I/O, are in test_metrics.py (whose parser and fake daemon this file uses).
- The answers without sockets (``meshd.http.answer``, ``readiness``) and the server over an in-memory stream: 404,
  405, an oversize head (431), garbage (400), a client that says nothing.
- Real daemons (``tests.harness.procs``): ``/livez`` answers while the loop runs and not while the process is
  stopped; ``/readyz`` is 503 while the mesh forms and 200 once ready; with an attached worker it stays 503 until
  the worker runs; ``/metrics`` scraped and parsed (state, links, epoch), then a peer killed: link failures
  counted, and once it is back a recovery observation; beyond HTTP_CLIENTS connections a new one is closed unheard;
  a busy HTTP port fails the start (exit 1) as a busy admin port does; beyond loopback a warning is logged.
- The config key: strict like the rest.
"""

from __future__ import annotations

import json
import signal
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from meshd import config
from meshd.core.address import Address
from meshd.core.status import (
    MeshState,
    WorkerState,
    WorkerStatus,
)
from meshd.errors import ConfigError
from meshd.http import HTTP_CLIENTS, MAX_REQUEST_HEAD, RECEIVE_BYTES, REQUEST_TIMEOUT, answer, readiness, serve_client
from meshd.metrics import MeshMetrics
from tests.harness.procs import DEADLINE, HOST, STATUS_TIMEOUT, Cluster, Daemon, Harness, free_ports, write_config
from tests.test_metrics import FakeDaemon, Samples, parse, value
from tests.test_worker import Workers

# What Prometheus (2.x and 3.x) sends by default.
PROMETHEUS_ACCEPT = (
    b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# ----- helpers


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(port: int, path: str, method: str = "GET", timeout: float = STATUS_TIMEOUT) -> Answer:
    """One request to a daemon's HTTP endpoint, bounded by ``timeout`` (h11 on the client side too)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method=method, target=path, headers=[("Host", "meshd")])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            response, body = None, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    headers = {name.decode().lower(): value.decode() for name, value in response.headers}
                    return Answer(response.status_code, headers, body)


async def scrape(port: int) -> Samples:
    answered = await http(port, "/metrics")
    assert answered.status == 200, answered
    assert answered.headers["content-type"].startswith("text/plain; version=0.0.4"), answered.headers
    return parse(answered.body.decode())


def http_config(harness: Harness, cluster: Cluster, index: int, port: int, extra: str = "") -> Path:
    """``cluster``'s config for slot ``index`` with ``[http] listen`` on ``port`` (one file per daemon)."""
    table = f'[http]\nlisten = "{HOST}:{port}"\n'
    path = harness.tmp / f"http-{cluster.name}-{index}.toml"
    return write_config(path, cluster.name, cluster.mesh_ports, cluster.timeouts, table + extra)


def start(harness: Harness, cluster: Cluster, index: int, port: int, extra: str = "") -> Daemon:
    return harness.start(cluster, index, 1, config=http_config(harness, cluster, index, port, extra))


async def answering(harness: Harness, daemon: Daemon, port: int, path: str, status: int) -> Answer:
    """Wait until ``path`` answers ``status`` (the port may not listen yet); the answer."""

    async def probe() -> tuple[bool, Any]:
        if daemon.returncode is not None:
            harness.fail(f"{daemon.name} exited with {daemon.returncode}")
        try:
            answered = await http(port, path)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            return False, exc  # not listening yet, or every place is still held: closed unheard
        return answered.status == status, answered

    return await harness.eventually(probe, f"{path} of {daemon.name} to answer {status}")


# ----- the answers and the server, without sockets


def test_answers_by_path_and_method():
    daemon = FakeDaemon()
    metrics = MeshMetrics(daemon.status, worker=False)
    assert answer(b"GET", b"/livez", metrics).status == 200
    assert answer(b"GET", b"/nowhere", metrics).status == 404
    refused = answer(b"POST", b"/metrics", metrics)
    assert (refused.status, refused.headers) == (405, (("Allow", "GET"),))
    assert answer(b"HEAD", b"/readyz", metrics).status == 405
    readyz = answer(b"GET", b"/readyz?verbose=1", metrics)
    assert (readyz.status, json.loads(readyz.body)) == (
        503,
        {"ready": False, "state": "forming", "epoch": 5, "worker": None},
    )
    scraped = answer(b"GET", b"/metrics", metrics)
    assert scraped.status == 200 and scraped.content_type.startswith("text/plain; version=0.0.4")
    assert value(parse(scraped.body.decode()), "meshd_mesh_state", state="forming") == 1


def test_openmetrics_when_the_scraper_asks_for_it():
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    scraped = answer(b"GET", b"/metrics", metrics, PROMETHEUS_ACCEPT)
    assert scraped.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert scraped.body.endswith(b"# EOF\n")
    families = {family.name: family for family in parse_openmetrics(scraped.body.decode())}
    assert families["meshd_recovery_seconds"].type == "histogram"
    assert families["meshd_link_failures"].type == "counter"


def test_readiness_waits_for_the_worker_when_one_is_configured():
    ready = FakeDaemon(MeshState.READY).current
    assert readiness(ready, worker=False)[0]
    assert readiness(ready, worker=True) == (False, {"ready": False, "state": "ready", "epoch": 5, "worker": None})
    running = attrs.evolve(ready, worker=WorkerStatus(1, WorkerState.RUNNING))
    assert readiness(running, worker=True) == (True, {"ready": True, "state": "ready", "epoch": 5, "worker": "running"})
    assert not readiness(attrs.evolve(running, state=MeshState.DEGRADED), worker=True)[0]


async def exchange(data: bytes) -> bytes:
    """Serve one in-memory connection on which a client wrote ``data`` and half-closed; everything it got back."""
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    client, server = trio.testing.memory_stream_pair()
    received = b""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_client, server, metrics)
            await client.send_all(data)
            await client.send_eof()
            while chunk := await client.receive_some(65536):
                received += chunk
    return received


async def test_the_server_answers_one_request_and_closes():
    received = await exchange(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in received.lower()
    assert received.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_REQUEST_HEAD + RECEIVE_BYTES) + b"\r\n\r\n",
            431,
            id="big",
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400, id="tls-hello"),
        pytest.param(b"GET /livez HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400, id="bad-header"),
    ],
)
async def test_bad_requests_are_answered_and_closed(data, status):
    received = await exchange(data)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:80]


async def test_a_client_that_closes_before_its_request_is_closed_unanswered_or_told():
    assert await exchange(b"") == b""
    assert (await exchange(b"GET /livez HTTP/1.1\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_a_silent_client_is_closed_at_the_request_timeout(autojump_clock):
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    client, server = trio.testing.memory_stream_pair()
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_client, server, metrics)
        assert await client.receive_some(1024) == b""  # the end of the stream: closed unanswered
        assert trio.current_time() - began == pytest.approx(REQUEST_TIMEOUT)


# ----- the config key


def load(tmp_path: Path, table: str) -> config.Config:
    path = tmp_path / "meshd.toml"
    cluster = '[cluster]\nname = "demo"\npeers = ["127.0.0.1:7000", "127.0.0.1:7001"]\n'
    path.write_text(table + cluster if table.startswith("http") else cluster + table)
    return config.load(path)


def test_http_is_off_unless_listen_is_set(tmp_path):
    assert load(tmp_path, "").http.listen is None
    assert load(tmp_path, '[http]\nlisten = "127.0.0.1:9100"\n').http.listen == Address("127.0.0.1", 9100)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[http]\nlisten = 9100\n", "http.listen"),
        ('[http]\nlisten = "nowhere"\n', "http.listen"),
        ("[http]\nport = 9100\n", "http.port"),
        ('http = "127.0.0.1:9100"\n', "http"),
    ],
)
def test_http_config_is_strict(tmp_path, table, key):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, table)
    assert caught.value.key == key


# ----- real daemons


async def test_probes_follow_the_mesh(harness: Harness):
    """/livez at once; /readyz 503 while one daemon of two forms, 200 once both are ready; 404 and 405."""
    cluster = harness.cluster(2)
    ports = free_ports(2)
    first = start(harness, cluster, 0, ports[0])
    live = await answering(harness, first, ports[0], "/livez", 200)
    harness.check(live.body == b"ok\n", f"/livez said {live}")
    forming = await http(ports[0], "/readyz")
    harness.check(forming.status == 503, f"/readyz of a forming mesh: {forming}")
    harness.check(forming.headers["content-type"] == "application/json", f"{forming.headers}")
    harness.check(
        forming.json() == {"ready": False, "state": "forming", "epoch": 1, "worker": None}, f"{forming.json()}"
    )
    second = start(harness, cluster, 1, ports[1])
    for daemon, port in ((first, ports[0]), (second, ports[1])):
        ready = await answering(harness, daemon, port, "/readyz", 200)
        harness.check(
            ready.json() == {"ready": True, "state": "ready", "epoch": 1, "worker": None}, f"{daemon.name}: {ready}"
        )
    missing = await http(ports[0], "/status")
    harness.check(missing.status == 404, f"/status: {missing}")
    posted = await http(ports[0], "/metrics", method="POST")
    harness.check(posted.status == 405 and posted.headers.get("allow") == "GET", f"POST /metrics: {posted}")


async def test_metrics_are_scraped_and_count_a_killed_peer(harness: Harness):
    """Three daemons ready: each scrape says ready, 2 links up, epoch 1, one formation observed. Slot 2 is killed
    with -9 and restarted at the same address and epoch: the survivors count the link failure, the peer's restart
    and a recovery (a formation may flap a ready mesh for a moment: counts are taken against a baseline)."""
    cluster = harness.cluster(3)
    ports = free_ports(3)
    daemons = [start(harness, cluster, index, ports[index]) for index in range(3)]
    await harness.wait_ready(daemons, epoch=1)

    async def all_scraped(ready: Any) -> list[Samples]:
        async def probe() -> tuple[bool, Any]:
            found = [await scrape(port) for port in ports]
            return all(ready(samples) for samples in found), found

        return await harness.eventually(probe, "the scrapes to show the mesh")

    def full(samples: Samples) -> bool:
        return value(samples, "meshd_mesh_state", state="ready") == 1 and value(samples, "meshd_links_up") == 2

    baseline = await all_scraped(full)
    for daemon, samples in zip(daemons, baseline, strict=True):
        labels = {"cluster": cluster.name, "index": str(daemon.index), "mode": "fixed", "version": "0.1.0"}
        harness.check(value(samples, "meshd_info", **labels) == 1, f"{daemon.name}: meshd_info {samples}")
        harness.check(value(samples, "meshd_peers") == 2, f"{daemon.name}: peers {samples}")
        harness.check(value(samples, "meshd_epoch") == 1, f"{daemon.name}: epoch {samples}")
        harness.check(value(samples, "meshd_recovery_seconds_count", after="start") == 1, f"{samples}")
        harness.check(value(samples, "meshd_fences_total") == 0, f"{samples}")

    victim, survivors = daemons[2], daemons[:2]
    victim.signal(signal.SIGKILL)
    await harness.wait_exit(victim)
    for daemon, port, before in zip(survivors, ports, baseline, strict=False):
        degraded = await answering(harness, daemon, port, "/readyz", 503)
        harness.check(degraded.json()["state"] == "degraded", f"{daemon.name}: {degraded}")
        samples = await scrape(port)
        lost = [
            value(samples, "meshd_link_failures_total", cause=cause)
            - value(before, "meshd_link_failures_total", cause=cause)
            for cause in ("closed", "silence")
        ]
        harness.check(sum(lost) == 1, f"{daemon.name} counts {lost} link failures (closed, silence): {samples}")
        harness.check(value(samples, "meshd_links_up") == 1, f"{daemon.name}: links up {samples}")

    daemons[2] = start(harness, cluster, 2, ports[2])
    await harness.wait_ready(daemons, epoch=1)
    after = await all_scraped(full)
    for daemon, samples, before in zip(survivors, after, baseline, strict=False):
        episodes = value(samples, "meshd_recovery_seconds_count", after="fault")
        harness.check(
            episodes > value(before, "meshd_recovery_seconds_count", after="fault"), f"{daemon.name}: {samples}"
        )
        took = value(samples, "meshd_recovery_seconds_sum", after="fault") - value(
            before, "meshd_recovery_seconds_sum", after="fault"
        )
        harness.check(0 < took < DEADLINE, f"{daemon.name}: recovery took {took}s")
        harness.check(value(samples, "meshd_peer_restarts_total") == 1, f"{daemon.name}: {samples}")
        print(f"\n{daemon.name} observed the recovery after the kill: {took:.3f}s")


async def test_readyz_waits_for_an_attached_worker(harness: Harness):
    """With ``[worker] socket`` the mesh is ready before any worker attaches: /readyz stays 503 (state ready,
    worker null) until the worker runs, then 200; the worker's state is in the metrics too."""
    workers = Workers(harness.tmp)
    cluster = harness.cluster(2)
    ports = free_ports(2)
    paths = [harness.tmp / f"w{index}.sock" for index in range(2)]
    daemons = [
        start(harness, cluster, index, ports[index], f'\n[worker]\nsocket = "{paths[index]}"\n') for index in range(2)
    ]
    await harness.wait_ready(daemons, epoch=1)
    for daemon, port in zip(daemons, ports, strict=True):
        waiting = await http(port, "/readyz")
        harness.check(waiting.status == 503, f"{daemon.name}: /readyz without a worker: {waiting}")
        harness.check(waiting.json() == {"ready": False, "state": "ready", "epoch": 1, "worker": None}, f"{waiting}")
    for path in paths:
        harness.launch(f"w-{path.stem}", workers.argv("attach", "--path", str(path), "--size", "1000"))
    for daemon, port in zip(daemons, ports, strict=True):
        ready = await answering(harness, daemon, port, "/readyz", 200)
        harness.check(ready.json()["worker"] == "running", f"{daemon.name}: {ready}")
        samples = await scrape(port)
        harness.check(value(samples, "meshd_worker_state", state="running") == 1, f"{samples}")
        harness.check(value(samples, "meshd_worker_starts_total") == 1, f"{samples}")


async def test_a_stopped_daemon_does_not_answer_livez(harness: Harness):
    """SIGSTOP: the kernel still accepts the connection, nobody answers (the client's bound ends the wait)."""
    cluster = harness.cluster(2)
    port = free_ports(1)[0]
    daemon = start(harness, cluster, 0, port)
    await answering(harness, daemon, port, "/livez", 200)
    daemon.signal(signal.SIGSTOP)
    try:
        with pytest.raises(trio.TooSlowError):
            await http(port, "/livez", timeout=0.5)
    finally:
        daemon.signal(signal.SIGCONT)
    await answering(harness, daemon, port, "/livez", 200)


async def test_clients_beyond_the_limit_are_closed_unheard(harness: Harness):
    """HTTP_CLIENTS idle connections hold every place: the next one is closed at once and counted; once they
    leave, requests are answered again."""
    cluster = harness.cluster(2)
    port = free_ports(1)[0]
    daemon = start(harness, cluster, 0, port)
    await answering(harness, daemon, port, "/livez", 200)
    async with AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(await trio.open_tcp_stream(HOST, port)) for _ in range(HTTP_CLIENTS)]

        async def one_more() -> tuple[bool, Any]:
            # Until the daemon has accepted every idle one, one more may still be answered (and then leaves).
            with trio.fail_after(STATUS_TIMEOUT):
                async with await trio.open_tcp_stream(HOST, port) as extra:
                    try:
                        await extra.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                        got = await extra.receive_some(1024)
                    except trio.BrokenResourceError:
                        got = b""
            return got == b"", got

        await harness.eventually(one_more, "a client beyond the limit to be closed unheard")
        for stream in idle:  # and the ones admitted are still open (their request timeout is far)
            await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = [await stream.receive_some(1024) for stream in idle]
        harness.check(all(got.startswith(b"HTTP/1.1 200 ") for got in answered), f"the admitted ones got {answered}")
    samples = parse((await answering(harness, daemon, port, "/metrics", 200)).body.decode())
    harness.check(value(samples, "meshd_http_rejected_total") >= 1, f"{samples}")


async def test_a_busy_http_port_fails_the_start(harness: Harness):
    """The HTTP port is bound like the admin port: retried for ``timeouts.bind``, then exit 1 naming it."""
    cluster = harness.cluster(2)
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        daemon = start(harness, cluster, 0, holder.getsockname()[1])
        code = await harness.wait_exit(daemon)
    harness.check(code == 1, f"{daemon.name} exited {code} with its HTTP port busy")
    harness.check("for the HTTP endpoint" in daemon.stderr(), "the error does not name the HTTP endpoint")


async def test_beyond_loopback_a_warning_is_logged(harness: Harness):
    cluster = harness.cluster(2)
    port = free_ports(1)[0]
    config = write_config(
        harness.tmp / "wide.toml",
        cluster.name,
        cluster.mesh_ports,
        cluster.timeouts,
        f'[http]\nlisten = "0.0.0.0:{port}"\n',
    )
    daemon = harness.start(cluster, 0, 1, config=config)
    await answering(harness, daemon, port, "/livez", 200)
    harness.check("HTTP endpoint listens on non-loopback address 0.0.0.0" in daemon.stderr(), "no warning")
