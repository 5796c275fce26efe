"""Failure mode: where a sidecar runs. A fence under an orchestrator that backs off restarts (``--on-fence
restart``: the process starts a new daemon in place, same PID, no exit), peers known by name whose addresses appear
late or change (resolved again at every dial), and a mesh port bound apart from the address peers dial
(``cluster.listen``).

Real processes through ``tests.harness.procs``; the name resolution runs daemons in this process on real loopback
TCP with trio's custom hostname resolver, so that a name can resolve late, or to another address, on cue.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.socket

from meshd.cluster import spawn
from meshd.config import structure
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.status import EndCause, MeshState
from meshd.core.wire import Epoch
from meshd.daemon import Daemon, Settings
from meshd.net import TcpNetwork
from meshd.restart import next_settings
from tests.harness.procs import DEADLINE, HOST, Harness, free_ports, is_ready

# ----- what a fenced daemon runs next, in place (pure)


def _settings(mode: EpochMode, epoch: Epoch | None) -> Settings:
    config = structure({"cluster": {"name": "c", "peers": ["127.0.0.1:1", "127.0.0.1:2"]}})
    return Settings(config, 0, epoch, None, mode=mode)


@pytest.mark.parametrize(
    ("mode", "epoch", "fenced_by", "expected"),
    [
        pytest.param(EpochMode.FIXED, Epoch(3), Epoch(5), Epoch(5), id="fixed: the newer epoch"),
        pytest.param(EpochMode.AUTO, None, Epoch(9, 3), None, id="auto: mints anew"),
        pytest.param(EpochMode.AWAIT, None, Epoch(9), None, id="await: awaits the controller again"),
    ],
)
def test_a_fenced_daemon_restarts_in_place_with(mode, epoch, fenced_by, expected):
    again = next_settings(_settings(mode, epoch), fenced_by)
    assert again is not None and again.epoch == expected and again.mode is mode and again.restarts == 1
    assert next_settings(again, fenced_by if mode is not EpochMode.FIXED else Epoch(7)).restarts == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("fenced_by", [None, Epoch(4, 1)], ids=["no newer epoch", "not a controller's epoch"])
def test_a_fixed_epoch_fence_without_a_controllers_epoch_exits(fenced_by):
    assert next_settings(_settings(EpochMode.FIXED, Epoch(3)), fenced_by) is None


# ----- fences without a process exit


@pytest.mark.parametrize("mode", ["fixed", "auto"])
async def test_fenced_daemons_restart_in_place_and_the_mesh_comes_back(harness: Harness, mode: str):
    """Three daemons with ``--on-fence restart``; slot 2 is killed and replaced (fixed: at epoch 2, as a controller
    does after a death; auto: as it was). Daemons 0 and 1 are fenced and come back in place: the same PIDs, never
    exited, new incarnations, all three ready in one epoch, with nothing but the replacement restarted."""
    cluster = harness.cluster(3)
    epoch: int | str = 1 if mode == "fixed" else "auto"
    args = ["--on-fence", "restart"]
    daemons = [harness.start(cluster, index, epoch, extra_args=args) for index in range(3)]
    before = await _one_ready_epoch(harness, daemons)
    daemons[2].signal(9)
    await harness.wait_exit(daemons[2])
    replacement = harness.start(cluster, 2, 2 if mode == "fixed" else "auto", extra_args=args, name="d2-replacement")
    survivors = daemons[:2]

    async def restarted() -> tuple[bool, Any]:
        for daemon in survivors:
            harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode}: no restart in place")
        found = await harness.statuses([*survivors, replacement])
        fresh = all(
            status is not None and status["incarnation"] != old["incarnation"]
            for status, old in zip(found[:2], before[:2], strict=True)
        )
        return fresh and _ready_in_one_epoch(found), found

    after = await harness.eventually(restarted, "0 and 1 fenced, restarted in place, ready with the replacement")
    for daemon in survivors:
        harness.check("restarting in place" in daemon.stderr(), f"{daemon.name} did not log its restart")
        harness.check(daemon.popen.poll() is None, f"{daemon.name}'s process (pid {daemon.pid}) exited")
    if mode == "fixed":
        harness.check(all(status["epoch"] == 2 for status in after), f"not all in epoch 2: {after}")
    harness.check(after[0]["started"] > before[0]["started"], "daemon 0 did not start anew")


async def test_a_restart_in_place_stops_its_worker_and_starts_the_next_generations(harness: Harness):
    """With a worker: the fenced daemon stops and reaps its worker before it restarts (the old worker is gone,
    not a zombie), and the restarted daemon starts a new one in the new epoch."""
    cluster = harness.cluster(2)
    args = ["--on-fence", "restart", "--exec", "--", "sleep", "60"]
    daemons = [harness.start(cluster, index, 1, extra_args=args) for index in range(2)]

    async def workers_at(epoch: int, statuses: list) -> tuple[bool, Any]:
        found = await harness.statuses(statuses)
        running = all(
            status is not None and is_ready(status, epoch) and status["worker"]["state"] == "running"
            for status in found
        )
        return running, found

    before = await harness.eventually(lambda: workers_at(1, daemons), "workers running at epoch 1")
    old_worker = before[0]["worker"]["pid"]
    daemons[1].signal(9)
    await harness.wait_exit(daemons[1])
    replacement = harness.start(cluster, 1, 2, extra_args=args, name="d1-replacement")
    after = await harness.eventually(lambda: workers_at(2, [daemons[0], replacement]), "workers running at epoch 2")
    harness.check(daemons[0].returncode is None, f"daemon 0 exited {daemons[0].returncode}")
    harness.check(after[0]["worker"]["pid"] != old_worker, f"daemon 0 kept its worker: {after[0]['worker']}")
    harness.check(not Path(f"/proc/{old_worker}").exists(), f"the old worker {old_worker} is still there")


async def _one_ready_epoch(harness: Harness, daemons: list) -> list[dict]:
    async def ready() -> tuple[bool, Any]:
        found = await harness.statuses(daemons)
        return _ready_in_one_epoch(found), found

    return await harness.eventually(ready, "one ready epoch")


def _ready_in_one_epoch(statuses: list[dict | None]) -> bool:
    epochs = {None if status is None else status["epoch"] for status in statuses}
    return len(epochs) == 1 and all(status is not None and is_ready(status, status["epoch"]) for status in statuses)


# ----- peers by name, bound apart


async def test_peers_named_localhost_form_a_mesh(harness: Harness):
    """Peers written as ``localhost:PORT``: each daemon binds what its name resolves to, dials its peers by name."""
    ports = free_ports(3)
    config = spawn.write_config(harness.tmp / "named.toml", "named", [f"localhost:{port}" for port in ports])
    admins = free_ports(3)
    daemons = [
        harness.start(None, index, 1, config=config, admin=Address(HOST, admins[index]))  # type: ignore[arg-type]
        for index in range(3)
    ]
    await harness.wait_ready(daemons, epoch=1)


class LateNames(trio.abc.HostnameResolver):
    """Names of this test's own: unknown until ``publish`` gives one an address (or another one)."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.answers: list[str | None] = []  # what each lookup of one of our names gave, in order

    def publish(self, name: str, ip: str) -> None:
        self.addresses[name] = ip

    async def getaddrinfo(
        self, host: bytes | str, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if not name.endswith(".meshd.test"):
            return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family, type, proto, flags)
        self.answers.append(self.addresses.get(name))
        if name not in self.addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.addresses[name], int(port)))]

    async def getnameinfo(self, sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


def _daemon(peers: list[str], index: int, listen: str) -> Daemon:
    config = structure({
        "cluster": {"name": "late", "peers": peers, "listen": listen},
        "timeouts": {"backoff_initial": 0.02, "backoff_max": 0.2, "connect": 0.5, "handshake": 0.5},
    })  # fmt: skip
    return Daemon(Settings(config, index, Epoch(1), None), net=TcpNetwork())


async def _until(condition: Any, what: str) -> None:
    with trio.fail_after(DEADLINE):
        while not condition():
            await trio.sleep(0.02)


async def test_a_name_that_resolves_late_or_moves_is_dialed_again():
    """Slot 1 is ``one.meshd.test``, a name nobody knows yet (its process is not there either): slot 0 keeps trying
    it with back-off (failed attempts, never an error). Once the name resolves (to 127.0.0.1) and slot 1 runs, the
    mesh forms; slot 1 is then replaced by a process on another address (127.0.0.2, as a recreated pod gets a new
    IP) and the name moves with it: the mesh forms again, and slot 0's dials reach the new address, because names
    are resolved again at every dial."""
    resolver = LateNames()
    trio.socket.set_custom_hostname_resolver(resolver)
    try:
        port_0, port_1 = free_ports(2)
        peers = [f"127.0.0.1:{port_0}", f"one.meshd.test:{port_1}"]
        zero = _daemon(peers, 0, f"127.0.0.1:{port_0}")
        async with trio.open_nursery() as nursery:
            await nursery.start(zero.run)
            row = zero.model.rows[1]
            await _until(lambda: row.failures >= 3, "three failed attempts at a name that does not resolve")
            assert zero.model.state is MeshState.FORMING and row.last_cause is EndCause.UNREACHABLE

            resolver.publish("one.meshd.test", "127.0.0.1")
            first = _daemon(peers, 1, f"127.0.0.1:{port_1}")
            first_scope = trio.CancelScope()

            async def run_first() -> None:
                with first_scope:
                    await first.run()

            nursery.start_soon(run_first)
            await _until(lambda: zero.model.state is MeshState.READY, "the mesh once the name resolves")
            old = row.incarnation

            first_scope.cancel()  # slot 1's pod is gone; its replacement runs on another address
            await _until(lambda: zero.model.state is not MeshState.READY, "the loss of slot 1")
            resolver.publish("one.meshd.test", "127.0.0.2")
            moved_at = len(resolver.answers)
            # The replacement cannot reach slot 0 itself (a port nobody listens on): only slot 0's dial, by name, can
            # link them, so the link proves that the name was resolved again.
            (nowhere,) = free_ports(1)
            second = _daemon([f"127.0.0.1:{nowhere}", peers[1]], 1, f"127.0.0.2:{port_1}")
            nursery.start_soon(second.run)
            await _until(
                lambda: zero.model.state is MeshState.READY and row.incarnation not in (None, old),
                "the mesh with the replacement at its new address",
            )
            await _until(lambda: "127.0.0.2" in resolver.answers[moved_at:], "a dial of the name's new address")
            nursery.cancel_scope.cancel()
    finally:
        trio.socket.set_custom_hostname_resolver(None)
