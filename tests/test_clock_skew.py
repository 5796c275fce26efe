"""Failure mode: wall clocks disagree. Self-minted (auto-mode) generations minted by clocks an hour or a day
behind, or jumping back across a restart, still settle on one ready generation, each survivor exiting 75 at most
once per fault: the wall clock only picks numbers, a generation minted above a known one is always newer.

Variants: virtual time only. meshd has no flag to inject a wall clock into a real process, so these tests run real
``Daemon`` objects on the simulation's network in its exact-time preset (``tests.harness.virtual.TracingNetwork``),
each with its own ``wall_clock``, under pytest-trio's ``autojump_clock``. A small orchestrator keeps one daemon per
slot and restarts any that ends (fenced, or killed as kill -9 would: every socket it held is closed and its tasks
stop) after RESTART_DELAY, counting exits per slot. Timeouts are GRID_TIMEOUTS (multiples of 1/8 s).

Saturation (a generation at 2^64-1, peers beyond ``MAJOR_CEILING``: finding 4) is decided by the unit tests
(tests/test_hello.py, tests/test_mesh_model.py) and replayed against real daemons in tests/test_findings.py, which
also replays finding 1 (clocks 3000 s behind and ahead).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Epoch
from meshd.daemon import Daemon, Settings
from meshd.errors import ExitCode
from meshd.sim.network import Attachment
from tests.harness.virtual import TracingNetwork, address, grid_config, virtual_time, virtual_time_watchdog

# Every test here runs in virtual time.
pytestmark = virtual_time

# Wall clock (seconds) of a host whose clock is right, at virtual time 0: late 2026, as the real-process tests see.
NOW = 1_795_600_000.0
HOUR = 3600.0
RESTART_DELAY = 0.2
# Virtual seconds within which the cluster must settle on one ready generation after a fault.
RECOVERY = 30.0
# Virtual seconds a settled cluster must then stay as it is.
SETTLE = 2.0
KILLED = "killed"

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
        self.config = grid_config(size)
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
