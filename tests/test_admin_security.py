"""Who may use a daemon's admin websocket, through real ``python -m meshd`` processes (every wait bounded).

- Exposure: an admin websocket beyond loopback without ``admin.token_file`` refuses to run (exit 2 naming the key),
  and so does a token file other users may read.
- The token: with ``admin.token_file`` every websocket upgrade must carry ``Authorization: Bearer <token>``; none
  is answered 401, a wrong one 403, and nothing is served either way (the upgrade never happens, the connection
  ends); the typed client says so (AdminUnauthorized), ``meshd status``/``watch`` exit 1 saying so, and present
  the token from ``--token-file`` or from the daemon's own config (``--config``). The daemon counts every
  rejection (``admin_rejected``).
- Too many clients: beyond ``limits.admin_clients`` connections at once a new one is closed unheard (its handshake
  fails, counted) while the ones admitted keep working, and a place freed is taken again. A flood of the admin
  port is another module's.
"""

from __future__ import annotations

import json
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from meshd import cli
from meshd.admin import client
from meshd.admin.client import AdminTimeout, AdminUnauthorized
from meshd.cluster.spawn import write_config as write_cluster_config
from meshd.core.address import Address
from meshd.errors import AdminUnreachable
from tests.harness.procs import ADMIN_ERRORS, DEADLINE, STATUS_TIMEOUT, Cluster, Daemon, Harness, Proc, free_ports
from tests.test_cli import one_line_error

# The daemon's token: its file's first non-blank line, stripped (what follows it is not part of it).
TOKEN = "s3cret-admin-token"
TOKEN_FILE_TEXT = f"\n   {TOKEN}  \nnot the token\n"
WRONG = "not-the-admin-token"
# A websocket upgrade request as any HTTP client writes it; HEADERS adds its own lines.
UPGRADE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
)


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def guarded_config(harness: Harness, cluster: Cluster, extra: str = "") -> Path:
    """The cluster's config with ``admin.listen`` (slot 0's address) and ``admin.token_file`` (relative)."""
    private_file(harness.tmp / "admin.token", TOKEN_FILE_TEXT)
    peers = [cluster.mesh(index) for index in range(cluster.size)]
    admin = f'\n[admin]\nlisten = "{cluster.admin(0)}"\ntoken_file = "admin.token"\n'
    return write_cluster_config(harness.tmp / "guarded.toml", cluster.name, peers, cluster.timeouts, admin + extra)


async def answering(harness: Harness, daemon: Daemon, token: str | None) -> dict[str, Any]:
    """The daemon's status (asked with ``token``) once it answers; fails at once should the daemon exit."""

    async def answers() -> tuple[bool, Any]:
        harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode}")
        try:
            status = await client.status(daemon.admin, timeout=STATUS_TIMEOUT, token=token)
        except AdminUnauthorized as exc:
            harness.fail(f"{daemon.name} refused the right token: {exc}")
        except ADMIN_ERRORS as exc:
            return False, repr(exc)
        return True, status.to_json()

    return await harness.eventually(answers, f"{daemon.name} to answer on its admin port")


async def a_guarded_daemon(harness: Harness, extra: str = "") -> tuple[Cluster, Daemon, Path]:
    """Slot 0 of a 2-slot cluster (its peer never starts) whose admin websocket wants TOKEN; it answers."""
    cluster = harness.cluster(2, name="guarded")
    path = guarded_config(harness, cluster, extra)
    daemon = harness.start(cluster, 0, 1, config=path, name="guarded")
    await answering(harness, daemon, TOKEN)
    return cluster, daemon, path


async def unauthorized(harness: Harness, address: Address, token: str | None) -> AdminUnauthorized:
    with pytest.raises(AdminUnauthorized) as info:
        await client.status(address, timeout=STATUS_TIMEOUT, token=token)
    return info.value


async def raw_upgrade(harness: Harness, address: Address, headers: str = "", *, to_the_end: bool = True) -> bytes:
    """What the daemon answers a hand-written upgrade request: until it closes the connection (``to_the_end``; it
    must, within DEADLINE), else until the end of the response's head."""
    received = b""
    with trio.move_on_after(DEADLINE) as waiting:
        async with await trio.open_tcp_stream(address.host, address.port) as stream:
            await stream.send_all(UPGRADE.format(host=address, headers=headers).encode())
            while to_the_end or b"\r\n\r\n" not in received:
                try:
                    chunk = await stream.receive_some()
                except trio.BrokenResourceError:
                    break  # a reset ends it as well as a FIN does
                if not chunk:
                    break
                received += chunk
    harness.check(not waiting.cancelled_caught, f"the daemon kept the connection open after answering: {received!r}")
    return received


# ----- exposure: refusing to run


async def test_an_admin_websocket_beyond_loopback_without_a_token_file_exits_2(harness: Harness):
    cluster = harness.cluster(2, name="exposed-admin")
    (port,) = free_ports(1)
    exposed = harness.start(cluster, 0, 1, admin=Address("0.0.0.0", port), name="admin-0.0.0.0")
    private_file(harness.tmp / "lax.token", TOKEN + "\n", 0o644)
    peers = [cluster.mesh(index) for index in range(cluster.size)]
    lax = write_cluster_config(
        harness.tmp / "lax.toml", cluster.name, peers, extra='\n[admin]\ntoken_file = "lax.token"\n'
    )
    readable = harness.start(cluster, 1, 1, config=lax, name="world-readable-token")
    for proc, needles in (
        (exposed, ["configuration error: admin.token_file: ", f"0.0.0.0:{port}", "beyond loopback"]),
        (readable, ["configuration error: admin.token_file: ", "lax.token", "readable or writable by every user"]),
    ):
        code = await harness.wait_exit(proc)
        harness.check(code == 2, f"{proc.name} exited {code}, expected 2")
        one_line_error(harness, proc, *needles)


def test_a_client_token_file_others_may_read_is_refused_before_connecting(tmp_path, capsys):
    lax = private_file(tmp_path / "lax.token", TOKEN + "\n", 0o644)
    (port,) = free_ports(1)
    assert cli.main(["status", "--admin", f"127.0.0.1:{port}", "--token-file", str(lax)]) == 2
    assert "configuration error: --token-file: " in capsys.readouterr().err


# ----- the token


async def test_no_token_is_401_a_wrong_one_403_and_each_is_counted(harness: Harness):
    _, daemon, _ = await a_guarded_daemon(harness)
    before = (await client.status(daemon.admin, timeout=STATUS_TIMEOUT, token=TOKEN)).admin_rejected
    none = await unauthorized(harness, daemon.admin, None)
    wrong = await unauthorized(harness, daemon.admin, WRONG)
    harness.check(none.status_code == 401, f"no token: HTTP {none.status_code}, expected 401")
    harness.check(wrong.status_code == 403, f"a wrong token: HTTP {wrong.status_code}, expected 403")
    harness.check("--token-file" in str(none), f"the error does not say what to give: {none}")
    later = await unauthorized(harness, daemon.admin, "not the token")  # only the first non-blank line is
    harness.check(later.status_code == 403, f"the token file's second line: HTTP {later.status_code}, expected 403")
    after = (await client.status(daemon.admin, timeout=STATUS_TIMEOUT, token=TOKEN)).admin_rejected
    harness.check(after - before == 3, f"admin_rejected went from {before} to {after}, expected 3 more")


async def test_a_raw_upgrade_without_the_token_gets_401_and_nothing_is_served(harness: Harness):
    _, daemon, _ = await a_guarded_daemon(harness)
    cases = [
        ("", b"HTTP/1.1 401 "),
        ("Authorization: Basic dXNlcjpwYXNz\r\n", b"HTTP/1.1 401 "),
        (f"Authorization: Bearer {WRONG}\r\n", b"HTTP/1.1 403 "),
    ]
    for headers, expected in cases:
        answer = await raw_upgrade(harness, daemon.admin, headers)
        head = answer.split(b"\r\n\r\n", 1)[0]
        harness.check(answer.startswith(expected), f"upgrade with {headers!r} answered {answer!r}")
        harness.check(b"sec-websocket-accept" not in head.lower(), f"a rejected upgrade was accepted: {answer!r}")
    # The same request with the token is upgraded: the refusals above are the token's, not a malformed request's.
    answer = await raw_upgrade(harness, daemon.admin, f"Authorization: Bearer {TOKEN}\r\n", to_the_end=False)
    harness.check(answer.startswith(b"HTTP/1.1 101 "), f"the upgrade with the token answered {answer!r}")
    status = await answering(harness, daemon, TOKEN)
    harness.check(status["admin_rejected"] == len(cases), f"admin_rejected {status['admin_rejected']}")


async def test_status_and_watch_present_the_token_from_a_file_or_the_daemons_config(harness: Harness):
    cluster, daemon, path = await a_guarded_daemon(harness)
    token_file = harness.tmp / "admin.token"
    wrong_file = private_file(harness.tmp / "wrong.token", WRONG + "\n")
    admin = ["--admin", str(daemon.admin)]
    succeed: list[Proc] = [
        harness.spawn("status-token-file", ["status", *admin, "--token-file", str(token_file), "--json"]),
        harness.spawn("status-config", ["status", "--config", str(path), "--json"]),  # admin.listen, token_file
    ]
    fail = [
        (harness.spawn("status-no-token", ["status", *admin]), ["HTTP 401", str(daemon.admin), "--token-file"]),
        (harness.spawn("status-wrong", ["status", *admin, "--token-file", str(wrong_file)]), ["HTTP 403"]),
        (harness.spawn("watch-no-token", ["watch", *admin]), ["HTTP 401"]),
    ]
    watcher = harness.spawn("watch", ["watch", *admin, "--token-file", str(token_file)], pipe_stdout=True)
    for proc in succeed:
        code = await harness.wait_exit(proc)
        harness.check(code == 0, f"{proc.name} exited {code}, expected 0")
        status = json.loads(proc.stdout())
        harness.check(status["index"] == 0 and status["cluster"] == cluster.name, f"{proc.name}: {status}")
    for proc, needles in fail:
        code = await harness.wait_exit(proc)
        harness.check(code == 1, f"{proc.name} exited {code}, expected 1")
        one_line_error(harness, proc, *needles)
    await harness.read_line(watcher, lambda line: line.startswith("meshd index 0 of 2 "), "snapshot")
    watcher.signal(signal.SIGINT)
    harness.check(await harness.wait_exit(watcher) == 0, f"meshd watch exited {watcher.returncode} on SIGINT")
    status = await answering(harness, daemon, TOKEN)
    harness.check(status["admin_rejected"] == len(fail), f"admin_rejected {status['admin_rejected']}")


# ----- too many clients


async def ask_status(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(STATUS_TIMEOUT):
        await ws.send_message(json.dumps({"op": "status"}))
        return json.loads(await ws.get_message())


async def test_a_client_beyond_admin_clients_is_closed_at_once_and_the_others_keep_working(harness: Harness):
    _, daemon, _ = await a_guarded_daemon(harness, "\n[limits]\nadmin_clients = 2\n")
    async with AsyncExitStack() as stack:
        held: list[WebSocketConnection] = []

        async def admitted() -> tuple[bool, Any]:
            # The status query that found the daemon answering may still hold its place for a moment.
            try:
                held.append(await stack.enter_async_context(client.connect(daemon.admin, token=TOKEN)))
            except AdminUnreachable as exc:
                return False, repr(exc)
            return len(held) == 2, len(held)

        await harness.eventually(admitted, "two admin clients admitted")
        before = (await ask_status(held[0]))["admin_rejected"]
        with pytest.raises(AdminUnreachable) as info:
            async with client.connect(daemon.admin, timeout=DEADLINE, token=TOKEN):
                harness.fail("a third admin client was admitted with admin_clients = 2")
        harness.check(
            not isinstance(info.value, AdminTimeout | AdminUnauthorized),
            f"the third client was not closed at once: {info.value!r}",
        )
        for ws in held:
            status = await ask_status(ws)
            harness.check(status["index"] == 0, f"an admitted client got {status}")
        harness.check(status["admin_rejected"] == before + 1, f"admin_rejected {before} -> {status['admin_rejected']}")
        await held.pop().aclose()
        await answering(harness, daemon, TOKEN)  # the freed place is taken again
        harness.check((await ask_status(held[0]))["index"] == 0, "the first client stopped working")


async def test_clients_without_the_token_hold_no_place_even_when_they_stay_connected(harness: Harness):
    """As many strangers as ``limits.admin_clients`` send an upgrade without the token and never close: each is
    closed after its 401, so the controller (with the token) is still answered."""
    _, daemon, _ = await a_guarded_daemon(harness, "\n[limits]\nadmin_clients = 2\n")
    async with AsyncExitStack() as stack:
        for _ in range(2):
            stream = await stack.enter_async_context(await trio.open_tcp_stream(daemon.admin.host, daemon.admin.port))
            await stream.send_all(UPGRADE.format(host=daemon.admin, headers="").encode())
            with trio.fail_after(DEADLINE):
                head = await stream.receive_some()
            harness.check(head.startswith(b"HTTP/1.1 401 "), f"a stranger's upgrade answered {head!r}")
        status = await answering(harness, daemon, TOKEN)  # while the strangers keep their ends open
    harness.check(status["admin_rejected"] == 2, f"admin_rejected {status['admin_rejected']}")
