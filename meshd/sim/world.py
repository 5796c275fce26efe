"""One simulated run: the real daemons of a cluster, an orchestrator, and a seed's faults, in virtual time.

The daemon code is meshd's own (``meshd.daemon.Daemon`` and everything under it); only the network
(``meshd.sim.network``), the clocks and the process lifecycle are simulated. trio's scheduler is made
reproducible (``deterministic_scheduling``), every other random choice comes from generators seeded by the seed,
so one seed is one trace.
"""

from __future__ import annotations

import contextlib
import random
import traceback
from collections.abc import Iterator

import trio
import trio.testing
from attrs import define, field
from loguru import logger

from meshd.config import Config, structure
from meshd.core.address import Address
from meshd.core.bounds import liveness_bound
from meshd.core.status import Fenced, LinkDown, LinkUp, MeshEvent, MeshState
from meshd.core.wire import Epoch, View
from meshd.daemon import Daemon, Settings
from meshd.errors import BindError, ExitCode
from meshd.net import BIND_RETRY_INTERVAL
from meshd.sim.checker import SimChecker
from meshd.sim.network import Attachment, SimNetwork, SimStream
from meshd.sim.schedule import (
    BASE_LATENCY,
    BusyPort,
    ClockJump,
    Crash,
    Fault,
    Lossy,
    Partition,
    Pause,
    ResetHandshake,
    ResetLinks,
    Schedule,
    Slow,
    Zombie,
)
from meshd.sim.variants import VARIANTS

# The orchestrator's restart delay (the design's D).
RESTART_DELAY = 0.2
# The daemons' timeouts: the product defaults, but a busy port is given up on sooner so that bind failures (exit 1)
# happen within a schedule's fault window.
TIMEOUTS = {"bind": 1.0}
# A mesh counts as converged once it has stayed ready this long (in heartbeat timeouts): faults still in flight at
# the last fault's instant (a reset on its way) must not let a mesh that is about to break count as converged.
HOLD_TIMEOUTS = 2
# How often the run looks at whether the mesh converged (virtual seconds; the time itself is stamped exactly).
POLL = 0.01
# Wall clocks read like the Unix time of late 2026 plus the virtual time and the slot's skew.
WALL_CLOCK_BASE = 1_795_000_000.0


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make trio's scheduler a function of ``seed``.

    trio shuffles each batch of runnable tasks with a private generator; with ``_ALLOW_DETERMINISTIC_SCHEDULING``
    it first sorts the batch by task creation order, so seeding that generator fixes the order. There is no public
    hook: this is how trio's own tests (and its hypothesis plugin) do it, and it is confined to this function.
    """
    run = trio._core._run
    saved = (run._ALLOW_DETERMINISTIC_SCHEDULING, run._r.getstate())
    run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    run._r.seed(f"trio/{seed}")
    try:
        yield
    finally:
        run._ALLOW_DETERMINISTIC_SCHEDULING = saved[0]  # type: ignore[misc]
        run._r.setstate(saved[1])


@define(eq=False)
class Process:
    """One simulated meshd process (one incarnation of a slot)."""

    pid: int
    slot: int
    born: float
    attachment: Attachment
    daemon: Daemon
    scope: trio.CancelScope = field(factory=trio.CancelScope)
    ended: trio.Event = field(factory=trio.Event)  # exited, killed, or given up on by the orchestrator (zombie)
    exit_code: int | None = None
    killed: bool = False
    stale: bool = False  # started by the controller with an epoch older than its newest (a broken A4, on purpose)
    down_since: dict[int, float] = field(factory=dict)  # peer -> virtual time its link went down here
    fenced: Fenced | None = None  # the fenced event it published, if any

    @property
    def alive(self) -> bool:
        return self.attachment.alive

    @property
    def epoch(self) -> Epoch:
        return self.daemon.me.epoch

    @property
    def state(self) -> MeshState:
        return self.daemon.model.state

    def view(self) -> View:
        return self.daemon.model.view()

    def link_streams(self) -> Iterator[tuple[int, SimStream]]:
        for peer, link in self.daemon.links.items():
            session = link.session
            if session is not None:
                stream = session.conn.stream
                assert isinstance(stream, SimStream)
                yield peer, stream


@define
class Outcome:
    """What one seed did; ``failure`` is None when it converged within the bound with no violation."""

    seed: int
    size: int
    mode: str
    last_fault: float
    bound: float
    converged_after: float | None  # virtual seconds from the last fault to every process ready in one generation
    exits: list[dict[int, int]]  # per slot: exit code -> count
    violations: list[str]
    failure: str | None
    trace: list[str]

    @property
    def ok(self) -> bool:
        return self.failure is None


class World:
    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.size = schedule.size
        self.auto = schedule.mode == "auto"
        addresses = [self.address(slot) for slot in range(self.size)]
        self.config: Config = structure(
            {"cluster": {"name": "sim", "peers": [str(address) for address in addresses]}, "timeouts": TIMEOUTS}
        )
        # S: a simulated start is a bind, retried once if the old port lingers; δ: a timely network's latency.
        self.bound = liveness_bound(
            self.config.timeouts, self.size, RESTART_DELAY, BIND_RETRY_INTERVAL, BASE_LATENCY[1]
        )
        self._rng = random.Random(f"world/{schedule.seed}")
        self.net = SimNetwork(random.Random(f"net/{schedule.seed}"), BASE_LATENCY)
        self.skews = list(schedule.clock_skews)
        self.current: list[Process | None] = [None] * self.size
        self.processes: list[Process] = []
        self.exits: list[dict[int, int]] = [{} for _ in range(self.size)]
        self.controller_epoch = Epoch(1)
        self.epoch_bumps = 0
        self._restart_epoch: dict[int, str] = {}
        duplicates = any(isinstance(fault, Zombie) for fault in schedule.faults)
        self.checker = SimChecker(duplicates=duplicates)
        self.dirty = True
        self.converged_at: float | None = None
        self.finished = False  # the run is over: the processes are being torn down, not exiting
        self.trace: list[str] = []

    @staticmethod
    def address(slot: int) -> Address:
        return Address(f"10.0.{slot // 200}.{slot % 200 + 1}", 7000)

    # ----- observation -----

    def note(self, text: str) -> None:
        self.trace.append(f"{trio.current_time():.6f} {text}")
        self.dirty = True

    def _on_event(self, process: Process, event: MeshEvent) -> None:
        self.checker.changed(process)
        if isinstance(event, Fenced):
            process.fenced = event
        elif isinstance(event, LinkDown):
            process.down_since[event.peer] = trio.current_time()
        elif isinstance(event, LinkUp):
            process.down_since.pop(event.peer, None)
        data = event.to_json()
        fields = " ".join(f"{key}={value}" for key, value in data.items() if key not in ("event", "time", "index"))
        self.note(f"pid {process.pid} slot {process.slot}: {data['event']} {fields}")

    def check(self) -> None:
        """Run the safety checks and update convergence; called after every task step that changed something."""
        self.dirty = False
        now = trio.current_time()
        self.checker.check(now, self.processes_alive())
        if self._converged():
            if self.converged_at is None:
                self.converged_at = now
        else:
            self.converged_at = None

    def processes_alive(self) -> list[Process]:
        return [process for process in self.processes if process.alive]

    def _converged(self) -> bool:
        current = self.current
        if any(process is None or not process.alive or process.state is not MeshState.READY for process in current):
            return False
        views = {process.view() for process in current if process is not None}
        return len(views) == 1

    # ----- processes and the orchestrator -----

    def _wall_clock(self, slot: int) -> float:
        return WALL_CLOCK_BASE + trio.current_time() + self.skews[slot]

    def spawn(self, slot: int, epoch: Epoch | None) -> Process:
        pid = len(self.processes)
        address = self.config.cluster.peers[slot]
        attachment = Attachment(pid, address)
        settings = Settings(self.config, slot, epoch, None, "auto" if self.auto else "fixed")
        daemon = Daemon(
            settings,
            net=self.net.for_process(attachment),
            incarnation=self._rng.getrandbits(64) or 1,
            rng=random.Random(self._rng.getrandbits(64)),
            wall_clock=lambda: self._wall_clock(slot),
        )
        process = Process(pid, slot, trio.current_time(), attachment, daemon)
        process.stale = epoch is not None and epoch < self.controller_epoch
        daemon.bus.observe(lambda event: self._on_event(process, event))
        self.processes.append(process)
        self.current[slot] = process
        self.note(f"pid {pid} slot {slot}: started, epoch {daemon.me.epoch}, incarnation {daemon.me.incarnation:016x}")
        return process

    async def _run_process(self, process: Process) -> None:
        try:
            with process.scope:
                try:
                    process.exit_code = await process.daemon.run()
                except BindError:
                    process.exit_code = 1
        finally:
            if not process.killed and not self.finished:
                self.net.kill(process.attachment, silent=False)  # the process exits: its kernel closes its sockets
                now = trio.current_time()
                self.checker.process_exited(now, process, self.schedule.last_fault)
                code = process.exit_code if process.exit_code is not None else -1
                self.exits[process.slot][code] = self.exits[process.slot].get(code, 0) + 1
                self.note(f"pid {process.pid} slot {process.slot}: exited with {code}")
            process.ended.set()

    async def _keep_slot(self, slot: int) -> None:
        """The orchestrator for one slot: start a process, and a new one whenever it ends (R6 with fixed epochs)."""
        await trio.sleep(self.schedule.start_offsets[slot])
        epoch: Epoch | None = None if self.auto else self.controller_epoch
        async with trio.open_nursery() as nursery:
            while True:
                process = self.spawn(slot, epoch)
                nursery.start_soon(self._run_process, process)
                await process.ended.wait()
                if self.current[slot] is process:
                    self.current[slot] = None
                self.dirty = True
                if not self.auto:
                    epoch = self._next_epoch(process)
                await trio.sleep(RESTART_DELAY)

    def _next_epoch(self, process: Process) -> Epoch:
        if process.exit_code == ExitCode.FENCED and not process.killed and not process.attachment.displaced:
            return self.controller_epoch
        kind = self._restart_epoch.pop(process.slot, "newer")
        if kind == "equal":
            self.checker.safety.contract = False  # a slot started twice in one epoch: A4 broken on purpose
            return process.epoch
        if kind == "older" and self.controller_epoch.major > 1:
            self.checker.safety.contract = False
            return Epoch(self.controller_epoch.major - 1)
        self.controller_epoch = Epoch(max(self.controller_epoch.major, process.epoch.major) + 1)
        self.epoch_bumps += 1
        return self.controller_epoch

    def kill(self, process: Process, *, silent: bool) -> None:
        """kill -9 (or a host crash): from this instant the process has no effect on the network."""
        if not process.alive:
            return
        process.killed = True
        self.net.kill(process.attachment, silent=silent)
        process.scope.cancel()
        self.note(f"pid {process.pid} slot {process.slot}: {'host crashed' if silent else 'killed'}")
        process.ended.set()

    # ----- faults -----

    async def _apply(self, fault: Fault) -> None:
        self.note(f"fault: {fault.describe()}")
        address = self.config.cluster.peers
        match fault:
            case Crash(slot=slot, silent=silent, restart_epoch=kind):
                if (victim := self.current[slot]) is not None:
                    if kind is not None:
                        self._restart_epoch[slot] = kind
                    self.kill(victim, silent=silent)
            case BusyPort(slot=slot, duration=duration):
                self.net.busy_ports.add(address[slot])
                if (victim := self.current[slot]) is not None:
                    self.kill(victim, silent=False)
                await trio.sleep(duration)
                self.net.busy_ports.discard(address[slot])
            case Pause(slot=slot, duration=duration):
                if (victim := self.current[slot]) is not None and victim.alive:
                    self.net.pause(victim.attachment)
                    await trio.sleep(duration)
                    if victim.alive:
                        self.net.resume(victim.attachment)
            case Partition(side=side, duration=duration, one_way=one_way):
                paths = [(a, b) for a in side for b in range(self.size) if b not in side]
                paths += [] if one_way else [(b, a) for a, b in paths]
                for a, b in paths:
                    self.net.cut(address[a], address[b])
                await trio.sleep(duration)
                for a, b in paths:
                    self.net.mend(address[a], address[b])
            case Lossy(a=a, b=b, duration=duration, loss=loss):
                self.net.set_loss(address[a], address[b], loss)
                await trio.sleep(duration)
                self.net.set_loss(address[a], address[b], 0.0)
            case Slow(a=a, b=b, duration=duration, extra=extra):
                self.net.set_slowness(address[a], address[b], extra)
                await trio.sleep(duration)
                self.net.set_slowness(address[a], address[b], 0.0)
            case ResetHandshake(a=a, b=b, after=after):
                self.net.arm_reset(address[a], address[b], after)
            case ResetLinks(a=a, b=b):
                self.net.reset_between(address[a], address[b])
            case Zombie(slot=slot, duration=duration, stale_routes=stale):
                await self._zombie(slot, duration, stale)
            case ClockJump(slot=slot, delta=delta):
                self.skews[slot] += delta
        self.dirty = True

    async def _zombie(self, slot: int, duration: float, stale_routes: tuple[int, ...]) -> None:
        """The orchestrator gives up on a live process and starts a replacement; the old one lives on a while."""
        zombie = self.current[slot]
        if zombie is None or not zombie.alive:
            return
        zombie.attachment.displaced = True
        for listener in self.net.listeners.get(zombie.attachment.address, []):
            if listener.owner is zombie.attachment:
                for source in stale_routes:
                    self.net.route_stale(self.config.cluster.peers[source], listener)
        self.current[slot] = None
        zombie.ended.set()
        await trio.sleep(duration)
        self.kill(zombie, silent=False)

    async def _inject_faults(self) -> None:
        async with trio.open_nursery() as nursery:
            for fault in self.schedule.faults:
                await trio.sleep_until(fault.at)
                nursery.start_soon(self._apply, fault)

    def check_exit_counts(self) -> None:
        """The design's exits per process: fixed, at most one 75 per epoch the controller issued; auto, per fault.

        A process the controller started stale (an older epoch, on purpose) is fenced by design and not counted,
        nor is a zombie: it is the fault itself, not a surviving process.
        """
        limit = len(self.schedule.faults) if self.auto else self.epoch_bumps
        for slot in range(self.size):
            fenced = [
                p
                for p in self.processes
                if p.slot == slot and p.exit_code == ExitCode.FENCED and not p.stale and not p.attachment.displaced
            ]
            if len(fenced) > limit:
                self.checker.violate(
                    self.schedule.last_fault,
                    f"exits: slot {slot} exited 75 {len(fenced)} times, more than {limit} "
                    f"({'faults' if self.auto else 'epochs issued'})",
                )

    # ----- the run -----

    async def main(self) -> float | None:
        """Run the schedule; the virtual time from the last fault to convergence, None if not within the bound."""
        async with trio.open_nursery() as nursery:
            self.net.attach(nursery)
            for slot in range(self.size):
                nursery.start_soon(self._keep_slot, slot)
            nursery.start_soon(self._inject_faults)
            last_fault = self.schedule.last_fault
            await trio.sleep_until(last_fault)
            self.note("last fault over")
            self.checker.safety.timely_from = self.net.settled_by()
            hold = HOLD_TIMEOUTS * self.config.timeouts.heartbeat_timeout
            converged_after = None
            with trio.move_on_at(last_fault + self.bound + hold):
                while self.converged_at is None or trio.current_time() < self.converged_at + hold:
                    await trio.sleep(POLL)
                converged_after = max(0.0, self.converged_at - last_fault)
            self.finished = True
            nursery.cancel_scope.cancel()
        return converged_after


class _CheckAfterSteps(trio.abc.Instrument):
    """Runs the world's checks after every task step that changed something (events, kills, spawns)."""

    def __init__(self, world: World) -> None:
        self._world = world

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._world.dirty:
            self._world.check()


def run(schedule: Schedule, variant: str | None = None) -> Outcome:
    """Run one schedule to its end, deterministically; ``variant`` names a deliberately broken protocol rule."""
    world = World(schedule)
    logger.disable("meshd")
    failure = None
    converged_after = None
    broken = VARIANTS[variant]() if variant is not None else contextlib.nullcontext()
    try:
        with broken, deterministic_scheduling(schedule.seed):
            converged_after = trio.run(
                world.main,
                clock=trio.testing.MockClock(autojump_threshold=0),
                instruments=[_CheckAfterSteps(world)],
            )
    except Exception:
        failure = "the simulation raised:\n" + traceback.format_exc()
    finally:
        logger.enable("meshd")
    world.check_exit_counts()
    if failure is None and world.checker.violations:
        failure = f"{len(world.checker.violations)} safety violation(s)"
    if failure is None and converged_after is None:
        failure = f"did not converge within B = {world.bound:.2f}s of the last fault"
    return Outcome(
        seed=schedule.seed,
        size=schedule.size,
        mode=schedule.mode,
        last_fault=schedule.last_fault,
        bound=world.bound,
        converged_after=converged_after,
        exits=world.exits,
        violations=world.checker.violations,
        failure=failure,
        trace=world.trace,
    )
