"""The transitions of an explored world: every step a process, the network or the orchestrator may take next.

Each step is a label and a function that changes a *copy* of the world; the step calls the real model methods
(``judge``, ``conclude``, ``link_ended``, ``view_received``) and applies their effects. A step that mints a
generation is run once per position the new generation may take (``NeedMint``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshd.core.hello import Action, Outcome
from meshd.core.status import EndCause, LinkEnd
from meshd.explore.world import NOW, Conn, Message, NeedMint, World, peer_slot, token

# A slot is started at most this often in one run; reaching it is reported (a restart loop would be a bug).
BIRTH_CAP = 4

# Connections one process keeps open to one slot at once, its current dial included (an abstraction: in real time
# the handshake timeout bounds them, and the untimed model would otherwise let them pile up without end).
PAIR_CAP = 1

Step = tuple[str, Callable[[World], None]]

# How links end in the explored world, as the shell would report them.
CLOSED = LinkEnd(EndCause.CLOSED, "peer closed the connection")
EXPIRED = LinkEnd(EndCause.LOCAL, "tie-break loser expired")
SILENT = LinkEnd(EndCause.SILENCE, "no heartbeat")


def steps(world: World) -> Iterator[Step]:
    """Every step enabled in ``world``."""
    yield from _orchestrator(world)
    yield from _dials(world)
    yield from _deliveries(world)
    yield from _lingering(world)
    if world.faults < world.max_faults:
        yield from _faults(world)
    for proc in world.live():
        if proc.zombie:
            yield f"zombie {proc.slot}.{proc.incarnation} dies", lambda w, pid=proc.pid: w.kill(pid, code=None)


def successors(world: World) -> Iterator[tuple[str, World]]:
    """Every world one step away, minted generations spread over every position they may take."""
    for label, step in steps(world):
        twin = world.clone()
        twin.oracle.choice = None
        try:
            step(twin)
        except NeedMint as need:
            for choice in world.positions(need.floor):
                twin = world.clone()
                twin.oracle.choice, twin.oracle.used = choice, False
                step(twin)
                twin.oracle.choice = None
                yield f"{label} (mints {choice})", _finish(twin)
            continue
        yield label, _finish(twin)


def _finish(world: World) -> World:
    world.tidy()
    note_ready(world)
    return world


def note_ready(world: World) -> None:
    """Ghost variable for S4: every (generation, view) some process has been ready with."""
    ready = {(proc.model.me.epoch, proc.model.view().incarnations) for proc in world.ready_procs() if proc.model}
    if not ready <= world.ready_views:
        world.ready_views = world.ready_views | ready


def _orchestrator(world: World) -> Iterator[Step]:
    for slot, pid in enumerate(world.current):
        if pid is None and world.births[slot] < BIRTH_CAP:
            for epoch in world.birth_epochs(slot):
                yield f"start slot {slot} in {epoch}", lambda w, s=slot, e=epoch: w.spawn(s, e)


def _dialing(world: World, pid: int, slot: int) -> bool:
    """Whether ``pid`` may not dial ``slot`` now: a dial of its dial loop is in progress, or PAIR_CAP of its
    connections to that slot are still open at the far end (in real time a handshake timeout closes them)."""
    open_ = 0
    for conn in world.conns.values():
        for side, end in enumerate(conn.ends):
            if end.pid != pid or peer_slot(world, conn, side) != slot:
                continue
            if side == 0 and end.phase in ("hello", "answer"):
                return True
            if not world.crossed and any(e.phase in ("hello", "answer") for e in conn.ends):
                return True  # without crossed dials, one exchange per pair at a time
            open_ += side == 0
    return open_ >= PAIR_CAP


def _dials(world: World) -> Iterator[Step]:
    for proc in list(world.live()):
        model = proc.model
        assert model is not None
        if not model.began:
            continue
        for slot in model.rows:
            if model.rows[slot].state.value == "up" or _dialing(world, proc.pid, slot):
                continue
            for target in world.live():
                if target.slot == slot:
                    yield (
                        f"{proc.slot}.{proc.incarnation} dials {target.slot}.{target.incarnation}",
                        lambda w, a=proc.pid, b=target.pid, s=slot: dial(w, a, b, s),
                    )


def dial(world: World, dialer: int, listener: int, slot: int) -> None:
    """A connection opens; both ends send their hello at once (the listener's kernel accepts for it)."""
    from meshd.explore.world import End

    cid = world.next_cid
    world.next_cid += 1
    a, b = world.procs[dialer], world.procs[listener]
    assert a.model is not None and b.model is not None
    conn = Conn(cid, (End(dialer, True, sent=a.model.me.epoch), End(listener, False, sent=b.model.me.epoch)), ([], []))
    conn.queues[1].append(Message("hello", a.model.hello(slot)))
    conn.queues[0].append(Message("hello", b.model.hello(None)))
    world.conns[cid] = conn


def _deliveries(world: World) -> Iterator[Step]:
    for conn in world.conns.values():
        for side in (0, 1):
            if conn.queues[side]:
                head = conn.queues[side][0]
                end = conn.ends[side]
                who = world.procs[end.pid]
                yield (
                    f"{head.kind} reaches {who.slot}.{who.incarnation} on connection {conn.cid}",
                    lambda w, c=conn.cid, s=side: deliver(w, c, s),
                )


def deliver(world: World, cid: int, side: int) -> None:
    conn = world.conns[cid]
    message = conn.queues[side].pop(0)
    end = conn.ends[side]
    proc = world.procs[end.pid]
    model = proc.model
    if end.phase == "closed" or model is None:
        return
    peer = peer_slot(world, conn, side)
    dialer_slot = world.procs[conn.ends[0].pid].slot
    match message.kind:
        case "hello" if end.phase == "hello":
            exchange = model.judge(message.body, peer if end.dialer else None, end.sent)  # type: ignore[arg-type]
            end.exchange = exchange
            conn.queues[1 - side].append(Message("answer", exchange.answer))
            if exchange.judgement.action is Action.NONE:
                world._close(conn, side)  # nothing the peer answers can change anything: close at once
            else:
                end.phase = "answer"
        case "answer" if end.phase == "answer":
            concluded = model.conclude(end.exchange, message.body, token(conn, side), dialer_slot, NOW)  # type: ignore[arg-type]
            decision = concluded.decision
            if decision is not None and decision.install:
                end.phase = "link"
                if decision.fail is not None:
                    world._end_token(decision.fail)
                if decision.linger is not None:
                    _linger(world, decision.linger)
            world.apply(proc.pid, concluded.effects)
            if end.phase == "answer":
                if decision is not None and decision.linger == token(conn, side):
                    end.phase, end.lingering = "link", True
                else:
                    world._close(conn, side)
            if concluded.outcome in (Outcome.ADOPT, Outcome.SURPASS, Outcome.LEAVE) and end.phase != "closed":
                world._close(conn, side)
        case "view" if end.phase == "link" and proc.model is not None:
            world.apply(proc.pid, model.view_received(peer, token(conn, side), message.body, NOW))  # type: ignore[arg-type]
        case "eof":
            if end.phase == "link":
                world.apply(proc.pid, model.link_ended(peer, token(conn, side), CLOSED, NOW))
            elif end.phase == "answer":  # the exchange ends without the peer's answer
                concluded = model.conclude(end.exchange, None, token(conn, side), dialer_slot, NOW)  # type: ignore[arg-type]
                world.apply(proc.pid, concluded.effects)
            if end.phase != "closed":
                world._close(conn, side)
        case _:
            pass  # a frame the end is not waiting for (after a close, say) is dropped, as the shell drops it


def _linger(world: World, kept: object) -> None:
    cid, side = kept  # type: ignore[misc]
    conn = world.conns.get(cid)
    if conn is not None and conn.ends[side].phase == "link":
        conn.ends[side].lingering = True


def _lingering(world: World) -> Iterator[Step]:
    """A tie-break loser closes once the peer has concluded the winner too (the linger, one handshake timeout, is
    longer than an answer takes on a timely network); closing it earlier is a timing fault."""
    for conn in world.conns.values():
        for side, end in enumerate(conn.ends):
            if not (end.lingering and end.phase == "link"):
                continue
            label = f"lingering connection {conn.cid} closes"
            if _winner_concluded(world, conn, side):
                yield label, lambda w, c=conn.cid, s=side: _expire(w, c, s)
            elif world.faults < world.max_faults:
                yield (
                    f"FAULT {label} before the peer concluded the winner",
                    lambda w, c=conn.cid, s=side: _fault(w, lambda: _expire(w, c, s)),
                )


def _winner_concluded(world: World, conn: Conn, side: int) -> bool:
    proc = world.procs[conn.ends[side].pid]
    if proc.model is None:
        return True
    winner = proc.model.slots[peer_slot(world, conn, side)].current
    if winner is None:
        return True
    cid, winner_side = winner  # type: ignore[misc]
    other = world.conns.get(cid)
    return other is None or other.ends[1 - winner_side].phase not in ("hello", "answer")


def _expire(world: World, cid: int, side: int) -> None:
    conn = world.conns[cid]
    proc = world.procs[conn.ends[side].pid]
    if proc.model is not None:
        proc.model.link_ended(peer_slot(world, conn, side), token(conn, side), EXPIRED, NOW)
    world._close(conn, side)


def _faults(world: World) -> Iterator[Step]:
    for proc in list(world.live()):
        if proc.zombie:
            continue
        if "kill" in world.kinds:
            yield (
                f"FAULT kill -9 {proc.slot}.{proc.incarnation}",
                lambda w, pid=proc.pid: _fault(w, lambda: w.kill(pid, code=None)),
            )
        if world.current[proc.slot] == proc.pid and "zombie" in world.kinds:
            yield f"FAULT {proc.slot}.{proc.incarnation} becomes a zombie", lambda w, pid=proc.pid: _zombie(w, pid)
    for conn in world.conns.values():
        for side, end in enumerate(conn.ends):
            if end.phase == "link" and not end.lingering and world.procs[end.pid].alive and "timeout" in world.kinds:
                who = world.procs[end.pid]
                yield (
                    f"FAULT {who.slot}.{who.incarnation} times out connection {conn.cid} (pause, partition)",
                    lambda w, c=conn.cid, s=side: _fault(w, lambda: _time_out(w, c, s)),
                )


def _fault(world: World, action: Callable[[], None]) -> None:
    world.faults += 1
    action()


def _zombie(world: World, pid: int) -> None:
    """The orchestrator takes the process for dead and starts a replacement; the process lives on."""
    world.faults += 1
    world.zombies_ever = True
    proc = world.procs[pid]
    proc.zombie = True
    world.current[proc.slot] = None
    world.restart_epoch(proc.slot, died=True)


def _time_out(world: World, cid: int, side: int) -> None:
    conn = world.conns[cid]
    proc = world.procs[conn.ends[side].pid]
    assert proc.model is not None
    world.apply(proc.pid, proc.model.link_ended(peer_slot(world, conn, side), token(conn, side), SILENT, NOW))
    world._close(conn, side)
