"""The hello exchange (meshd.core.hello): judge() verdicts, the conclusion table, and two Handshake machines wired
back to back with no sockets, like h11's ConnectionPair: every test controls exactly which bytes arrive and when."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.generation import MAJOR_CEILING
from meshd.core.hello import (
    CONCLUSIONS,
    Action,
    Handshake,
    Identity,
    Outcome,
    PeerAnswer,
    PeerFailed,
    PeerHello,
    Phase,
    conclude,
    judge,
)
from meshd.core.wire import (
    NO_TARGET,
    PROTOCOL_VERSION,
    Accept,
    Epoch,
    Goodbye,
    Heartbeat,
    Hello,
    Refuse,
    RefuseReason,
    decode_all,
    encode,
)
from meshd.errors import LocalProtocolError


def identity(index, *, size=3, epoch=1, cluster="demo", incarnation=None, auto=False):
    return Identity(cluster, index, size, Epoch(epoch), 1000 + index if incarnation is None else incarnation, auto)


def hello(sender=1, target=0, *, epoch=1, cluster="demo", incarnation=77, auto=False):
    return Hello(cluster, sender, target, Epoch(epoch), incarnation, auto)


ME = identity(0)
AUTO = identity(0, auto=True)


def verdict(judgement):
    """(answer kind, refuse reason or None, action) of a judgement."""
    answer = judgement.answer
    reason = answer.reason if isinstance(answer, Refuse) else None
    return type(answer).__name__, reason, judgement.action


# ---------------------------------------------------------------------------------------------------------------
# judge(): the verdict on one hello, in the documented order
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expected_peer", [1, None], ids=["dialed", "accepted"])
def test_equal_epoch_is_accepted_and_linked_once_the_peer_accepts(expected_peer):
    assert verdict(judge(ME, hello(), expected_peer, None, None)) == ("Accept", None, Action.LINK)


def test_listener_hello_without_target_is_accepted():
    assert judge(ME, hello(target=NO_TARGET), 1, None, None).action is Action.LINK


def test_older_peer_is_told_it_is_stale_and_nothing_changes_here():
    assert verdict(judge(ME, hello(epoch=0), 1, None, None)) == ("Refuse", RefuseReason.STALE_EPOCH, Action.NONE)


def test_newer_peer_is_followed_once_it_answers():
    judgement = judge(ME, hello(epoch=2), 1, None, None)
    assert verdict(judgement) == ("Refuse", RefuseReason.BEHIND, Action.FOLLOW)


def test_older_peer_whose_slot_our_generation_holds_is_told_sealed():
    """(auto) Its slot is taken in our generation: it may not join ours, and must mint above it instead."""
    members = (AUTO.incarnation, 55, 0)
    judgement = judge(AUTO, hello(epoch=0, auto=True), 1, members, None)
    assert verdict(judgement) == ("Refuse", RefuseReason.SEALED, Action.NONE)
    consented = judge(AUTO, hello(epoch=0, auto=True), 1, (AUTO.incarnation, 0, 0), None)
    assert verdict(consented) == ("Refuse", RefuseReason.STALE_EPOCH, Action.NONE)


def test_an_old_hello_of_our_own_member_is_not_a_conflict():
    """A member may have sent a hello before it moved up into our generation; it is the same process."""
    members = (AUTO.incarnation, 77, 0)
    judgement = judge(AUTO, hello(epoch=0, auto=True, incarnation=77), 1, members, None)
    assert verdict(judgement) == ("Refuse", RefuseReason.STALE_EPOCH, Action.NONE)


def test_same_generation_with_another_member_in_the_slot_is_a_conflict_we_leave():
    members = (AUTO.incarnation, 55, 0)
    judgement = judge(AUTO, hello(auto=True, incarnation=77), 1, members, None)
    assert verdict(judgement) == ("Refuse", RefuseReason.SEALED, Action.LEAVE)
    same = judge(AUTO, hello(auto=True, incarnation=55), 1, members, None)
    assert same.action is Action.LINK


@pytest.mark.parametrize("epoch", [1, 2], ids=["same", "newer"])
def test_a_ready_mesh_refuses_a_duplicate_of_a_held_slot(epoch):
    members = (AUTO.incarnation, 55, 66)
    judgement = judge(AUTO, hello(epoch=epoch, auto=True, incarnation=77), 1, members, holder=55)
    assert verdict(judgement) == ("Refuse", RefuseReason.RETIRED, Action.NONE)


def test_a_ready_mesh_follows_a_newer_generation_of_its_own_member():
    members = (AUTO.incarnation, 55, 66)
    judgement = judge(AUTO, hello(epoch=2, auto=True, incarnation=55), 1, members, holder=55)
    assert judgement.action is Action.FOLLOW


def test_a_generation_beyond_the_ceiling_is_refused():
    absurd = Hello("demo", 1, 0, Epoch(MAJOR_CEILING + 1), 77, True)
    assert verdict(judge(AUTO, absurd, 1, (AUTO.incarnation, 0, 0), None)) == (
        "Refuse",
        RefuseReason.BAD_EPOCH,
        Action.NONE,
    )
    highest = Hello("demo", 1, 0, Epoch(MAJOR_CEILING), 77, True)
    assert judge(AUTO, highest, 1, (AUTO.incarnation, 0, 0), None).action is Action.FOLLOW


WRONG = {
    "other cluster": (hello(cluster="other"), 1, RefuseReason.WRONG_CLUSTER),
    "sender out of range": (hello(sender=7), None, RefuseReason.WRONG_INDEX),
    "sender is us": (hello(sender=0), None, RefuseReason.WRONG_INDEX),
    "not the index we dialed": (hello(sender=2), 1, RefuseReason.WRONG_INDEX),
    "target is another index": (hello(target=2), None, RefuseReason.WRONG_INDEX),
    "other mode": (hello(auto=True), 1, RefuseReason.WRONG_MODE),
}


@pytest.mark.parametrize(("peer_hello", "expected_peer", "reason"), WRONG.values(), ids=WRONG.keys())
def test_hellos_that_do_not_fit_are_refused_and_change_nothing(peer_hello, expected_peer, reason):
    assert verdict(judge(ME, peer_hello, expected_peer, None, None)) == ("Refuse", reason, Action.NONE)


def test_checks_run_in_the_documented_order():
    """Cluster before index before mode before epochs."""
    everything_wrong = Hello("other", 9, 5, Epoch(0), 77, True)
    assert judge(ME, everything_wrong, 1, None, None).answer.reason is RefuseReason.WRONG_CLUSTER
    assert judge(ME, Hello("demo", 9, 5, Epoch(0), 77, True), 1, None, None).answer.reason is RefuseReason.WRONG_INDEX
    assert judge(ME, Hello("demo", 1, 0, Epoch(0), 77, True), 1, None, None).answer.reason is RefuseReason.WRONG_MODE


@st.composite
def peer_pairs(draw):
    """Two fixed-epoch identities of one cluster with distinct indices."""
    size = draw(st.integers(2, 8))
    index_a, index_b = draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=2, unique=True))
    epoch = st.builds(Epoch, st.integers(0, 2), st.integers(0, 2))
    a = Identity("demo", index_a, size, draw(epoch), draw(st.integers(0, 2**64 - 1)))
    b = Identity("demo", index_b, size, draw(epoch), draw(st.integers(0, 2**64 - 1)))
    return a, b


@given(peer_pairs())
def test_both_ends_reach_matching_outcomes(pair):
    """Equal epochs link at both ends; otherwise the older end follows (fixed: fences), the newer is untouched."""
    a, b = pair
    at_a = judge(a, b.hello(None), b.index, None, None)
    at_b = judge(b, a.hello(b.index), None, None, None)
    outcomes = (conclude(at_a.action, at_b.answer), conclude(at_b.action, at_a.answer))
    if a.epoch == b.epoch:
        assert outcomes == (Outcome.LINK, Outcome.LINK)
    elif a.epoch < b.epoch:
        assert outcomes == (Outcome.ADOPT, Outcome.NOTHING)
    else:
        assert outcomes == (Outcome.NOTHING, Outcome.ADOPT)


# ---------------------------------------------------------------------------------------------------------------
# conclude(): the table
# ---------------------------------------------------------------------------------------------------------------


def test_the_conclusion_table():
    seal = Refuse(RefuseReason.SEALED, Epoch(1), "")
    stale = Refuse(RefuseReason.STALE_EPOCH, Epoch(1), "")
    assert conclude(Action.LINK, Accept()) is Outcome.LINK
    assert conclude(Action.LINK, seal) is Outcome.LEAVE
    assert conclude(Action.LINK, stale) is Outcome.NOTHING
    assert conclude(Action.FOLLOW, stale) is Outcome.ADOPT
    assert conclude(Action.FOLLOW, seal) is Outcome.SURPASS
    assert conclude(Action.FOLLOW, Refuse(RefuseReason.RETIRED, Epoch(1), "")) is Outcome.NOTHING
    assert conclude(Action.LEAVE, Accept()) is Outcome.LEAVE
    assert conclude(Action.LEAVE, Goodbye("bye")) is Outcome.LEAVE


@pytest.mark.parametrize("action", list(Action))
def test_no_answer_decides_nothing(action):
    """A ghost hello (its sender died before answering) or a connection cut before the answer changes nothing."""
    assert conclude(action, None) is Outcome.NOTHING


def test_nothing_but_the_table_decides():
    for (action, answer), outcome in CONCLUSIONS.items():
        assert outcome is not Outcome.NOTHING, (action, answer)
    assert all(conclude(Action.NONE, answer) is Outcome.NOTHING for answer in (Accept(), Goodbye("x")))


# ---------------------------------------------------------------------------------------------------------------
# Two machines back to back
# ---------------------------------------------------------------------------------------------------------------


class Pair:
    """A dialer's and a listener's Handshake joined by hand instead of by a socket."""

    def __init__(self, dialer_id, listener_id):
        self.ids = (dialer_id, listener_id)
        self.dialer = Handshake(dialer_id.hello(listener_id.index))
        self.listener = Handshake(listener_id.hello(None))

    def deliver(self):
        """Move every pending byte across, both ways."""
        to_listener, to_dialer = self.dialer.data_to_send(), self.listener.data_to_send()
        self.listener.receive_data(to_listener)
        self.dialer.receive_data(to_dialer)

    def run(self):
        """Both rounds, each end judging with no membership: the two judgements and the two answers read."""
        self.deliver()
        judgements = []
        dialer_id, listener_id = self.ids
        for machine, me, theirs, expected in (
            (self.dialer, dialer_id, listener_id.hello(None), listener_id.index),
            (self.listener, listener_id, dialer_id.hello(listener_id.index), None),
        ):
            event = machine.next_event()
            assert event == PeerHello(theirs)
            judgement = judge(me, event.hello, expected, None, None)
            machine.answer(judgement.answer)
            judgements.append(judgement)
        self.deliver()
        return judgements, (self.dialer.next_event(), self.listener.next_event())


def test_matching_peers_accept_each_other_in_two_rounds():
    pair = Pair(identity(0), identity(2))
    (at_dialer, at_listener), answers = pair.run()
    assert answers == (PeerAnswer(Accept()), PeerAnswer(Accept()))
    assert conclude(at_dialer.action, answers[0].answer) is Outcome.LINK
    assert conclude(at_listener.action, answers[1].answer) is Outcome.LINK
    assert pair.dialer.phase is Phase.DONE and pair.listener.phase is Phase.DONE
    assert pair.dialer.data_to_send() == b"" and pair.listener.data_to_send() == b""


def test_each_machine_sends_its_hello_first():
    machine = Handshake(identity(1).hello(2))
    assert decode_all(machine.data_to_send()) == [identity(1).hello(2)]
    assert machine.data_to_send() == b""


@pytest.mark.parametrize("stale_side", ["dialer", "listener"])
def test_the_stale_side_follows_only_after_the_newer_side_answered(stale_side):
    stale, newer = identity(0, epoch=3), identity(1, epoch=4)
    pair = Pair(stale, newer) if stale_side == "dialer" else Pair(newer, stale)
    (at_dialer, at_listener), (to_dialer, to_listener) = pair.run()
    at_stale, at_newer = (at_dialer, at_listener) if stale_side == "dialer" else (at_listener, at_dialer)
    to_stale, to_newer = (to_dialer, to_listener) if stale_side == "dialer" else (to_listener, to_dialer)
    assert at_stale.action is Action.FOLLOW and at_newer.action is Action.NONE
    assert to_stale.answer.reason is RefuseReason.STALE_EPOCH
    assert to_newer.answer.reason is RefuseReason.BEHIND
    assert conclude(at_stale.action, to_stale.answer) is Outcome.ADOPT
    assert conclude(at_newer.action, to_newer.answer) is Outcome.NOTHING


def test_the_answer_must_follow_the_hello():
    machine = Handshake(identity(0).hello(1))
    with pytest.raises(LocalProtocolError):
        machine.answer(Accept())
    machine.receive_data(encode(identity(1).hello(None)))
    assert isinstance(machine.next_event(), PeerHello)
    assert machine.next_event() is None  # our answer is due first
    machine.answer(Accept())
    with pytest.raises(LocalProtocolError):
        machine.answer(Accept())


def test_hello_arriving_in_pieces_waits_for_the_whole_frame():
    machine = Handshake(identity(0).hello(1))
    data = encode(identity(1).hello(None))
    for position in range(len(data) - 1):
        machine.receive_data(data[position : position + 1])
        assert machine.next_event() is None
    machine.receive_data(data[-1:])
    assert machine.next_event() == PeerHello(identity(1).hello(None))


@pytest.mark.parametrize(
    "garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x01\x63", b"\x00\x00\x00\x00"], ids=["http", "type", "empty"]
)
def test_garbage_is_refused_as_a_protocol_error(garbage):
    machine = Handshake(identity(0).hello(None))
    machine.data_to_send()
    machine.receive_data(garbage)
    event = machine.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.PROTOCOL_ERROR
    [refusal] = decode_all(machine.data_to_send())
    assert isinstance(refusal, Refuse) and refusal.reason is RefuseReason.PROTOCOL_ERROR


def test_first_frame_other_than_hello_is_a_protocol_error():
    machine = Handshake(identity(0).hello(None))
    machine.receive_data(encode(Heartbeat()))
    event = machine.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.PROTOCOL_ERROR


def test_hello_of_another_version_is_refused_as_bad_version():
    machine = Handshake(identity(0).hello(None))
    machine.receive_data(encode(Hello("demo", 1, 0, Epoch(1), 7, version=PROTOCOL_VERSION + 1)))
    event = machine.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.BAD_VERSION


def test_end_of_stream_before_the_hello_fails_without_a_reason():
    machine = Handshake(identity(0).hello(None))
    machine.receive_eof()
    assert machine.next_event() == PeerFailed(None, "peer closed before its hello")


def test_end_of_stream_before_the_answer_is_no_answer():
    machine = Handshake(identity(0).hello(1))
    machine.receive_data(encode(identity(1).hello(None)))
    assert isinstance(machine.next_event(), PeerHello)
    machine.answer(Accept())
    machine.receive_eof()
    assert machine.next_event() == PeerAnswer(None)


def test_a_peer_that_refuses_us_unheard_fails_with_its_reason():
    machine = Handshake(identity(0).hello(1))
    machine.receive_data(encode(Refuse(RefuseReason.BAD_VERSION, Epoch(1), "old")))
    event = machine.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.BAD_VERSION


def test_frames_after_the_answer_stay_in_the_decoder():
    machine = Handshake(identity(0).hello(1))
    machine.receive_data(encode(identity(1).hello(None)) + encode(Accept()) + encode(Heartbeat()))
    assert isinstance(machine.next_event(), PeerHello)
    machine.answer(Accept())
    assert machine.next_event() == PeerAnswer(Accept())
    assert machine.decoder.next_frame() == Heartbeat()
    assert machine.next_event() is None
