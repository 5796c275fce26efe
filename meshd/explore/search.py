"""Exhaustive search: every reachable state of a small cluster under the real rules, every interleaving.

Safety is checked in every state (``check``); liveness over the whole graph: from every state after the last fault
(``World.settled``) a converged state must be reachable, and every step from a converged state must stay converged.
In a finite graph the two together mean that every run that is fair to each step it keeps enabling ends converged
(every bottom strongly connected component is converged); the timing argument of docs/design.md then bounds how long
that takes.
"""

from __future__ import annotations

import enum
import hashlib
import marshal
import time
from array import array
from collections import deque
from collections.abc import Callable, Hashable

import attrs
from attrs import define, field

from meshd.core.generation import EpochMode
from meshd.core.mesh import MeshModel
from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Epoch
from meshd.explore.steps import BIRTH_CAP, successors
from meshd.explore.world import FAULT_KINDS, World

# Violations kept per kind (the first ones tell the story).
KEEP = 3


@define
class Report:
    """What a search found: counts, violations with the path that reached them, and the liveness verdict."""

    size: int
    mode: str
    faults: int
    kinds: frozenset[str]
    crossed: bool
    states: int = 0
    edges: int = 0
    settled: int = 0
    converged: int = 0
    seconds: float = 0.0
    truncated: bool = False  # the state cap was reached: the search is not exhaustive
    birth_cap_hit: bool = False
    violations: dict[str, list[list[str]]] = field(factory=dict)
    wedged: list[list[str]] = field(factory=list)  # paths to settled states that cannot converge any more

    @property
    def ok(self) -> bool:
        return not self.violations and not self.wedged and not self.truncated and not self.birth_cap_hit

    def lines(self) -> list[str]:
        verdict = "no violation" if self.ok else "FAILED"
        kinds = "/".join(sorted(self.kinds))
        dials = "" if self.crossed else ", no crossed dials"
        out = [
            f"explored {self.size} processes, {self.mode} epochs, up to {self.faults} fault(s) ({kinds}{dials}): "
            f"{self.states} states,"
            f" {self.edges} steps, {self.settled} after the last fault ({self.converged} converged), "
            f"{self.seconds:.1f}s: {verdict}"
        ]
        if self.truncated:
            out.append("  TRUNCATED: the state cap was reached, the search is not exhaustive")
        if self.birth_cap_hit:
            out.append(f"  a slot was started {BIRTH_CAP} times: a restart loop?")
        for kind, paths in self.violations.items():
            out.append(f"  VIOLATION {kind}:")
            out += [f"    {step}" for step in paths[0]]
        if self.wedged:
            out.append(f"  WEDGED: {len(self.wedged)} shown path(s) end in a state that can never converge, e.g.")
            out += [f"    {step}" for step in self.wedged[0]]
        return out


def initial(
    size: int, mode: EpochMode, faults: int, kinds: frozenset[str] = FAULT_KINDS, *, crossed: bool = True
) -> World:
    return World(
        size, mode, faults, current=[None] * size, exits=[0] * size, births=[0] * size, kinds=kinds, crossed=crossed
    )


def explore(
    size: int,
    mode: EpochMode,
    faults: int,
    *,
    kinds: frozenset[str] = FAULT_KINDS,
    crossed: bool = True,
    max_states: int = 2_000_000,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Breadth-first search of every state; safety per state, then liveness over the graph."""
    started = time.monotonic()
    report = Report(size, mode.value, faults, kinds, crossed)
    root = initial(size, mode, faults, kinds, crossed=crossed)
    index: dict[Hashable, int] = {key(root): 0}
    parents = array("q", [-1])
    labels: list[str] = [""]
    edges: list[array] = []
    settled = bytearray()
    converged = bytearray()
    frontier: deque[tuple[int, World]] = deque([(0, root)])
    while frontier:
        number, world = frontier.popleft()
        out = array("q")
        for label, twin in successors(world):
            report.edges += 1
            twin_key = key(twin)
            found = index.get(twin_key)
            if found is None:
                found = len(labels)
                if found >= max_states:
                    report.truncated = True
                    out.append(max_states)  # beyond the cap: not expanded (the liveness check treats it so)
                    continue
                index[twin_key] = found
                parents.append(number)
                labels.append(label)
                report.birth_cap_hit |= any(count >= BIRTH_CAP for count in twin.births)
                for kind in check(twin):
                    paths = report.violations.setdefault(kind, [])
                    if len(paths) < KEEP:
                        paths.append(path(found, parents, labels))
                frontier.append((found, twin))
            out.append(found)
        edges.append(out)
        settled.append(world.settled())
        converged.append(world.converged())
        if progress is not None and number % 10000 == 0:
            progress(number)
    report.states = len(labels)
    report.settled = sum(settled)
    report.converged = sum(1 for s, c in zip(settled, converged, strict=True) if s and c)
    _liveness(report, edges, settled, converged, parents, labels)
    report.seconds = time.monotonic() - started
    return report


def _liveness(
    report: Report, edges: list[array], settled: bytearray, converged: bytearray, parents: array, labels: list[str]
) -> None:
    """Every settled state reaches a converged one; converged states step only to converged states."""
    count = len(edges)
    reverse: list[list[int]] = [[] for _ in range(count)]
    for source, targets in enumerate(edges):
        if not settled[source]:
            continue
        for target in targets:
            if target < count and settled[target]:
                reverse[target].append(source)
            if converged[source] and settled[source] and target < count and not converged[target]:
                paths = report.violations.setdefault("converged state left", [])
                if len(paths) < KEEP:
                    paths.append(path(target, parents, labels))
    reaches = bytearray(count)
    # A state the search did not expand (it stopped at its cap) counts as reaching: a truncated search reports
    # itself as such, and must not report wedges it could not see through.
    unexpanded = {
        source for source, targets in enumerate(edges) if settled[source] and any(t >= count for t in targets)
    }
    queue = deque(number for number in range(count) if settled[number] and (converged[number] or number in unexpanded))
    for number in queue:
        reaches[number] = 1
    while queue:
        number = queue.popleft()
        for source in reverse[number]:
            if not reaches[source]:
                reaches[source] = 1
                queue.append(source)
    for number in range(count):
        if settled[number] and not reaches[number]:
            if len(report.wedged) < KEEP:
                report.wedged.append(path(number, parents, labels))
            else:
                break


def path(number: int, parents: array, labels: list[str]) -> list[str]:
    steps = []
    while number > 0:
        steps.append(labels[number])
        number = parents[number]
    return list(reversed(steps))


# ----- safety -----


def check(world: World) -> list[str]:
    """The safety properties of docs/design.md §4 that this state breaks (names of the properties)."""
    broken = []
    live = {proc.pid: proc for proc in world.live()}
    for conn in world.conns.values():
        a, b = (live.get(end.pid) for end in conn.ends)
        if a is None or b is None or a.model is None or b.model is None:
            continue
        both = all(_is_link(live[end.pid].model, conn, side, world) for side, end in enumerate(conn.ends))
        if both and a.model.me.epoch != b.model.me.epoch:
            broken.append("S1 a link between two epochs")
    ready = world.ready_procs()
    for i, p in enumerate(ready):
        for q in ready[i + 1 :]:
            assert p.model is not None and q.model is not None
            if p.model.me.epoch != q.model.me.epoch:
                continue
            v, w = p.model.view().incarnations, q.model.view().incarnations
            if v != w and any(x == y for x, y in zip(v, w, strict=True)):
                broken.append("D two ready views of one generation share a process but differ")
            if v != w and not world.zombies_ever:
                broken.append("S2 two processes ready in one generation with different views")
    if not world.zombies_ever:
        for proc in ready:
            assert proc.model is not None
            if proc.model.me.epoch in proc.born_after_ready:
                broken.append("S4 a process joined a generation that was ready before it started")
    for proc in ready:
        if not _honest(world, proc):
            broken.append("R3 ready while a member's view differs and nothing in flight tells it")
    limit = world.faults if world.auto else world.epochs_issued
    if any(count > limit for count in world.exits):
        broken.append("exits: a slot exited 75 more often than " + ("faults" if world.auto else "epochs issued"))
    return broken


def _is_link(model: MeshModel, conn: object, side: int, world: World) -> bool:
    from meshd.explore.world import token

    slot = world.procs[conn.ends[1 - side].pid].slot  # type: ignore[attr-defined]
    return model.slots[slot].current == token(conn, side)  # type: ignore[arg-type]


def _honest(world: World, proc: object) -> bool:
    """Ready means every member agrees now, or a message on the way will tell this process otherwise."""
    model = proc.model  # type: ignore[attr-defined]
    mine = model.view()
    for peer, row in model.rows.items():
        if row.state is not PeerState.UP:
            return False
        member = next((p for p in world.live() if p.incarnation == row.incarnation), None)
        if member is None or member.model is None or member.model.view().same_mesh(mine):
            continue  # a dead member's end of stream is in flight (a kill closes its connections)
        link = model.slots[peer].current
        cid, side = link  # type: ignore[misc]
        conn = world.conns[cid]
        if conn.ends[1 - side].lingering:
            continue  # the member let our link go (a tie-break): it closes it within one handshake timeout
        if conn.ends[1 - side].phase == "answer":
            continue  # the member concludes our link when our answer (on its way) arrives: one message away
        if not any(m.kind == "eof" or (m.kind == "view" and not mine.same_mesh(m.body)) for m in conn.queues[side]):
            return False
    return True


# ----- the canonical key of a state -----


def key(world: World) -> Hashable:
    """What identifies a state: generations by rank, connections in a canonical order, statistics left out."""
    ranks = {epoch: rank for rank, epoch in enumerate(world.epochs())}
    who = {pid: (proc.slot, proc.incarnation) for pid, proc in world.procs.items()}

    def message(m: object) -> Hashable:
        body = m.body  # type: ignore[attr-defined]
        return (m.kind, _body(body, ranks))  # type: ignore[attr-defined]

    described = []
    for conn in world.conns.values():
        ends = tuple(
            (
                who[end.pid],
                end.dialer,
                end.phase,
                end.lingering,
                ranks.get(end.sent, -1),
                _exchange(end.exchange, ranks),
            )
            for end in conn.ends
        )
        queues = tuple(tuple(message(m) for m in queue) for queue in conn.queues)
        described.append(((ends, queues), conn.cid))
    described.sort(key=lambda item: marshal.dumps(item[0]))
    order = {cid: rank for rank, (_, cid) in enumerate(described)}
    procs = tuple(
        sorted(
            (
                who[proc.pid],
                proc.zombie,
                world.current[proc.slot] == proc.pid,
                _model(proc.model, ranks, order),
                tuple(sorted(ranks.get(g, -1) for g in proc.born_after_ready)),
            )
            for proc in world.live()
        )
    )
    ready = tuple(sorted((ranks[g], v) for g, v in world.ready_views))
    state = (
        procs,
        tuple(d for d, _ in described),
        tuple(world.current[slot] is None for slot in range(world.size)),
        tuple(world.exits),
        tuple(world.births),
        world.faults,
        world.zombies_ever,
        world.epochs_issued,
        ready,
    )
    # A 128-bit digest stands for the state: two different states share one with probability about 2**-128 per pair.
    return hashlib.blake2b(marshal.dumps(state), digest_size=16).digest()


# A message body, taken apart once: its epoch (ranked per state) and everything else (detail texts left out).
_BODIES: dict[object, tuple[Epoch | None, tuple]] = {}


def _body(body: object, ranks: dict) -> Hashable:
    if body is None:
        return None
    parts = _BODIES.get(body)
    if parts is None:
        fields = attrs.fields(type(body))  # type: ignore[arg-type]
        values = ((f.name, getattr(body, f.name)) for f in fields if f.name != "epoch")
        rest = tuple(v for name, v in values if not (isinstance(v, str) and name in ("detail", "reason")))
        rest = tuple(int(v) if isinstance(v, bool | enum.Enum) else v for v in rest)
        parts = _BODIES[body] = (getattr(body, "epoch", None), (type(body).__name__, rest))
    epoch, rest = parts
    return (ranks.get(epoch, -1), rest)


def _exchange(exchange: object, ranks: dict) -> Hashable:
    if exchange is None:
        return None
    return (
        _body(exchange.hello, ranks),  # type: ignore[attr-defined]
        _body(exchange.answer, ranks),  # type: ignore[attr-defined]
        exchange.judgement.action.value,  # type: ignore[attr-defined]
        ranks.get(exchange.epoch, -1),  # type: ignore[attr-defined]
    )


def _origin(origin: object) -> Hashable:
    return None if origin is None else (origin.dialer, origin.peer_incarnation)  # type: ignore[attr-defined]


def _model(model: MeshModel | None, ranks: dict, order: dict) -> Hashable:
    assert model is not None

    def tok(t: object) -> Hashable:
        return None if t is None else (order.get(t[0], -1), t[1])  # type: ignore[index]

    return (
        ranks[model.me.epoch],
        model.members,
        model.sealed,
        model.state.value,
        tuple((row.state is PeerState.UP, row.incarnation) for row in model.rows.values()),
        tuple(None if v is None else (ranks.get(v.epoch, -1), v.incarnations) for v in model.views.values()),
        tuple((tok(s.current), _origin(s.origin), s.incarnation, tuple(s.retired)) for s in model.slots.values()),
        model.sent_full,
        model.state is MeshState.READY,
    )
