"""A world of mesh models for exhaustive exploration: the real rules (``meshd.core``), abstract I/O, no time.

Every process is a ``MeshModel``; every connection is two FIFO queues of messages (hello, answer, view, end of
stream), delivered one at a time in any order across connections; every transition calls the model's own methods
and applies its effects the way the daemon does. Nothing here decides anything about the protocol: only *when*
things happen is chosen by the explorer, and *what* they decide is the code's.

Abstractions (the mechanics are coarse, the rules are the code's):
- no clocks: a timeout is a transition that may happen at any time for a connection whose far end is dead or closed
  (its end of stream is then in flight anyway) or, as a fault, for a live link (a pause or a partition);
- a kill -9 closes the process's connections: everything it sent is still delivered, then the end of stream, so a
  hello from a dead process can be judged after its death (a *ghost hello*, as a listen backlog serves it);
- the orchestrator restarts a slot whose process exited or died, at any later time; a zombie is a process the
  orchestrator gave up on while it still runs: a dial to its slot may reach it or its replacement until it dies;
- a process dials a peer slot whenever it has no link to it and no dial to it in progress (its retry loop);
- generations are compared, never read: a birth or a mint takes any position among the generations that exist
  (above the floor, for a mint), which is what an arbitrary wall clock allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from typing import Any

from attrs import define, field, frozen

from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Identity
from meshd.core.mesh import DropLinks, Effect, Exit, MeshModel, Publish, SendView, StartLinks
from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Answer, Epoch, Hello, View
from meshd.errors import ExitCode

# The range generations are placed in (a new one goes half way between its neighbours).
EPOCH_SPACE = 2**62
# The faults a run may contain: kill -9, a zombie, a live link timed out (pause, partition), a tie-break loser
# closed before the peer concluded the winner (a message slower than a handshake timeout).
FAULT_KINDS = frozenset({"kill", "zombie", "timeout", "linger"})
# The controller's first epoch (fixed epochs).
FIRST_EPOCH = Epoch(1)
# Transitions are untimed; the models still stamp events with a time.
NOW = 0.0


class NeedMint(Exception):
    """A transition minted a generation: the explorer runs it once per position the new generation may take."""

    def __init__(self, floor: Epoch | None) -> None:
        super().__init__(f"a generation above {floor}")
        self.floor = floor


class Oracle:
    """The minter of every model in a world: it answers with the explorer's choice, or asks for one."""

    def __init__(self) -> None:
        self.choice: Epoch | None = None
        self.used = False

    def __call__(self, floor: Epoch | None) -> Epoch:
        if self.choice is None or self.used:
            raise NeedMint(floor)
        self.used = True
        return self.choice


@frozen
class Message:
    kind: str  # "hello", "answer", "view", "eof"
    body: Hello | Answer | View | None = None


@define
class End:
    """One end of a connection: its process, and how far its exchange got."""

    pid: int
    dialer: bool
    phase: str = "hello"  # "hello" (awaiting the peer's), "answer" (awaiting the peer's), "link", "closed"
    exchange: Any = None  # meshd.core.mesh.Exchange once judged
    lingering: bool = False  # a tie-break loser kept open for a while, not the link
    sent: Epoch | None = None  # the epoch of the hello this end sent

    def copy(self) -> End:
        return End(self.pid, self.dialer, self.phase, self.exchange, self.lingering, self.sent)


@define
class Conn:
    cid: int
    ends: tuple[End, End]  # (dialer end, listener end)
    queues: tuple[list[Message], list[Message]]  # queues[i]: messages in flight *to* ends[i]


@define
class Proc:
    pid: int
    slot: int
    incarnation: int
    model: MeshModel | None  # None once dead
    zombie: bool = False  # the orchestrator gave up on it and started a replacement; it still runs
    born_after_ready: frozenset[Epoch] = frozenset()  # ghost: generations some process was ready in before its birth

    @property
    def alive(self) -> bool:
        return self.model is not None


@define
class World:
    """The whole state: processes, connections, the orchestrator's bookkeeping and the ghost variables."""

    size: int
    mode: EpochMode
    max_faults: int
    procs: dict[int, Proc] = field(factory=dict)
    conns: dict[int, Conn] = field(factory=dict)
    current: list[int | None] = field(factory=list)  # the orchestrator's process of each slot (None: to restart)
    exits: list[int] = field(factory=list)  # exits 75 per slot
    faults: int = 0
    zombies_ever: bool = False  # a zombie existed in this run (assumption A5 broken: S2/S4 are not claimed)
    births: list[int] = field(factory=list)  # processes started per slot
    controller: Epoch = FIRST_EPOCH  # fixed epochs: the newest epoch the controller gave
    epochs_issued: int = 0  # fixed epochs: how many times the controller bumped its epoch
    ready_views: frozenset[tuple[Epoch, tuple[int, ...]]] = frozenset()  # ghost: (generation, view) ever ready
    next_pid: int = 0
    next_cid: int = 0
    kinds: frozenset[str] = FAULT_KINDS  # the faults that may happen: kill, zombie, timeout, linger
    crossed: bool = True  # both ends of a pair may dial at once (the tie-break); False: one exchange per pair at a time
    oracle: Oracle = field(factory=Oracle)  # shared by every copy: transitions run one at a time

    @property
    def auto(self) -> bool:
        return self.mode is EpochMode.AUTO

    def clone(self) -> World:
        twin = object.__new__(World)
        for name in World.__slots__:
            if name != "__weakref__":
                object.__setattr__(twin, name, getattr(self, name))
        twin.procs = {}
        for pid, proc in self.procs.items():
            model = None if proc.model is None else proc.model.copy()
            twin.procs[pid] = Proc(proc.pid, proc.slot, proc.incarnation, model, proc.zombie, proc.born_after_ready)
        twin.conns = {
            cid: Conn(cid, (conn.ends[0].copy(), conn.ends[1].copy()), (list(conn.queues[0]), list(conn.queues[1])))
            for cid, conn in self.conns.items()
        }
        twin.current = list(self.current)
        twin.exits = list(self.exits)
        twin.births = list(self.births)
        return twin

    # ----- queries -----

    def live(self) -> Iterator[Proc]:
        return (proc for proc in self.procs.values() if proc.alive)

    def epochs(self) -> list[Epoch]:
        """Every generation the state refers to, sorted (where a new one may be placed)."""
        found: set[Epoch] = set()
        for proc in self.live():
            assert proc.model is not None
            found.add(proc.model.me.epoch)
        for conn in self.conns.values():
            for queue in conn.queues:
                for message in queue:
                    epoch = getattr(message.body, "epoch", None)
                    if epoch is not None:
                        found.add(epoch)
        found |= {epoch for epoch, _ in self.ready_views}
        return sorted(found)

    def positions(self, floor: Epoch | None) -> list[Epoch]:
        """A generation in every gap above ``floor`` (everywhere, without one) among those the state refers to."""
        known = self.epochs()
        bounds = [Epoch(0), *known, Epoch(EPOCH_SPACE)]
        choices = []
        for low, high in itertools.pairwise(bounds):
            if floor is not None and high <= floor:
                continue
            low = max(low, floor) if floor is not None else low
            middle = (low.major + high.major) // 2
            if not low.major < middle < high.major:
                raise RuntimeError(f"no room for a generation between {low} and {high}")
            choices.append(Epoch(middle))
        return choices

    def ready_procs(self) -> list[Proc]:
        return [proc for proc in self.live() if proc.model is not None and proc.model.state is MeshState.READY]

    def converged(self) -> bool:
        """Every slot's current process is alive and ready, all in one generation with one view, both ends of every
        link hold the same connection with no end of stream on its way, no other connection is open, and no zombie
        runs: nothing can change any more."""
        procs = [self.procs[pid] for pid in self.current if pid is not None]
        if len(procs) != self.size or any(proc.zombie for proc in self.live()):
            return False
        views = set()
        for proc in procs:
            model = proc.model
            if model is None or model.state is not MeshState.READY:
                return False
            views.add(model.view())
            for peer, slot in model.slots.items():
                cid, side = slot.current  # type: ignore[misc]
                conn = self.conns[cid]
                far = self.procs[conn.ends[1 - side].pid]
                if far.slot != peer or far.model is None or far.model.slots[proc.slot].current != (cid, 1 - side):
                    return False  # the two ends do not (yet) hold the same connection as their link
                if any(message.kind == "eof" for message in conn.queues[side]):
                    return False
        links = {slot.current for proc in procs if proc.model for slot in proc.model.slots.values()}
        if any(token(conn, side) not in links for conn in self.conns.values() for side in (0, 1)):
            return False  # an exchange in progress, or a tie-break loser: the links may still move
        return len(views) == 1 and next(iter(views)).incarnations == tuple(proc.incarnation for proc in procs)

    def settled(self) -> bool:
        """No fault may happen any more and every zombie is gone: the time after t0."""
        return self.faults >= self.max_faults and not any(proc.zombie for proc in self.live())

    # ----- the orchestrator -----

    def birth_epochs(self, slot: int) -> list[Epoch | None]:
        """The epochs a new process of ``slot`` may start with (auto: any position; fixed: the controller's)."""
        if self.auto:
            return list(self.positions(None))
        return [self.controller]

    def spawn(self, slot: int, epoch: Epoch | None) -> Proc:
        pid = self.next_pid
        self.next_pid += 1
        self.births[slot] += 1
        incarnation = slot * 16 + self.births[slot]  # unique per run; equality is all the rules look at
        addresses = [Address(f"10.0.0.{index}", 7000) for index in range(self.size)]
        assert epoch is not None
        identity = Identity("x", slot, self.size, epoch, incarnation, self.auto)
        model = MeshModel(identity, addresses, self.mode, NOW, self.oracle if self.auto else None)
        born_after = frozenset(generation for generation, _ in self.ready_views)
        proc = Proc(pid, slot, incarnation, model, born_after_ready=born_after)
        self.procs[pid] = proc
        self.current[slot] = pid
        return proc

    def restart_epoch(self, slot: int, died: bool) -> None:
        """R6: a slot whose process died gets an epoch above every one given; one that exited 75 the current one."""
        if not self.auto and died:
            self.controller = Epoch(self.controller.major + 1)
            self.epochs_issued += 1

    # ----- processes -----

    def kill(self, pid: int, *, code: int | None) -> None:
        """The process ends (``code`` 75 when fenced, None when killed): its kernel closes its connections."""
        proc = self.procs[pid]
        proc.model = None
        for conn in list(self.conns.values()):
            for side, end in enumerate(conn.ends):
                if end.pid == pid and end.phase != "closed":
                    self._close(conn, side)
        if self.current[proc.slot] == pid:
            self.current[proc.slot] = None
            self.restart_epoch(proc.slot, died=code is None)
        if code == ExitCode.FENCED and not proc.zombie:  # a zombie is the fault itself, not a survivor
            self.exits[proc.slot] += 1
        proc.zombie = False

    def _close(self, conn: Conn, side: int) -> None:
        """``side`` closes its end: the far end reads the end of stream after whatever is in flight."""
        end = conn.ends[side]
        end.phase = "closed"
        end.lingering = False
        conn.queues[side].clear()  # a closed end reads nothing more
        far = conn.ends[1 - side]
        if far.phase == "closed":
            return
        if far.phase == "hello" and not conn.queues[1 - side]:
            # Reduction: the far end would read the end of stream next, before any hello, and that changes nothing
            # but this connection, so it closes at once.
            far.phase = "closed"
            return
        conn.queues[1 - side].append(Message("eof"))

    # ----- applying a model's effects, as the daemon does -----

    def apply(self, pid: int, effects: list[Effect]) -> None:
        for effect in effects:
            if self.procs[pid].model is None:
                return  # the process exited part way
            match effect:
                case SendView(peers=peers):
                    for peer in peers:
                        self._send_view(pid, peer)
                case DropLinks(tokens=tokens):
                    for token in tokens:
                        self._end_token(token)
                case Exit(code=code):
                    self.kill(pid, code=code)
                case Publish() | StartLinks():
                    pass

    def _send_view(self, pid: int, peer: int) -> None:
        model = self.procs[pid].model
        assert model is not None
        token = model.slots[peer].current
        if token is None:
            return
        cid, side = token  # type: ignore[misc]
        conn = self.conns[cid]
        conn.queues[1 - side].append(Message("view", model.view()))

    def _end_token(self, token: Hashable) -> None:
        cid, side = token  # type: ignore[misc]
        conn = self.conns.get(cid)
        if conn is not None and conn.ends[side].phase != "closed":
            self._close(conn, side)

    def tidy(self) -> None:
        """Forget connections both ends closed (nothing in flight on them can be read any more)."""
        for cid in [cid for cid, conn in self.conns.items() if all(end.phase == "closed" for end in conn.ends)]:
            del self.conns[cid]


def token(conn: Conn, side: int) -> tuple[int, int]:
    return (conn.cid, side)


def peer_slot(world: World, conn: Conn, side: int) -> int:
    return world.procs[conn.ends[1 - side].pid].slot


def linked(model: MeshModel, peer: int) -> bool:
    return model.rows[peer].state is PeerState.UP
