"""Self-minted generations with skewed and jumping wall clocks, and readiness faults, in trio's virtual time.

meshd has no flag to inject a wall clock into a real process, so these tests run real ``Daemon`` objects on the
simulation's network in its exact-time preset (``tests.virtual.TracingNetwork``), each with its own ``wall_clock``,
under pytest-trio's ``autojump_clock``. A small orchestrator keeps one daemon per slot and restarts any that ends
(fenced, or killed as kill -9 would: every socket it held is closed and its tasks stop) after RESTART_DELAY,
counting exits per slot.

Timeouts are multiples of 1/8 s so that every timer lands exactly on the float grid (see the heartbeat test below).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

from meshd.config import Config, structure
from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Accept, Epoch, Frame, FrameDecoder, Heartbeat, Hello, View, encode
from meshd.daemon import Daemon, Settings
from meshd.errors import ExitCode
from meshd.sim.network import Attachment
from tests.virtual import TracingNetwork, address

CLUSTER = "virtual-generations"
# Wall clock (seconds) of a host whose clock is right, at virtual time 0: late 2026, as the real-process tests see.
pytestmark = pytest.mark.usefixtures("wall_clock_guard")  # tests/conftest.py

NOW = 1_795_600_000.0
HOUR = 3600.0
RESTART_DELAY = 0.2
# Virtual seconds within which the cluster must settle on one ready generation after a fault.
RECOVERY = 30.0
# Virtual seconds a settled cluster must then stay as it is.
SETTLE = 2.0
# Real seconds virtual time may stand still before the watchdog calls it a livelock, and how often it looks.
STALL_LIMIT = 3.0
WATCHDOG_PERIOD = 0.25
KILLED = "killed"
TIMEOUTS = {
    "connect": 0.5,
    "handshake": 0.5,
    "heartbeat_interval": 0.125,
    "heartbeat_timeout": 0.5,
    "backoff_initial": 0.0625,
    "backoff_max": 0.5,
}


class Livelock(Exception):
    """Raised by the real-time guard. Not a TimeoutError: that is an OSError, which meshd's I/O code converts."""


async def virtual_time_watchdog(real_limit: float = STALL_LIMIT) -> None:
    """Raise Livelock when virtual time stands still for ``real_limit`` real seconds.

    The task waits on a thread between checks, which counts as blocked, so it never holds the MockClock back; and
    unlike the SIGALRM guard it fails the test from an ordinary task, so the nursery shuts down cleanly.
    """
    last, stalled = trio.current_time(), 0.0
    while True:
        await trio.to_thread.run_sync(time.sleep, WATCHDOG_PERIOD, abandon_on_cancel=True)
        now = trio.current_time()
        if now != last:
            last, stalled = now, 0.0
            continue
        stalled += WATCHDOG_PERIOD
        if stalled >= real_limit:
            raise Livelock(f"virtual time stood still at {now} for {real_limit} real seconds")


def make_config(size: int, **timeouts: float) -> Config:
    peers = [str(address(index)) for index in range(size)]
    return structure({"cluster": {"name": CLUSTER, "peers": peers}, "timeouts": {**TIMEOUTS, **timeouts}})


Clock = Callable[[int], float]  # start number (1 for the first process of a slot) -> wall clock offset in seconds


@dataclass(eq=False)
class Slot:
    index: int
    offset: Clock
    starts: int = 0
    daemon: Daemon | None = None
    running: bool = False
    scope: trio.CancelScope | None = None
    process: Attachment | None = None  # the slot's current process, on the network
    exits: list[int | str] = field(default_factory=list)
    births: list[Epoch] = field(default_factory=list)  # the generation each process of the slot minted at start


class VirtualCluster:
    """One auto-mode daemon per slot, restarted RESTART_DELAY after it ends, whatever the reason."""

    def __init__(self, nursery: trio.Nursery, size: int, offsets: dict[int, Clock] | None = None) -> None:
        self.net = TracingNetwork()
        self.config = make_config(size)
        self.slots = [Slot(index, (offsets or {}).get(index, lambda start: 0.0)) for index in range(size)]
        self._nursery = nursery
        nursery.start_soon(virtual_time_watchdog)
        for slot in self.slots:
            nursery.start_soon(self._keep_running, slot)

    async def _keep_running(self, slot: Slot) -> None:
        while True:
            slot.starts += 1
            offset = slot.offset(slot.starts)
            net = self.net.for_node(address(slot.index))
            slot.process = net.process
            slot.daemon = Daemon(
                Settings(self.config, slot.index, None, None, mode="auto"),
                net=net,
                incarnation=(slot.starts << 8) | slot.index,
                rng=random.Random(slot.starts * 1000 + slot.index),
                wall_clock=lambda offset=offset: NOW + offset + trio.current_time(),
            )
            slot.births.append(slot.daemon.me.epoch)
            code: int | None = None
            slot.running = True
            with trio.CancelScope() as slot.scope:
                code = await slot.daemon.run()
            slot.running = False
            if net.process.alive:  # it exited: its kernel closes every socket it held
                self.net.kill(net.process, silent=False)
            slot.exits.append(KILLED if code is None else code)
            await trio.sleep(RESTART_DELAY)

    def kill(self, index: int) -> None:
        slot = self.slots[index]
        assert slot.running and slot.scope is not None and slot.process is not None, f"slot {index} is not running"
        slot.running = False
        self.net.kill(slot.process, silent=False)
        slot.scope.cancel()

    def exits(self) -> dict[int, list[int | str]]:
        return {slot.index: list(slot.exits) for slot in self.slots}

    def describe(self) -> str:
        lines = []
        for slot in self.slots:
            daemon = slot.daemon
            if daemon is None or not slot.running:
                lines.append(f"slot {slot.index}: not running, exits {slot.exits}")
                continue
            status = daemon.status()
            peers = ", ".join(f"{p['index']}:{p['state']}@{p['epoch']}" for p in status["peers"])
            lines.append(
                f"slot {slot.index}: {status['state']} in {status['epoch']} sealed={status['sealed']} "
                f"changes={status['generation_changes']} peers [{peers}] exits {slot.exits}"
            )
        return "\n".join(lines)

    def one_generation(self) -> Epoch | None:
        """The generation every slot is ready and sealed in, each linked to the processes that run; else None."""
        if not all(slot.running and slot.daemon is not None for slot in self.slots):
            return None
        daemons = [slot.daemon for slot in self.slots]
        epochs = {daemon.me.epoch for daemon in daemons}  # type: ignore[union-attr]
        if len(epochs) != 1:
            return None
        for daemon in daemons:
            assert daemon is not None
            model = daemon.model
            if model.state is not MeshState.READY or not model.sealed:
                return None
            for peer, row in model.rows.items():
                if row.state is not PeerState.UP or row.incarnation != daemons[peer].me.incarnation:  # type: ignore[union-attr]
                    return None
        return epochs.pop()

    async def wait_one_generation(
        self, what: str, after: Epoch | None = None, timeout: float = RECOVERY
    ) -> tuple[Epoch, float]:
        """The generation (other than ``after``) that every slot is ready in, and how long that took."""
        started = trio.current_time()
        with trio.move_on_after(timeout):
            while (epoch := self.one_generation()) is None or epoch == after:
                await trio.sleep(0.01)
            return epoch, trio.current_time() - started
        raise AssertionError(f"no ready generation within {timeout} virtual s ({what}):\n{self.describe()}")

    async def settle(self, epoch: Epoch, exits: dict[int, list[int | str]]) -> None:
        incarnations = [slot.daemon.me.incarnation for slot in self.slots]  # type: ignore[union-attr]
        await trio.sleep(SETTLE)
        assert self.one_generation() == epoch, f"the generation did not hold:\n{self.describe()}"
        assert [slot.daemon.me.incarnation for slot in self.slots] == incarnations, self.describe()  # type: ignore[union-attr]
        assert self.exits() == exits, f"exits changed after settling: {self.exits()}"


# ----- 8. skewed and jumping wall clocks


async def test_skewed_and_backward_jumping_clocks_converge_with_one_exit_per_survivor_per_fault(autojump_clock):
    """Slot 0's clock is an hour behind; slot 2's clock jumps two hours back when it is restarted after a crash.

    A replacement minting below the generation the survivors are sealed in is refused (the generation already
    has a process in its slot), mints above it, and fences the survivors once each; nobody exits twice.
    """
    offsets: dict[int, Clock] = {0: lambda start: -HOUR, 2: lambda start: 0.0 if start == 1 else -2 * HOUR}
    async with trio.open_nursery() as nursery:
        cluster = VirtualCluster(nursery, 3, offsets)
        first, _ = await cluster.wait_one_generation("cold start")
        exits: dict[int, list[int | str]] = {0: [], 1: [], 2: []}
        await cluster.settle(first, exits)
        # Slot 0 minted an hour in the past, so it adopted a generation of slot 1 or 2 in place.
        assert cluster.slots[0].daemon.model.generation_changes >= 1  # type: ignore[union-attr]
        assert first.major >= int(NOW * 1000)

        # Fault 1: kill the slot whose clock is an hour behind. Its replacement mints an hour in the past.
        cluster.kill(0)
        second, took = await cluster.wait_one_generation("after killing the slot an hour behind", first)
        exits = {0: [KILLED], 1: [ExitCode.FENCED], 2: [ExitCode.FENCED]}
        assert cluster.exits() == exits, cluster.describe()
        await cluster.settle(second, exits)
        assert second > first
        assert cluster.slots[0].births[1] < first, "slot 0's replacement did not mint below the sealed generation"
        print(f"\n[generations-virtual] clock 1 h behind, kill 0: ready {took:.3f} virtual s after the kill")

        # Fault 2: kill slot 2; its clock reads two hours earlier after the restart.
        cluster.kill(2)
        third, took = await cluster.wait_one_generation("after slot 2 restarted with its clock 2 h back", second)
        exits = {0: [KILLED, ExitCode.FENCED], 1: [ExitCode.FENCED, ExitCode.FENCED], 2: [ExitCode.FENCED, KILLED]}
        assert cluster.exits() == exits, cluster.describe()
        await cluster.settle(third, exits)
        assert third > second
        assert cluster.slots[2].births[1] < second, "slot 2's replacement did not mint below the sealed generation"
        print(f"[generations-virtual] clock jumped 2 h back, kill 2: ready {took:.3f} virtual s after the kill")
        nursery.cancel_scope.cancel()


async def test_every_clock_jumps_back_after_a_kill_all_and_nobody_exits(autojump_clock):
    """All processes die; all restart with clocks an hour behind the generation they had: no process is sealed
    any more, so the lower generations they mint are simply adopted, without a single exit 75."""
    offsets: dict[int, Clock] = {index: (lambda start: 0.0 if start == 1 else -HOUR) for index in range(3)}
    async with trio.open_nursery() as nursery:
        cluster = VirtualCluster(nursery, 3, offsets)
        first, _ = await cluster.wait_one_generation("cold start")
        for index in range(3):
            cluster.kill(index)
        second, took = await cluster.wait_one_generation("after kill -9 of every slot", first)
        exits: dict[int, list[int | str]] = {index: [KILLED] for index in range(3)}
        assert cluster.exits() == exits, cluster.describe()
        await cluster.settle(second, exits)
        assert second < first, "the new generation was minted by clocks an hour back"
        print(f"\n[generations-virtual] kill all, clocks 1 h back: ready {took:.3f} virtual s after the kill")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_a_backward_jumping_replacement_of_any_slot_fences_each_survivor_once(autojump_clock, victim):
    """Every slot's clock is right until the victim restarts a day in the past; the others keep right clocks."""
    offsets: dict[int, Clock] = {victim: lambda start: 0.0 if start == 1 else -24 * HOUR}
    async with trio.open_nursery() as nursery:
        cluster = VirtualCluster(nursery, 3, offsets)
        first, _ = await cluster.wait_one_generation("cold start")
        await trio.sleep(1.0)
        cluster.kill(victim)
        second, _ = await cluster.wait_one_generation(f"after killing {victim}", first)
        exits: dict[int, list[int | str]] = {i: [KILLED] if i == victim else [ExitCode.FENCED] for i in range(3)}
        assert cluster.exits() == exits, cluster.describe()
        await cluster.settle(second, exits)
        assert second > first
        nursery.cancel_scope.cancel()


# ----- readiness must not depend on the order in which two connections deliver


class RawPeer:
    """One end of a connection, spoken by the test: frames out, frames in, heartbeats on demand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self._lock = trio.Lock()

    async def send(self, frame: Frame) -> None:
        async with self._lock:
            await self.stream.send_all(encode(frame))

    async def receive(self) -> Frame:
        while (frame := self.decoder.next_frame()) is None:
            self.decoder.receive_data(await self.stream.receive_some(65536))
        return frame

    async def heartbeats(self, interval: float) -> None:
        while True:
            await self.send(Heartbeat())
            await trio.sleep(interval)


async def test_a_late_view_on_the_tie_break_loser_does_not_undo_readiness(autojump_clock):
    """A VIEW that arrives on the connection that lost the tie-break is not the link's latest view.

    Regression: such a view used to overwrite the peer's latest one, and a process could stay forming or degraded
    for ever with every link up (seen in about 1 of 50 real-process cold starts on a loaded host).

    Peers 1 and 2 are played by the test; daemon 0 is real (fixed epoch: the readiness rule is the same in every
    mode). 1 dials 0 (connection A: 0's first link to 1); 0 dials 1 (connection B, which wins the tie-break, the
    lower index's dial; A lingers for one handshake timeout). On A, peer 1 had sent the view it had then (linked to
    0 only); that frame is delayed in the network (two TCP connections are not ordered with respect to each other)
    and arrives after the full views on B and from 2. Nothing changes afterwards, so no view is sent again: the
    daemon must stay ready.
    """
    epoch = Epoch(1)
    net = TracingNetwork()
    config = make_config(3, handshake=4.0)
    peer_1 = net.for_node(address(1))
    (listener_1,) = await peer_1.listen(address(1))
    (listener_2,) = await net.for_node(address(2)).listen(address(2))
    daemon = Daemon(Settings(config, 0, epoch, None), net=net.for_node(address(0)), incarnation=0xA0)
    me, one, two = 0xA0, 0xB1, 0xB2
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        dialed_1 = RawPeer(await listener_1.accept())  # B: daemon 0 dials 1 at once
        dialed_2 = RawPeer(await listener_2.accept())
        a = RawPeer(await peer_1.connect(address(0)))  # A: 1 dials 0
        await a.send(Hello(CLUSTER, 1, 0, epoch, one))
        assert isinstance(await a.receive(), Hello)
        await a.send(Accept())
        with trio.fail_after(1):
            while daemon.model.rows[1].state is not PeerState.UP:
                await trio.sleep(0.01)
        delayed = View(epoch, (me, one, 0))  # what 1 sent on A while A was its link to 0 and 2 was not linked yet

        for raw, sender, incarnation in ((dialed_1, 1, one), (dialed_2, 2, two)):
            assert isinstance(await raw.receive(), Hello)
            await raw.send(Hello(CLUSTER, sender, 0, epoch, incarnation))
            await raw.send(Accept())
            nursery.start_soon(raw.heartbeats, TIMEOUTS["heartbeat_interval"])
        full = View(epoch, (me, one, two))
        await dialed_1.send(full)
        await dialed_2.send(full)
        with trio.fail_after(1):
            while daemon.model.state is not MeshState.READY:
                await trio.sleep(0.01)

        await a.send(delayed)  # the frame from A's early days finally arrives
        await trio.sleep(5.0)
        status = daemon.status()
        nursery.cancel_scope.cancel()
    assert [peer["state"] for peer in status["peers"]] == ["up", "up"], status
    assert status["state"] == "ready", (
        f"daemon 0 left ready for good on a stale VIEW from the tie-break loser, though every link is up and every "
        f"peer's latest view on its link equals its own: {status}"
    )


# ----- timers on the virtual clock


async def test_heartbeats_on_a_non_dyadic_interval_do_not_livelock_in_virtual_time(autojump_clock):
    """Two daemons with heartbeat_interval 0.1 must let virtual time pass (43 * 0.1 is where the grid broke).

    Regression: heartbeats slept until ``(floor(now / interval) + 1) * interval``; when the clock stood exactly on
    a grid point k * interval whose float quotient rounds below k (k = 43 for 0.1), that deadline was ``now``
    itself, the sleep returned at once and the sender spun without ever blocking, so a MockClock never advanced
    again (on a real clock it only spins until the time moves past the point). ``link.next_tick`` fixed it.
    """
    net = TracingNetwork()
    config = make_config(2, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    daemons = [Daemon(Settings(config, index, Epoch(1), None), net=net.for_node(address(index))) for index in range(2)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(virtual_time_watchdog)
        for daemon in daemons:
            await nursery.start(daemon.run)
        await trio.sleep(10.0)
        states = [daemon.model.state for daemon in daemons]
        nursery.cancel_scope.cancel()
    assert states == [MeshState.READY, MeshState.READY]
