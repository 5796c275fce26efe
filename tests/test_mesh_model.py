"""The mesh state machine (meshd.core.mesh), several models back to back with no sockets.

The models are wired by the explorer's world (meshd.explore.world): connections are message queues, delivered here
in a fixed order, so each test states exactly what happens. The findings of the review that broke the first proof
are replayed at this level: the wedge of two sealed processes, a generation joined without the consent of its
members, and a ready mesh that did not notice a link down.
"""

import contextlib

import pytest

from meshd.core.address import Address
from meshd.core.generation import CLOCK_CEILING, MAJOR_CEILING, EpochMode, mint
from meshd.core.hello import Action, Identity, Outcome
from meshd.core.mesh import DropLinks, Exit, MeshModel, Publish, SendView
from meshd.core.status import EndCause, LinkEnd, MeshState, PeerState
from meshd.core.wire import U64_MAX, Epoch, Goodbye, Refuse, RefuseReason
from meshd.errors import ExitCode, LocalProtocolError
from meshd.explore.steps import deliver, dial
from meshd.explore.world import Oracle, World
from meshd.sim.variants import VARIANTS

ADDRESSES = [Address("10.0.0.1", 7000), Address("10.0.0.2", 7000), Address("10.0.0.3", 7000)]
# How a link that went silent ends (what the shell reports after heartbeat_timeout).
NO_HEARTBEAT = LinkEnd(EndCause.SILENCE, "no heartbeat")


class StepMint(Oracle):
    """Mints 1000 above the floor (the explorer instead tries every position)."""

    def __call__(self, floor):
        return Epoch((0 if floor is None else floor.major) + 1000)


def world(size, mode=EpochMode.AUTO):
    return World(size, mode, 0, current=[None] * size, exits=[0] * size, births=[0] * size, oracle=StepMint())


def drain(w):
    """Deliver every message in flight, oldest connection first, until nothing is left."""
    while True:
        pending = [(cid, side) for cid, conn in sorted(w.conns.items()) for side in (0, 1) if conn.queues[side]]
        if not pending:
            return
        deliver(w, *pending[0])
        w.tidy()


def connect_all(w):
    """Every live process dials every peer slot it has no link to (once), and everything is delivered."""
    for proc in list(w.live()):
        for slot in range(w.size):
            if slot != proc.slot and proc.model and proc.model.rows[slot].state is not PeerState.UP:
                target = w.procs[w.current[slot]] if w.current[slot] is not None else None
                if target is not None and target.alive:
                    dial(w, proc.pid, target.pid, slot)
        drain(w)


def formed(size, mode=EpochMode.AUTO):
    w = world(size, mode)
    for slot in range(size):
        w.spawn(slot, Epoch(1000))
    for _ in range(3):
        connect_all(w)
    return w


def models(w):
    return {proc.slot: proc.model for proc in w.live()}


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [EpochMode.AUTO, EpochMode.FIXED])
@pytest.mark.parametrize("size", [2, 3])
def test_fresh_models_form_one_ready_mesh(size, mode):
    w = formed(size, mode)
    assert w.converged()
    for model in models(w).values():
        assert model.state is MeshState.READY
        assert model.sealed is (mode is EpochMode.AUTO)
        assert model.members == (None if mode is EpochMode.FIXED else model.view().incarnations)


def test_an_older_generation_adopts_the_newer_one_in_place():
    w = world(2)
    w.spawn(0, Epoch(2000))
    w.spawn(1, Epoch(1000))
    dial(w, 1, 0, 0)
    drain(w)
    assert models(w)[1].me.epoch == Epoch(2000)
    assert models(w)[1].generation_changes == 1
    connect_all(w)
    assert w.converged()


@pytest.mark.parametrize("variant", [None, "no-leave"])
def test_two_sealed_processes_naming_each_others_dead_predecessor_both_leave(variant):
    """Finding 1: the wedge. Both sealed in g, each membership naming the other's dead predecessor; the old rules
    refused each other with SEALED for ever (variant ``no-leave``). Now each concludes LEAVE and, sealed, exits 75:
    their successors form a new generation. (The proof starts from any state faults leave; this is one.)"""
    with VARIANTS[variant]() if variant else contextlib.nullcontext():
        if variant is None:
            _wedge_resolves()
        else:
            with pytest.raises(AssertionError):
                _wedge_resolves()


def _wedge_resolves():
    g = Epoch(5000)
    w = world(2)
    a = w.spawn(0, g)
    b = w.spawn(1, g)
    for proc, dead in ((a, 99), (b, 98)):
        model = proc.model
        members = [0, 0]
        members[proc.slot], members[1 - proc.slot] = proc.incarnation, dead
        model.members, model.sealed = tuple(members), True
    dial(w, a.pid, b.pid, 1)
    drain(w)
    assert not a.alive and not b.alive
    assert w.exits == [1, 1]
    w.spawn(0, Epoch(6000))
    w.spawn(1, Epoch(7000))
    for _ in range(2):
        connect_all(w)
    assert w.converged()


@pytest.mark.parametrize("variant", [None, "no-consent"])
def test_a_generation_that_holds_our_slot_is_not_adopted_but_outgrown(variant):
    with VARIANTS[variant]() if variant else contextlib.nullcontext():
        if variant is None:
            _outgrown()
        else:
            with pytest.raises(AssertionError):
                _outgrown()


def _outgrown():
    """Finding 1's first step: a newcomer meeting a ready generation whose member in its slot is another (dead)
    incarnation mints above it instead of joining it, and the sealed member then exits once."""
    w = formed(2)
    old_generation = models(w)[0].me.epoch
    w.kill(w.current[0], code=None)
    newcomer = w.spawn(0, Epoch(1))  # a clock far behind: its birth generation is older
    dial(w, newcomer.pid, w.current[1], 1)
    drain(w)
    assert newcomer.model.me.epoch > old_generation  # SURPASS: minted above, not adopted
    assert w.exits == [0, 0]
    connect_all(w)
    assert w.exits == [0, 1]  # the sealed survivor fenced once
    w.spawn(1, Epoch(1))
    for _ in range(2):
        connect_all(w)
    assert w.converged()


def test_a_link_down_anywhere_takes_every_member_out_of_ready():
    """Finding 5: with the link 0-2 down, process 1 must not stay ready. The first member to notice sends its
    partial view, once, to every peer it still links."""
    w = formed(3)
    m = models(w)
    link = m[0].slots[2].current
    effects = m[0].link_ended(2, link, NO_HEARTBEAT, 0.0)
    sent = [effect for effect in effects if isinstance(effect, SendView)]
    assert [effect.peers for effect in sent] == [(1,)]
    w.apply(w.current[0], effects)
    drain(w)
    assert m[1].state is MeshState.DEGRADED
    assert m[0].state is MeshState.DEGRADED
    assert m[0].link_ended(1, m[0].slots[1].current, NO_HEARTBEAT, 0.0)[-1:] != sent  # no second partial view


@pytest.mark.parametrize("variant", [None, "hello-alone"])
def test_a_dead_senders_hello_decides_nothing(variant):
    """A ghost hello is judged (it may even make its sender a member), but without an answer nothing follows; with
    the first design's rule (``hello-alone``) its newer generation is joined."""
    with VARIANTS[variant]() if variant else contextlib.nullcontext():
        w = _ghost_hello_served()
    moved = models(w)[0].generation_changes != 0
    assert moved is (variant is not None)


def _ghost_hello_served():
    w = world(2)
    w.spawn(0, Epoch(1000))
    ghost = w.spawn(1, Epoch(2000))
    dial(w, ghost.pid, w.current[0], 0)
    w.kill(ghost.pid, code=None)
    drain(w)
    return w


def test_an_exchange_judged_in_a_generation_we_left_is_void():
    me = Identity("x", 0, 2, Epoch(10), 1, True)
    model = MeshModel(me, ADDRESSES[:2], EpochMode.AUTO, 0.0, lambda floor: Epoch(floor.major + 1))
    hello = Identity("x", 1, 2, Epoch(10), 2, True).hello(None)
    exchange = model.judge(hello, 1, Epoch(10))
    assert exchange.judgement.action is Action.LINK
    newer = Identity("x", 1, 2, Epoch(20), 3, True).hello(None)
    moved = model.conclude(model.judge(newer, 1, Epoch(10)), Refuse(RefuseReason.STALE_EPOCH, Epoch(20), ""), "b", 0, 0)
    assert moved.outcome is Outcome.ADOPT
    assert model.conclude(exchange, None, "a", 0, 0.0).outcome is Outcome.NOTHING
    from meshd.core.wire import Accept

    assert model.conclude(exchange, Accept(), "a", 0, 0.0).outcome is Outcome.NOTHING


def test_our_hello_from_before_a_move_is_answered_with_goodbye():
    me = Identity("x", 0, 2, Epoch(10), 1, True)
    model = MeshModel(me, ADDRESSES[:2], EpochMode.AUTO, 0.0, lambda floor: Epoch(floor.major + 1))
    peer = Identity("x", 1, 2, Epoch(10), 2, True).hello(None)
    exchange = model.judge(peer, 1, sent=Epoch(9))
    assert exchange.judgement.action is Action.NONE
    assert model.members == (1, 0)  # nothing recorded


def test_fixed_epochs_fence_on_a_newer_epoch_once_its_holder_answered():
    w = formed(2, EpochMode.FIXED)
    survivor = w.current[1]
    w.kill(w.current[0], code=None)
    newer = w.spawn(0, Epoch(2000))
    dial(w, newer.pid, survivor, 1)
    drain(w)
    assert not w.procs[survivor].alive and w.exits == [0, 1]


def test_start_op_transitions():
    me = Identity("x", 0, 2, Epoch(0), 1)
    model = MeshModel(me, ADDRESSES[:2], EpochMode.AWAIT, 0.0)
    assert model.state is MeshState.AWAITING
    answer, effects = model.request_start(Epoch(5), 1.0)
    assert answer.to_json() == {"ok": True, "epoch": 5} and model.state is MeshState.FORMING
    assert model.request_start(Epoch(5), 2.0)[0].to_json() == {"ok": True, "epoch": 5}
    assert "error" in model.request_start(Epoch(4), 2.0)[0].to_json()
    answer, effects = model.request_start(Epoch(6), 3.0)
    assert answer.to_json() == {"ok": True, "epoch": 6, "fenced": True}
    assert Exit(ExitCode.FENCED, effects[-1].reason) == effects[-1]
    [fenced] = [effect.event for effect in effects if isinstance(effect, Publish)]
    assert (fenced.newer, fenced.source) == (Epoch(6), "the controller")


def test_an_illegal_transition_raises_and_changes_nothing():
    model = MeshModel(Identity("x", 0, 2, Epoch(1), 1), ADDRESSES[:2], EpochMode.FIXED, 0.0)
    with pytest.raises(LocalProtocolError):
        model._set_state(MeshState.DEGRADED, "a forming mesh was never ready", 1.0)
    assert model.state is MeshState.FORMING and model.state_since == 0.0


def test_a_stop_says_goodbye_to_every_later_hello_and_the_peer_does_not_link():
    """A stayer must never link a stopping daemon again (the real-process race of the review, decided here)."""
    leaving = MeshModel(Identity("x", 0, 2, Epoch(1), 1), ADDRESSES[:2], EpochMode.FIXED, 0.0)
    stayer = MeshModel(Identity("x", 1, 2, Epoch(1), 2), ADDRESSES[:2], EpochMode.FIXED, 0.0)
    effects = leaving.stop("SIGTERM", 1.0)
    assert effects[-1] == Exit(ExitCode.OK, "SIGTERM")
    for dialer in (0, 1):  # the stayer dials, or the leaving daemon's last dial is still in flight
        at_leaving = leaving.judge(stayer.me.hello(None), 1, Epoch(1))
        at_stayer = stayer.judge(leaving.me.hello(None), 0, Epoch(1))
        assert isinstance(at_leaving.answer, Goodbye)
        concluded = stayer.conclude(at_stayer, at_leaving.answer, ("t", dialer), dialer, 1.0)
        assert concluded.outcome is Outcome.NOTHING and not concluded.effects
        assert stayer.rows[0].state is not PeerState.UP


def test_a_copy_is_independent():
    w = formed(2)
    model = models(w)[0]
    twin = model.copy()
    twin.link_ended(1, twin.slots[1].current, NO_HEARTBEAT, 1.0)
    assert model.rows[1].state is PeerState.UP and model.slots[1].current is not None
    assert twin.rows[1].state is PeerState.DOWN and twin.slots[1].current is None
    mutable = [name for name, value in vars(model).items() if isinstance(value, dict | list | set)]
    for name in mutable:
        assert getattr(model, name) is not getattr(twin, name), name


def test_a_generation_move_drops_every_link_in_the_same_step():
    w = formed(3)
    m = models(w)[0]
    m.sealed = False  # as if it had never been ready, so that it may move in place
    m.state = MeshState.FORMING
    newer = Identity("x", 1, 3, Epoch(m.me.epoch.major + 10), 77, True).hello(None)
    exchange = m.judge(newer, None, m.me.epoch)
    concluded = m.conclude(exchange, Refuse(RefuseReason.STALE_EPOCH, newer.epoch, ""), "t", 1, 0.0)
    [drop] = [effect for effect in concluded.effects if isinstance(effect, DropLinks)]
    assert len(drop.tokens) == 2
    assert all(row.state is PeerState.DOWN for row in m.rows.values())
    assert m.members == (m.me.incarnation, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Finding 4: generations cannot saturate
# ---------------------------------------------------------------------------------------------------------------


def test_a_clock_at_the_top_of_the_range_is_clamped():
    assert mint(U64_MAX, 5).major == CLOCK_CEILING


def test_minting_above_the_highest_acceptable_generation_is_still_newer():
    top = Epoch(MAJOR_CEILING, 10)
    assert mint(U64_MAX, 5, top) > top


def test_minting_above_an_absurd_generation_is_refused_rather_than_saturated():
    with pytest.raises(ValueError):
        mint(U64_MAX, 5, Epoch(U64_MAX, 10))


def test_the_model_refuses_a_minter_that_does_not_mint_above():
    me = Identity("x", 0, 2, Epoch(10), 1, True)
    model = MeshModel(me, ADDRESSES[:2], EpochMode.AUTO, 0.0, lambda floor: Epoch(1))
    peer = Identity("x", 1, 2, Epoch(10), 2, True)
    model.members = (1, 5)
    exchange = model.judge(peer.hello(None), 1, Epoch(10))
    with pytest.raises(LocalProtocolError):
        model.conclude(exchange, Refuse(RefuseReason.STALE_EPOCH, Epoch(10), ""), "t", 0, 0.0)
