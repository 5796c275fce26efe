"""The hello exchange (meshd.handshake): judge() verdicts, two Handshake machines wired together, and replaces().

Machines are connected back to back with no sockets, like h11's ConnectionPair: whatever one has to send is fed to
the other by hand, so every test controls exactly which bytes arrive and when.
"""

import itertools

import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.wire import (
    NO_TARGET,
    PROTOCOL_VERSION,
    Epoch,
    FrameDecoder,
    Goodbye,
    Heartbeat,
    Hello,
    Refuse,
    RefuseReason,
    encode,
)
from meshd.handshake import (
    Established,
    Handshake,
    Identity,
    Judgement,
    LinkOrigin,
    MustFence,
    Refused,
    Rejected,
    Verdict,
    judge,
    replaces,
)


def identity(index, *, size=3, epoch=1, cluster="demo", incarnation=None):
    return Identity(cluster, index, size, Epoch(epoch), 1000 + index if incarnation is None else incarnation)


def decode_all(data):
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


ME = identity(0)


def hello(sender=1, target=0, *, epoch=1, cluster="demo", version=PROTOCOL_VERSION):
    return Hello(cluster, sender, target, Epoch(epoch), 77, version=version)


# ---------------------------------------------------------------------------------------------------------------
# judge()
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expected_peer", [1, None], ids=["dialed", "accepted"])
def test_equal_epoch_is_accepted(expected_peer):
    assert judge(ME, hello(epoch=1), expected_peer) == Judgement(Verdict.ACCEPT)


def test_listener_hello_without_target_is_accepted():
    assert judge(ME, hello(target=NO_TARGET), 1) == Judgement(Verdict.ACCEPT)


def test_older_peer_epoch_is_refused_as_stale():
    judgement = judge(identity(0, epoch=5), hello(epoch=4), 1)
    assert (judgement.verdict, judgement.reason) == (Verdict.REFUSE, RefuseReason.STALE_EPOCH)


def test_newer_peer_epoch_fences():
    judgement = judge(identity(0, epoch=5), hello(epoch=6), 1)
    assert (judgement.verdict, judgement.reason) == (Verdict.FENCE, None)
    assert "6" in judgement.detail


def sealed_auto(index=0, *, epoch=5):
    me = identity(index, epoch=epoch)
    return evolve(me, auto=True, sealed=True, members=(1000, 77, 1002))


def auto_hello(*, epoch, incarnation, sender=1):
    return Hello("demo", sender, 0, Epoch(epoch), incarnation, auto=True)


@pytest.mark.parametrize("expected_peer", [1, None], ids=["dialed", "accepted"])
def test_a_ready_mesh_refuses_a_newer_generation_from_a_duplicate_of_a_held_slot(expected_peer):
    """The holders of a ready mesh (auto) are not broken up by another incarnation of a slot they hold."""
    me = sealed_auto()
    holders = (1000, 77, 1002)  # we are linked to incarnation 77 in slot 1
    judgement = judge(me, auto_hello(epoch=6, incarnation=99), expected_peer, holders)
    assert (judgement.verdict, judgement.reason) == (Verdict.REFUSE, RefuseReason.RETIRED)
    assert "held by incarnation" in judgement.detail


def test_a_ready_mesh_still_fences_on_a_newer_generation_from_its_own_member_or_when_not_ready():
    me = sealed_auto()
    holders = (1000, 77, 1002)
    assert judge(me, auto_hello(epoch=6, incarnation=77), 1, holders).verdict is Verdict.FENCE  # the member itself
    assert judge(me, auto_hello(epoch=6, incarnation=99), 1, None).verdict is Verdict.FENCE  # not ready: no holders
    assert judge(me, auto_hello(epoch=6, incarnation=99), 1, (1000, 0, 1002)).verdict is Verdict.FENCE  # slot down


def test_holders_change_nothing_for_equal_or_older_generations():
    me = sealed_auto()
    holders = (1000, 77, 1002)
    assert judge(me, auto_hello(epoch=5, incarnation=99), 1, holders).reason is RefuseReason.SEALED
    assert judge(me, auto_hello(epoch=4, incarnation=99), 1, holders).reason is RefuseReason.STALE_EPOCH


def test_two_part_epochs_compare_lexicographically_in_judge():
    me = identity(0, epoch=5)
    newer = Hello("demo", 1, 0, Epoch(5, 1), 77)
    older = Hello("demo", 1, 0, Epoch(4, 2**64 - 1), 77)
    assert judge(me, newer, 1).verdict is Verdict.FENCE
    assert judge(me, older, 1).reason is RefuseReason.STALE_EPOCH


def test_other_cluster_is_refused():
    judgement = judge(ME, hello(cluster="other"), 1)
    assert (judgement.verdict, judgement.reason) == (Verdict.REFUSE, RefuseReason.WRONG_CLUSTER)


WRONG_INDEX_CASES = {
    "sender beyond the cluster": (hello(sender=3), None),
    "sender is NO_TARGET": (hello(sender=NO_TARGET), None),
    "sender is me": (hello(sender=0), None),
    "dialed 2, index 1 answered": (hello(sender=1), 2),
    "target is another index": (hello(sender=1, target=2), None),
    "target beyond the cluster": (hello(sender=1, target=7), 1),
}


@pytest.mark.parametrize(("peer_hello", "expected_peer"), WRONG_INDEX_CASES.values(), ids=WRONG_INDEX_CASES.keys())
def test_index_that_does_not_fit_is_refused(peer_hello, expected_peer):
    judgement = judge(ME, peer_hello, expected_peer)
    assert (judgement.verdict, judgement.reason) == (Verdict.REFUSE, RefuseReason.WRONG_INDEX)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1])
def test_other_protocol_version_is_refused(version):
    judgement = judge(ME, hello(version=version), 1)
    assert (judgement.verdict, judgement.reason) == (Verdict.REFUSE, RefuseReason.BAD_VERSION)


def test_checks_run_in_the_documented_order():
    """Version before cluster before index before epoch: a hello wrong in every way gets the first reason."""
    everything_wrong = Hello("other", 0, 9, Epoch(0), 77, version=PROTOCOL_VERSION + 1)
    assert judge(ME, everything_wrong, 2).reason is RefuseReason.BAD_VERSION
    assert judge(ME, Hello("other", 0, 9, Epoch(0), 77), 2).reason is RefuseReason.WRONG_CLUSTER
    assert judge(ME, Hello("demo", 0, 9, Epoch(9), 77), 2).reason is RefuseReason.WRONG_INDEX


@st.composite
def peer_pairs(draw):
    """Two identities of one cluster with distinct indices, and which of them dials the connection."""
    size = draw(st.integers(2, 8))
    index_a, index_b = draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=2, unique=True))
    epoch = st.builds(Epoch, st.integers(0, 2), st.integers(0, 2))
    a = Identity("demo", index_a, size, draw(epoch), draw(st.integers(0, 2**64 - 1)))
    b = Identity("demo", index_b, size, draw(epoch), draw(st.integers(0, 2**64 - 1)))
    return (a, b) if draw(st.booleans()) else (b, a)


@given(peer_pairs())
def test_both_ends_reach_matching_verdicts(pair):
    dialer, listener = pair
    at_dialer = judge(dialer, listener.hello(None), listener.index)
    at_listener = judge(listener, dialer.hello(listener.index), None)
    outcomes = {
        (at_dialer.verdict, at_dialer.reason),
        (at_listener.verdict, at_listener.reason),
    }
    if dialer.epoch == listener.epoch:
        assert outcomes == {(Verdict.ACCEPT, None)}
    else:
        assert outcomes == {(Verdict.FENCE, None), (Verdict.REFUSE, RefuseReason.STALE_EPOCH)}
        stale = dialer if dialer.epoch < listener.epoch else listener
        assert (at_dialer if stale is dialer else at_listener).verdict is Verdict.FENCE


# ---------------------------------------------------------------------------------------------------------------
# Two machines back to back
# ---------------------------------------------------------------------------------------------------------------


class Pair:
    """A dialer's and a listener's Handshake joined by hand instead of by a socket."""

    def __init__(self, dialer_id, listener_id):
        self.dialer = Handshake(dialer_id, expected_peer=listener_id.index)
        self.listener = Handshake(listener_id, expected_peer=None)

    def deliver(self):
        """Move every pending byte across, both ways."""
        to_listener, to_dialer = self.dialer.data_to_send(), self.listener.data_to_send()
        self.listener.receive_data(to_listener)
        self.dialer.receive_data(to_dialer)


def test_matching_peers_both_establish_with_each_others_hello():
    a, b = identity(0), identity(2)
    pair = Pair(a, b)
    pair.deliver()
    assert pair.dialer.next_event() == Established(b.hello(None))
    assert pair.listener.next_event() == Established(a.hello(2))
    assert pair.dialer.next_event().hello.target == NO_TARGET
    assert pair.listener.next_event().hello.target == 2
    assert pair.dialer.data_to_send() == b""
    assert pair.listener.data_to_send() == b""


def test_each_machine_sends_its_hello_first():
    machine = Handshake(identity(1), expected_peer=2)
    assert decode_all(machine.data_to_send()) == [identity(1).hello(2)]
    assert machine.data_to_send() == b""


@pytest.mark.parametrize("stale_side", ["dialer", "listener"])
def test_stale_side_fences_and_newer_side_refuses(stale_side):
    stale, newer = identity(0, epoch=3), identity(1, epoch=4)
    pair = Pair(stale, newer) if stale_side == "dialer" else Pair(newer, stale)
    stale_machine, newer_machine = (
        (pair.dialer, pair.listener) if stale_side == "dialer" else (pair.listener, pair.dialer)
    )
    pair.deliver()

    fence = stale_machine.next_event()
    assert isinstance(fence, MustFence)
    assert (fence.peer, fence.epoch) == (1, Epoch(4))

    refused = newer_machine.next_event()
    assert isinstance(refused, Refused)
    assert refused.reason is RefuseReason.STALE_EPOCH
    refusal = newer_machine.data_to_send()
    assert decode_all(refusal) == [Refuse(RefuseReason.STALE_EPOCH, Epoch(4), refused.detail)]

    # The stale side already fenced on the hello; the refusal arriving afterwards changes nothing.
    stale_machine.receive_data(refusal)
    assert stale_machine.next_event() is fence
    assert stale_machine.decoder.next_frame() == Refuse(RefuseReason.STALE_EPOCH, Epoch(4), refused.detail)
    assert stale_machine.data_to_send() == b""


def test_both_ends_refuse_another_cluster_with_a_frame():
    pair = Pair(identity(0), identity(1, cluster="other"))
    pair.deliver()
    for machine in (pair.dialer, pair.listener):
        event = machine.next_event()
        assert isinstance(event, Refused)
        assert event.reason is RefuseReason.WRONG_CLUSTER
        refusal = Refuse(RefuseReason.WRONG_CLUSTER, machine.me.epoch, event.detail)
        assert decode_all(machine.data_to_send()) == [refusal]


def test_hello_arriving_in_pieces_waits_for_the_whole_frame():
    data = encode(identity(1).hello(None))
    machine = Handshake(identity(0), expected_peer=1)
    for position in range(len(data) - 1):
        machine.receive_data(data[position : position + 1])
        assert machine.next_event() is None
    machine.receive_data(data[-1:])
    assert machine.next_event() == Established(identity(1).hello(None))


def started(me=ME, expected_peer=None):
    """A machine whose own hello was already taken for sending."""
    machine = Handshake(me, expected_peer)
    machine.data_to_send()
    return machine


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x00\x00\x00", b"\x00\x00\x00\x02\x03\x00"],
    ids=["http", "zero length", "heartbeat with payload"],
)
def test_garbage_is_refused_as_a_protocol_error(garbage):
    machine = started()
    machine.receive_data(garbage)
    event = machine.next_event()
    assert isinstance(event, Refused)
    assert event.reason is RefuseReason.PROTOCOL_ERROR
    assert decode_all(machine.data_to_send()) == [Refuse(RefuseReason.PROTOCOL_ERROR, ME.epoch, event.detail)]


def test_first_frame_other_than_hello_is_a_protocol_error():
    machine = started()
    machine.receive_data(encode(Heartbeat()))
    event = machine.next_event()
    assert (type(event), event.reason) == (Refused, RefuseReason.PROTOCOL_ERROR)
    assert decode_all(machine.data_to_send())[0].reason is RefuseReason.PROTOCOL_ERROR


def test_hello_of_another_version_is_refused_as_bad_version():
    machine = started()
    machine.receive_data(encode(Hello("demo", 1, 0, Epoch(1), 5, version=PROTOCOL_VERSION + 1)))
    event = machine.next_event()
    assert (type(event), event.reason) == (Refused, RefuseReason.BAD_VERSION)
    assert decode_all(machine.data_to_send()) == [Refuse(RefuseReason.BAD_VERSION, ME.epoch, event.detail)]


def test_end_of_stream_before_hello_is_rejected():
    machine = started()
    assert machine.next_event() is None
    machine.receive_eof()
    event = machine.next_event()
    assert isinstance(event, Rejected)
    assert event.reason is None
    assert machine.data_to_send() == b""


def test_end_of_stream_inside_the_hello_is_a_protocol_error():
    machine = started()
    machine.receive_data(encode(identity(1).hello(0))[:-3])
    machine.receive_eof()
    event = machine.next_event()
    assert (type(event), event.reason) == (Refused, RefuseReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("reason", list(RefuseReason))
def test_refuse_frame_received_is_rejected_with_its_reason(reason):
    machine = started()
    machine.receive_data(encode(Refuse(reason, Epoch(8), "go away")))
    assert machine.next_event() == Rejected(reason, "go away")
    assert machine.data_to_send() == b""


def test_outcome_is_final():
    machine = started()
    machine.receive_data(encode(Refuse(RefuseReason.DUPLICATE, Epoch(1), "dup")))
    first = machine.next_event()
    machine.receive_data(encode(identity(1).hello(0)))
    assert machine.next_event() is first


def test_frames_after_the_hello_stay_in_the_decoder():
    machine = started(expected_peer=1)
    machine.receive_data(encode(identity(1).hello(None)) + encode(Heartbeat()) + encode(Goodbye("done"))[:3])
    assert machine.next_event() == Established(identity(1).hello(None))
    assert machine.decoder.next_frame() == Heartbeat()
    assert machine.decoder.next_frame() is None
    machine.receive_data(encode(Goodbye("done"))[3:])
    assert machine.decoder.next_frame() == Goodbye("done")


def test_heartbeat_sent_right_after_the_hello_reaches_the_link():
    pair = Pair(identity(0), identity(1))
    # The listener's link starts beating at once: its hello and first heartbeat arrive in one read.
    pair.dialer.receive_data(pair.listener.data_to_send() + encode(Heartbeat()))
    pair.listener.receive_data(pair.dialer.data_to_send())
    assert pair.dialer.next_event() == Established(identity(1).hello(None))
    assert pair.listener.next_event() == Established(identity(0).hello(1))
    assert pair.dialer.decoder.next_frame() == Heartbeat()
    assert pair.dialer.decoder.next_frame() is None


# ---------------------------------------------------------------------------------------------------------------
# replaces(): which of two established connections to one peer is kept
# ---------------------------------------------------------------------------------------------------------------


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
