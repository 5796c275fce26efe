"""A fault-injecting network for the deterministic simulation, in trio's virtual time.

It behaves like TCP between hosts as far as a daemon can tell: bytes of one connection arrive in order after a
latency, or not at all while the path is cut. Every fault is silent unless TCP itself would speak:

- a partition (both ways or one way) holds segments, SYNs included, until it heals, then they arrive: the peers see
  silence, never a reset; a connection one end closed meanwhile is half-open, and the other end's next segment is
  answered with a reset;
- a lossy path loses segments, each lost one arriving a retransmission timeout later (TCP's head-of-line delay);
- a slow path adds latency;
- a paused process (SIGSTOP) sends, reads and accepts nothing and its closes wait for it, but its kernel keeps the
  connections open and completes handshakes into its listen backlog, which the process serves after it resumes
  (a hello whose sender died meanwhile is then read and judged: a ghost hello);
- a killed process's kernel closes its sockets (FIN), a crashed host says nothing at all until it is back up;
- a reset (a middlebox, or a host rebooting under a connection) breaks a connection at both ends;
- a black-holed connection loses everything either end sends from then on, closes and resets included: silence
  both ways, for good (a firewall that dropped the flow's state).

Addresses are hosts: each slot's address is one host, and a displaced process (a zombie whose address moved to its
replacement) keeps a listener that some hosts may still route to.

The simulation draws latencies and delivers on a grid (DELIVERY_TICK); the exact-time preset (EXACT_LATENCY, no
tick), for the virtual-time tests, delivers a segment at the very instant it is sent, so those tests can assert
what a timer did to the exact virtual instant.
"""

from __future__ import annotations

import errno
import heapq
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio
from attrs import define, field

from meshd.core.address import Address

# Connections that may wait for accept(), as the kernel's listen backlog allows; beyond it, connects are refused.
LISTEN_BACKLOG = 128
# TCP's first retransmission timeout: a lost segment arrives this much later (doubling for each repeated loss).
RETRANSMIT_TIMEOUT = 0.2
# Segments arrive on a grid of this step (a fraction of the 0.2-2 ms latencies): segments sent at one instant, such
# as the heartbeats of every link on their shared grid, then arrive at a few instants and one timer wakes them all.
DELIVERY_TICK = 0.001
# Losses in a row after which a segment is taken to arrive anyway (bounds the head-of-line delay at ~6 s).
MAX_RETRANSMITS = 5
# The exact-time preset's latency (with ``tick=None``): a segment sent at virtual time t arrives at t.
EXACT_LATENCY = (0.0, 0.0)


@define(eq=False)
class Attachment:
    """One process as the network sees it: where it lives and whether it runs."""

    pid: int
    address: Address
    paused: bool = False
    alive: bool = True
    displaced: bool = False  # a zombie: its address now belongs to a newer process elsewhere
    refused_binds: int = 0  # listen() calls refused because the port was busy
    ends: list[SimStream] = field(factory=list)


@define(eq=False)
class Segment:
    data: bytes  # b"" is the FIN
    arrival: float
    reset: bool = False
    held: bool = False  # it reached a cut path and waits for the heal, then for one more latency


class Wire:
    """One direction of a connection: segments in flight, in order, to the end that reads them."""

    def __init__(self, source: Attachment, target: Attachment) -> None:
        self.source = source
        self.target = target
        self.segments: deque[Segment] = deque()
        self.last_arrival = 0.0
        self.arrived = trio.Event()  # set (and replaced) whenever the receiver should look again
        self.receiver: SimStream | None = None
        self.reverse: Wire | None = None
        self.blackholed = False  # whatever is sent from now on is lost

    def wake(self) -> None:
        """Make the receiver look again (a segment arrived, or the path or the end changed)."""
        self.arrived.set()
        self.arrived = trio.Event()


class SimStream(trio.abc.Stream):
    """One end of a simulated TCP connection."""

    def __init__(self, network: SimNetwork, connection: SimConnection, owner: Attachment, out: Wire, inp: Wire) -> None:
        self._network = network
        self.connection = connection
        self.owner = owner
        self.outbound = out
        self.inbound = inp
        inp.receiver = self
        self.closed = False  # closed by its owner (or its owner's kernel, at death)
        self.vanished = False  # its host crashed: segments to it are lost without a word
        self.broken = False  # a reset arrived
        self._eof = False
        self._fin_owed = False  # closed while paused: the FIN goes out at resume

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._network.wait_running(self.owner)
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        if self.broken:
            raise trio.BrokenResourceError("connection reset by peer")
        self._network.transmit(self.outbound, bytes(data))
        # Half a checkpoint: a send never blocks here, and a full yield per frame would double the simulation's
        # steps; cancellation is still honoured.
        await trio.lowlevel.checkpoint_if_cancelled()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        waited = False  # a call that waited has yielded already: no second trip through the scheduler
        while True:
            if self.closed:
                raise trio.ClosedResourceError("stream closed")
            await self._network.wait_running(self.owner)
            wire = self.inbound
            due = self._network.due(wire)
            if due is not None or self._eof:  # after the FIN, reads return b"" until a reset arrives
                if not waited:
                    await trio.lowlevel.checkpoint()
                return self._take(due, max_bytes) if due is not None else b""
            await wire.arrived.wait()
            waited = True

    def _take(self, segment: Segment, max_bytes: int | None) -> bytes:
        if segment.reset:
            self.inbound.segments.popleft()
            self.broken = True
            raise trio.BrokenResourceError("connection reset by peer")
        if not segment.data:
            self.inbound.segments.popleft()
            self._eof = True
            return b""
        if max_bytes is None or max_bytes >= len(segment.data):
            self.inbound.segments.popleft()
            return segment.data
        chunk, segment.data = segment.data[:max_bytes], segment.data[max_bytes:]
        return chunk

    async def send_eof(self) -> None:
        raise NotImplementedError("meshd never half-closes a connection")

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close this end (the owner's close, or its kernel's at death): a FIN goes out, later data gets a reset."""
        if self.closed:
            return
        self.closed = True
        self.inbound.wake()
        if self.broken or self.vanished:
            return
        if self.owner.paused and self.owner.alive:
            self._fin_owed = True
        else:
            self._network.transmit(self.outbound, b"")
        self._network.answer_in_flight(self.inbound)

    def send_owed_fin(self) -> None:
        """The owner closed this end while paused; now it runs (or its kernel takes over at death): send the FIN."""
        if self._fin_owed:
            self._fin_owed = False
            self._network.transmit(self.outbound, b"")

    def vanish(self) -> None:
        """The host died under this end: nothing more is sent, and nothing arriving is answered."""
        self.vanished = True
        self.closed = True
        self.inbound.wake()


@define(eq=False)
class SimConnection:
    number: int
    opened: float  # virtual time the handshake completed
    source: Address  # the dialer's host
    target: Address  # the address it dialed
    dialer: SimStream | None = None
    listener: SimStream | None = None

    @property
    def ends(self) -> tuple[SimStream, ...]:
        return tuple(end for end in (self.dialer, self.listener) if end is not None)

    @property
    def open(self) -> bool:
        """Neither end is closed yet (by its owner, its owner's kernel, or a host crash)."""
        return not any(end.closed for end in self.ends)


class SimListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, network: SimNetwork, owner: Attachment) -> None:
        self._network = network
        self.owner = owner
        self.address = owner.address
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](LISTEN_BACKLOG)
        self.closed = False

    def offer(self, stream: SimStream) -> None:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError) as exc:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused") from exc

    def queued(self) -> int:
        """Connections waiting in the backlog (``meshd.net.queued``)."""
        return self._receive.statistics().current_buffer_used

    async def accept(self) -> trio.abc.Stream:
        """The next connection of the backlog; a paused process takes none (SIGSTOP: the kernel keeps completing
        handshakes into the backlog, and the process serves them after it resumes, hellos of the dead included)."""
        await self._network.wait_running(self.owner)
        stream = await self._receive.receive()
        await self._network.wait_running(self.owner)  # paused while it waited: served after the resume
        return stream

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._network.unbind(self)
            self._send.close()
            self._receive.close()


class SimNetwork:
    """Hosts, listeners and connections, with the faults the simulation's schedule turns on and off."""

    def __init__(
        self, rng: random.Random, base_latency: tuple[float, float], *, tick: float | None = DELIVERY_TICK
    ) -> None:
        self._rng = rng
        self.base_latency = base_latency
        self.tick = tick  # the delivery grid's step; None: segments arrive when their latency says, exactly
        self.listeners: dict[Address, list[SimListener]] = {}
        self.connections: list[SimConnection] = []  # the open ones (closed ones are pruned now and then)
        self.opened = 0
        self.down_hosts: set[Address] = set()
        self.busy_ports: set[Address] = set()
        self._cut: dict[tuple[Address, Address], int] = {}  # source host -> target host: partitions holding it
        self._loss: dict[frozenset[Address], float] = {}
        self._slowness: dict[frozenset[Address], float] = {}
        self._stale_routes: dict[tuple[Address, Address], SimListener] = {}
        self._armed_resets: dict[frozenset[Address], list[float]] = {}
        self._changed = trio.Event()
        self._start_soon: Callable[[Callable[[], Awaitable[object]]], object] | None = None
        self._arrivals: list[tuple[float, int, Wire]] = []  # (arrival, sequence, wire), a heap
        self._sequence = 0
        self._courier_wait: trio.CancelScope | None = None

    # ----- faults, as the schedule turns them on and off -----

    def attach(self, nursery: trio.Nursery | None = None) -> None:
        """Start delivering segments, in ``nursery`` or else in a system task (it lasts as long as the trio run);
        armed resets run there too (they fire a while after their connection opens)."""
        self._start_soon = nursery.start_soon if nursery is not None else trio.lowlevel.spawn_system_task
        self._start_soon(self._courier)

    def cut(self, source: Address, target: Address) -> None:
        key = (source, target)
        self._cut[key] = self._cut.get(key, 0) + 1

    def mend(self, source: Address, target: Address) -> None:
        key = (source, target)
        self._cut[key] -= 1
        if not self._cut[key]:
            del self._cut[key]
        self.conditions_changed()

    def set_loss(self, a: Address, b: Address, probability: float) -> None:
        self._loss[frozenset((a, b))] = probability

    def set_slowness(self, a: Address, b: Address, extra: float) -> None:
        self._slowness[frozenset((a, b))] = extra

    def route_stale(self, source: Address, listener: SimListener) -> None:
        """``source`` keeps reaching ``listener`` at its address although a newer process bound it (stale ARP/DNS)."""
        self._stale_routes[(source, listener.address)] = listener

    def clear_stale_routes(self, listener: SimListener) -> None:
        for key in [key for key, stale in self._stale_routes.items() if stale is listener]:
            del self._stale_routes[key]

    def arm_reset(self, a: Address, b: Address, after: float) -> None:
        """The next connection opened between these hosts is reset ``after`` seconds later (mid-handshake)."""
        self._armed_resets.setdefault(frozenset((a, b)), []).append(after)

    def reset_between(self, a: Address, b: Address) -> None:
        """Reset every open connection between two hosts, as a middlebox losing its state would."""
        for connection in self.connections:
            ends = connection.ends
            if len(ends) == 2 and {ends[0].owner.address, ends[1].owner.address} == {a, b}:
                self.reset(connection)

    def reset(self, connection: SimConnection) -> None:
        """Break one connection at both ends at once: each open end reads a reset now."""
        now = trio.current_time()
        for end in connection.ends:
            if not end.closed:
                self._push(end.inbound, Segment(b"", now, reset=True))

    def blackhole(self, connection: SimConnection) -> None:
        """Lose everything either end of ``connection`` sends from now on, closes and resets included: each end
        sees silence for good, as behind a firewall that dropped the flow (segments already in flight arrive)."""
        for end in connection.ends:
            end.outbound.blackholed = True

    def pause(self, process: Attachment) -> None:
        process.paused = True

    def resume(self, process: Attachment) -> None:
        process.paused = False
        for end in process.ends:
            end.send_owed_fin()
        self.conditions_changed()

    def kill(self, process: Attachment, *, silent: bool) -> None:
        """The process dies. Its kernel closes every socket (FIN), unless the whole host died (``silent``)."""
        process.alive = False
        process.paused = False
        for listeners in list(self.listeners.values()):
            for listener in list(listeners):
                if listener.owner is process:
                    listener.close()
        for end in process.ends:
            if silent:
                end.vanish()
            else:
                end.close()
                end.send_owed_fin()
        process.ends.clear()
        if silent and not process.displaced:
            self.down_hosts.add(process.address)
        self.conditions_changed()

    def conditions_changed(self) -> None:
        """Wake every reader and connector: a path opened, a process resumed or a host came back."""
        self._changed.set()
        self._changed = trio.Event()
        self.connections = [c for c in self.connections if not all(end.closed for end in c.ends)]
        for connection in self.connections:
            for end in connection.ends:
                end.inbound.wake()

    # ----- delivery -----

    def _push(self, wire: Wire, segment: Segment) -> None:
        if wire.blackholed:
            return
        wire.segments.append(segment)
        self._schedule(wire, segment.arrival)

    def _schedule(self, wire: Wire, arrival: float) -> None:
        """Wake ``wire``'s receiver at ``arrival``: one courier timer serves every wire (see DELIVERY_TICK)."""
        self._sequence += 1
        heapq.heappush(self._arrivals, (arrival, self._sequence, wire))
        if self._courier_wait is not None and arrival < self._courier_wait.deadline:
            self._courier_wait.deadline = arrival

    async def _courier(self) -> None:
        arrivals = self._arrivals
        while True:
            now = trio.current_time()
            while arrivals and arrivals[0][0] <= now:
                heapq.heappop(arrivals)[2].wake()
            with trio.CancelScope(deadline=arrivals[0][0] if arrivals else math.inf) as self._courier_wait:
                await trio.sleep_forever()
            self._courier_wait = None

    def _on_tick(self, when: float) -> float:
        """``when`` moved up onto the delivery grid, if there is one."""
        tick = self.tick
        return when if tick is None else math.ceil(when / tick) * tick

    # ----- what a daemon's calls do -----

    def settled_by(self) -> float:
        """When everything already sent will have arrived on a path that is now timely (at the latest)."""
        return max([trio.current_time(), *(arrival for arrival, _, _ in self._arrivals)])

    def is_cut(self, source: Address, target: Address) -> bool:
        return (source, target) in self._cut or source in self.down_hosts or target in self.down_hosts

    def latency(self, a: Address, b: Address) -> float:
        low, high = self.base_latency
        delay = self._rng.uniform(low, high) + self._slowness.get(frozenset((a, b)), 0.0)
        loss = self._loss.get(frozenset((a, b)), 0.0)
        retransmits = 0
        while retransmits < MAX_RETRANSMITS and loss and self._rng.random() < loss:
            retransmits += 1
        return delay + RETRANSMIT_TIMEOUT * (2**retransmits - 1)

    def transmit(self, wire: Wire, data: bytes) -> None:
        source, target = wire.source.address, wire.target.address
        arrival = max(wire.last_arrival, self._on_tick(trio.current_time() + self.latency(source, target)))
        wire.last_arrival = arrival
        receiver = wire.receiver
        if receiver is not None and receiver.vanished and target in self.down_hosts:
            return  # lost: nobody is there to answer
        self._push(wire, Segment(data, arrival))
        if data and receiver is not None and receiver.closed:
            self._reset_back(wire)

    def answer_in_flight(self, wire: Wire) -> None:
        """Data already on its way to a closed end will be answered with a reset, as the kernel does."""
        if any(segment.data for segment in wire.segments):
            self._reset_back(wire)

    def _reset_back(self, wire: Wire) -> None:
        reverse = wire.reverse
        assert reverse is not None
        back = self.latency(wire.target.address, wire.source.address)
        arrival = max(reverse.last_arrival, self._on_tick(wire.last_arrival + back))
        reverse.last_arrival = arrival
        self._push(reverse, Segment(b"", arrival, reset=True))

    def due(self, wire: Wire) -> Segment | None:
        """The segment the target may read now, if any; moves segments across heals."""
        if not wire.segments:
            return None
        head = wire.segments[0]
        now = trio.current_time()
        source, target = wire.source.address, wire.target.address
        if head.held:
            if self.is_cut(source, target):
                return None
            head.held = False
            head.arrival = max(self._on_tick(now + self.latency(source, target)), head.arrival)
            self._schedule(wire, head.arrival)
            return None
        if head.arrival > now:
            return None
        if self.is_cut(source, target):
            head.held = True
            return None
        return head

    async def wait_running(self, process: Attachment) -> None:
        while process.paused:
            await self._changed.wait()

    async def connect(self, process: Attachment, address: Address) -> SimStream:
        await self.wait_running(process)
        while self.is_cut(process.address, address) or self.is_cut(address, process.address):
            await self._changed.wait()  # the SYN (or its answer) is lost; TCP keeps retrying
        await trio.sleep(self.latency(process.address, address) + self.latency(address, process.address))
        listener = self._route(process.address, address)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
        self.opened += 1
        connection = SimConnection(self.opened, trio.current_time(), process.address, address)
        forward, backward = Wire(process, listener.owner), Wire(listener.owner, process)
        forward.reverse, backward.reverse = backward, forward
        dialer = SimStream(self, connection, process, forward, backward)
        accepted = SimStream(self, connection, listener.owner, backward, forward)
        listener.offer(accepted)
        connection.dialer, connection.listener = dialer, accepted
        self.connections.append(connection)
        process.ends.append(dialer)
        listener.owner.ends.append(accepted)
        self._fire_armed_reset(process.address, address, connection)
        return dialer

    def _route(self, source: Address, address: Address) -> SimListener | None:
        stale = self._stale_routes.get((source, address))
        if stale is not None and not stale.closed:
            return stale
        listeners = self.listeners.get(address)
        return listeners[-1] if listeners else None

    def _fire_armed_reset(self, a: Address, b: Address, connection: SimConnection) -> None:
        pending = self._armed_resets.get(frozenset((a, b)))
        if not pending:
            return
        after = pending.pop(0)
        assert self._start_soon is not None, "arm_reset() before attach()"

        async def reset_later() -> None:
            await trio.sleep(after)
            self.reset(connection)

        self._start_soon(reset_later)

    async def listen(self, process: Attachment) -> Sequence[SimListener]:
        await trio.lowlevel.checkpoint()
        address = process.address
        holders = [listener for listener in self.listeners.get(address, []) if not listener.owner.displaced]
        if holders or address in self.busy_ports:
            process.refused_binds += 1
            raise OSError(errno.EADDRINUSE, "address already in use")
        listener = SimListener(self, process)
        self.listeners.setdefault(address, []).append(listener)
        if address in self.down_hosts:
            self.down_hosts.discard(address)
            self.conditions_changed()
        return [listener]

    def unbind(self, listener: SimListener) -> None:
        listeners = self.listeners.get(listener.address, [])
        if listener in listeners:
            listeners.remove(listener)
        self.clear_stale_routes(listener)

    def for_process(self, process: Attachment) -> ProcessNetwork:
        return ProcessNetwork(self, process)


class ProcessNetwork:
    """The Network one daemon sees (``meshd.net.Network``): it dials from, and listens on, its own host."""

    def __init__(self, network: SimNetwork, process: Attachment) -> None:
        self.network = network
        self.process = process

    async def connect(self, address: Address) -> trio.abc.Stream:
        return await self.network.connect(self.process, address)

    async def listen(self, address: Address) -> Sequence[trio.abc.Listener[trio.abc.Stream]]:
        assert address == self.process.address, "a daemon listens on its own slot's address"
        return await self.network.listen(self.process)
