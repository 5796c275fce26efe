"""Which connection is a peer's link (meshd.core.slot): the tie-break replaces(), and the Slot's offers."""

import itertools

import pytest

from meshd.core.slot import LinkOrigin, Slot, replaces
from meshd.core.wire import Epoch, Goodbye, Refuse, RefuseReason

EPOCH = Epoch(1)


def test_the_first_connection_is_installed():
    slot = Slot(0, 1)
    decision = slot.offer("a", LinkOrigin(1, 42), EPOCH)
    assert decision.install and decision.fail is None and decision.linger is None
    assert slot.current == "a"


def test_a_new_incarnation_replaces_the_link_and_the_old_one_is_retired_while_it_holds():
    slot = Slot(0, 1)
    slot.offer("old", LinkOrigin(1, 42), EPOCH)
    decision = slot.offer("new", LinkOrigin(1, 43), EPOCH)
    assert decision.install and decision.fail == "old"
    refused = slot.offer("zombie", LinkOrigin(1, 42), EPOCH)
    assert not refused.install and isinstance(refused.part, Refuse) and refused.part.reason is RefuseReason.RETIRED
    assert slot.release("new")
    assert slot.offer("zombie", LinkOrigin(1, 42), EPOCH).install  # once the link is gone, anyone may take it


def test_crossed_dials_keep_the_lower_index_dial_and_let_the_loser_linger():
    slot = Slot(0, 1)
    slot.offer("from-1", LinkOrigin(1, 42), EPOCH)
    decision = slot.offer("from-0", LinkOrigin(0, 42), EPOCH)
    assert decision.install and decision.linger == "from-1" and decision.fail is None
    late = Slot(1, 0)
    late.offer("from-0", LinkOrigin(0, 7), EPOCH)
    losing = late.offer("from-1", LinkOrigin(1, 7), EPOCH)
    assert not losing.install and losing.linger == "from-1" and losing.part is None


def test_a_closing_slot_says_goodbye():
    slot = Slot(0, 1, closing=True)
    decision = slot.offer("a", LinkOrigin(1, 42), EPOCH)
    assert not decision.install and isinstance(decision.part, Goodbye)


def test_release_of_a_connection_that_is_not_the_link_changes_nothing():
    slot = Slot(0, 1)
    slot.offer("a", LinkOrigin(1, 42), EPOCH)
    assert not slot.release("b")
    assert not slot.release(None)
    assert slot.current == "a"


def test_a_copy_is_independent():
    slot = Slot(0, 1)
    slot.offer("old", LinkOrigin(1, 42), EPOCH)
    slot.offer("new", LinkOrigin(1, 43), EPOCH)
    twin = slot.copy()
    twin.release("new")
    assert slot.current == "new" and slot.retired == {42: None}
    assert twin.current is None and twin.retired == {}


def test_new_incarnation_always_wins():
    current = LinkOrigin(dialer=0, peer_incarnation=1)
    for dialer in (0, 1):
        assert replaces(0, 1, current, LinkOrigin(dialer, peer_incarnation=2)) is True
        assert replaces(1, 0, LinkOrigin(0, 5), LinkOrigin(dialer, 6)) is True


@pytest.mark.parametrize(("me", "peer"), [(0, 1), (1, 0), (3, 7), (7, 3)])
@pytest.mark.parametrize("dialer_is_me", [True, False])
def test_same_incarnation_same_dialer_newer_wins(me, peer, dialer_is_me):
    dialer = me if dialer_is_me else peer
    assert replaces(me, peer, LinkOrigin(dialer, 42), LinkOrigin(dialer, 42)) is True


@pytest.mark.parametrize(("me", "peer"), [(0, 1), (1, 0), (2, 5), (5, 2)])
def test_opposite_dialers_lower_index_dial_wins(me, peer):
    low, high = min(me, peer), max(me, peer)
    assert replaces(me, peer, LinkOrigin(high, 42), LinkOrigin(low, 42)) is True
    assert replaces(me, peer, LinkOrigin(low, 42), LinkOrigin(high, 42)) is False


INCARNATION = {index: 500 + index for index in range(4)}


def kept(me, peer, arrivals):
    """The connection an end keeps after connections (named by their dialer) establish in ``arrivals`` order."""
    current = None
    for connection in arrivals:
        _, dialer = connection
        if current is None or replaces(
            me, peer, LinkOrigin(current[1], INCARNATION[peer]), LinkOrigin(dialer, INCARNATION[peer])
        ):
            current = connection
    return current


def arrival_orders(connections):
    """Every order in which connections may establish at one end: any interleaving of the two dialers, but each
    dialer's own connections in the order it dialed them (a dialer only redials after giving up on the last one)."""
    for order in itertools.permutations(connections):
        by_dialer = {}
        for position, dialer in order:
            by_dialer.setdefault(dialer, []).append(position)
        if all(positions == sorted(positions) for positions in by_dialer.values()):
            yield order


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(range(4), 2)))
def test_simultaneous_dials_both_ends_keep_the_lower_index_dial(a, b):
    from_a, from_b = (0, a), (1, b)  # (name, dialer)
    for order_at_a in itertools.permutations([from_a, from_b]):
        for order_at_b in itertools.permutations([from_a, from_b]):
            winner = from_a if a < b else from_b
            assert kept(a, b, order_at_a) == winner
            assert kept(b, a, order_at_b) == winner


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(range(4), 2)))
@pytest.mark.parametrize("count", [2, 3, 4])
def test_both_ends_keep_the_same_connection_in_any_arrival_order(a, b, count):
    for dialers in itertools.product((a, b), repeat=count):
        connections = list(enumerate(dialers))
        for order_at_a in arrival_orders(connections):
            for order_at_b in arrival_orders(connections):
                assert kept(a, b, order_at_a) == kept(b, a, order_at_b), (dialers, order_at_a, order_at_b)
