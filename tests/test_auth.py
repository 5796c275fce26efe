"""The authenticated handshake without sockets (``meshd.core.auth`` and the Handshake machine of
``meshd.core.hello``): two machines wired together, and an attacker between or beside them.

What must hold: both ends holding a key link; nothing of an end's state (its hello: epoch, incarnation) leaves it
before the peer proved a key, and its refusals carry epoch 0 until then; a stranger, a wrong key, a replayed
transcript, a reflected challenge or proof, a tampered hello or answer never yields PeerHello (or an answer); key
rotation (sign with the first key, accept any) links old and new keyrings. Key files: hex or base64, at least 32
bytes, named by line when bad.
"""

from __future__ import annotations

import base64
import secrets

import pytest

from meshd.core.auth import MIN_KEY_BYTES, Authenticator, Keyring, parse_keys
from meshd.core.hello import UNDISCLOSED, Handshake, PeerAnswer, PeerFailed, PeerHello
from meshd.core.wire import (
    NONCE_SIZE,
    Accept,
    Challenge,
    Epoch,
    Hello,
    Proof,
    Refuse,
    RefuseReason,
    Seal,
    decode_all,
    encode,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
DIALER_HELLO = Hello("demo", 0, 1, Epoch(7), 0xD1)
LISTENER_HELLO = Hello("demo", 1, 0xFFFF, Epoch(7), 0x11)


def machine(hello: Hello, keys: tuple[bytes, ...] | None, *, dialer: bool, nonce: bytes | None = None) -> Handshake:
    auth = None
    if keys is not None:
        auth = Authenticator(Keyring(keys), dialer=dialer, data=False, nonce=nonce or secrets.token_bytes(NONCE_SIZE))
    return Handshake(hello, auth)


def run_pair(dialer: Handshake, listener: Handshake, *, tamper=None, rounds: int = 20) -> tuple[list, list, list]:
    """Shuttle bytes between two machines (``tamper`` may rewrite what the dialer sends) until both are done;
    answer every PeerHello with ACCEPT. The events of each, and the frames the dialer sent."""
    events: list[list[object]] = [[], []]
    sent_by_dialer: list[bytes] = []
    ends = (dialer, listener)
    for _ in range(rounds):
        moved = False
        for side, (me, other) in enumerate(((dialer, listener), (listener, dialer))):
            while (event := me.next_event()) is not None:
                events[side].append(event)
                if isinstance(event, PeerHello):
                    me.answer(Accept())
            data = me.data_to_send()
            if data:
                if side == 0:
                    sent_by_dialer.append(data)
                    if tamper is not None:
                        data = tamper(data)
                other.receive_data(data)
                moved = True
        if not moved and all(end.next_event() is None for end in ends):
            break
    return events[0], events[1], sent_by_dialer


# ----- honest ends


# The steps of a rotation from KEY_A to KEY_B, each a state two processes may be in at once: roll the new key onto
# every process (second), make it first everywhere, then remove the old one.
ROTATION = [
    pytest.param((KEY_A,), (KEY_A,), id="before"),
    pytest.param((KEY_A, KEY_B), (KEY_A,), id="new key rolled onto one end"),
    pytest.param((KEY_B, KEY_A), (KEY_A, KEY_B), id="new key first on one end"),
    pytest.param((KEY_B,), (KEY_B, KEY_A), id="old key removed on one end"),
    pytest.param((KEY_B,), (KEY_B,), id="after"),
]


@pytest.mark.parametrize(("dialer_keys", "listener_keys"), ROTATION)
@pytest.mark.parametrize("swap", [False, True], ids=["", "ends swapped"])
def test_ends_at_neighbouring_steps_of_a_rotation_link(dialer_keys, listener_keys, swap):
    if swap:
        dialer_keys, listener_keys = listener_keys, dialer_keys
    dialer_events, listener_events, _ = run_pair(
        machine(DIALER_HELLO, dialer_keys, dialer=True), machine(LISTENER_HELLO, listener_keys, dialer=False)
    )
    assert dialer_events == [PeerHello(LISTENER_HELLO), PeerAnswer(Accept())]
    assert listener_events == [PeerHello(DIALER_HELLO), PeerAnswer(Accept())]


def test_a_key_made_first_before_every_process_has_it_does_not_link():
    """Skipping the roll-out step: the end that signs with KEY_B meets one that lists only KEY_A."""
    dialer_events, _, _ = run_pair(
        machine(DIALER_HELLO, (KEY_B, KEY_A), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    )
    assert not any(isinstance(event, PeerHello) for event in dialer_events)


def test_without_a_secret_the_handshake_is_the_plain_one():
    dialer_events, listener_events, sent = run_pair(
        machine(DIALER_HELLO, None, dialer=True), machine(LISTENER_HELLO, None, dialer=False)
    )
    assert dialer_events == [PeerHello(LISTENER_HELLO), PeerAnswer(Accept())]
    assert listener_events == [PeerHello(DIALER_HELLO), PeerAnswer(Accept())]
    assert decode_all(b"".join(sent)) == [DIALER_HELLO, Accept()]


# ----- strangers


def test_ends_with_different_keys_never_see_each_others_hello():
    dialer_events, listener_events, sent = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_B,), dialer=False)
    )
    for events in (dialer_events, listener_events):
        assert len(events) == 1 and isinstance(events[0], PeerFailed)
        assert events[0].reason is RefuseReason.AUTH_FAILED and events[0].ours
    assert not any(isinstance(frame, Hello) for frame in decode_all(b"".join(sent)))


def test_a_keyless_end_and_a_keyed_end_refuse_each_other():
    dialer_events, listener_events, _ = run_pair(
        machine(DIALER_HELLO, None, dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    )
    assert [type(event) for event in dialer_events + listener_events] == [PeerFailed, PeerFailed]
    assert not any(isinstance(event, PeerHello) for event in dialer_events + listener_events)


def test_nothing_is_disclosed_to_a_stranger():
    """A listener with a key, fed a stranger's hello, a challenge and a bogus proof: it sends its challenge, a proof
    and a refusal with epoch 0, never its hello (no epoch, no incarnation)."""
    for stranger in (
        encode(Hello("demo", 0, 1, Epoch(2**63), 0x5)),  # a forged newer epoch without any authentication
        encode(Challenge(b"\x01" * NONCE_SIZE, dialer=True)) + encode(Proof(b"\x02" * 32)),
        encode(Challenge(b"\x01" * NONCE_SIZE, dialer=True)) + encode(Proof(b"\x02" * 32)) + encode(DIALER_HELLO),
    ):
        listener = machine(LISTENER_HELLO, (KEY_A,), dialer=False)
        listener.receive_data(stranger)
        event = listener.next_event()
        out = decode_all(listener.data_to_send())
        assert isinstance(event, PeerFailed) and event.reason is RefuseReason.AUTH_FAILED
        assert not any(isinstance(frame, Hello) for frame in out)
        [refusal] = [frame for frame in out if isinstance(frame, Refuse)]
        assert refusal.epoch == UNDISCLOSED == Epoch(0) and "7" not in refusal.detail


def test_a_replayed_transcript_does_not_authenticate():
    """Everything an honest dialer sent in one session, replayed to a new session of the same listener: the
    listener's nonce differs, so the recorded proof fails and the recorded hello is never taken."""
    _, _, recorded = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    )
    listener = machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    listener.receive_data(b"".join(recorded))
    event = listener.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.AUTH_FAILED
    assert not any(isinstance(frame, Hello) for frame in decode_all(listener.data_to_send()))


def test_a_reflected_challenge_or_proof_is_refused():
    """A stranger sends the listener's own challenge back (same nonce, its role) or claims the listener's role."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    for reflected in (
        Challenge(nonce, dialer=False),  # the listener's own challenge, role and nonce
        Challenge(secrets.token_bytes(NONCE_SIZE), dialer=False),  # a second "listener"
        Challenge(nonce, dialer=True),  # its nonce under the other role
        Challenge(secrets.token_bytes(NONCE_SIZE), dialer=True, data=True),  # a data connection's
    ):
        listener = machine(LISTENER_HELLO, (KEY_A,), dialer=False, nonce=nonce)
        listener.receive_data(encode(reflected))
        event = listener.next_event()
        assert isinstance(event, PeerFailed) and event.reason is RefuseReason.AUTH_FAILED


def test_a_proof_cannot_be_reflected_back_to_its_maker():
    """The listener's own proof, sent back to it as the dialer's: the role in the tag makes it fail."""
    listener = machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    listener.receive_data(encode(Challenge(secrets.token_bytes(NONCE_SIZE), dialer=True)))
    assert listener.next_event() is None
    [_, own_proof] = decode_all(listener.data_to_send())
    assert isinstance(own_proof, Proof)
    listener.receive_data(encode(own_proof))
    event = listener.next_event()
    assert isinstance(event, PeerFailed) and event.reason is RefuseReason.AUTH_FAILED


def _rewrite(frame_type: type, change) -> object:
    """A tamper function for run_pair: rewrite every frame of ``frame_type`` the dialer sends."""

    def tamper(data: bytes) -> bytes:
        return b"".join(encode(change(frame) if isinstance(frame, frame_type) else frame) for frame in decode_all(data))

    return tamper


def test_a_relay_that_changes_the_hello_is_caught():
    """A relay between two honest ends passes the challenges and proofs and raises the dialer's epoch in its hello:
    the listener's check of the seal fails, so the forged epoch has no effect."""
    forge = _rewrite(Hello, lambda hello: Hello(hello.cluster, hello.sender, hello.target, Epoch(2**63), 9))
    _, listener_events, _ = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False), tamper=forge
    )
    assert not any(isinstance(event, PeerHello) for event in listener_events)
    assert isinstance(listener_events[0], PeerFailed) and listener_events[0].reason is RefuseReason.AUTH_FAILED


def test_a_relay_that_changes_the_answer_is_caught():
    """The relay turns the dialer's ACCEPT into a SEALED refusal (which would make a sealed process exit): the
    listener takes it as no answer at all."""
    forge = _rewrite(Accept, lambda _: Refuse(RefuseReason.SEALED, Epoch(7), "forged"))
    _, listener_events, _ = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False), tamper=forge
    )
    assert listener_events == [PeerHello(DIALER_HELLO), PeerAnswer(None)]


def test_a_seal_from_another_session_does_not_fit():
    """A relay that swaps in a seal recorded from another session (same key, same hello) is caught."""
    _, _, recorded = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False)
    )
    old_seal = next(frame for frame in decode_all(b"".join(recorded)) if isinstance(frame, Seal))
    swap_seal = _rewrite(Seal, lambda _: old_seal)
    _, listener_events, _ = run_pair(
        machine(DIALER_HELLO, (KEY_A,), dialer=True), machine(LISTENER_HELLO, (KEY_A,), dialer=False), tamper=swap_seal
    )
    assert not any(isinstance(event, PeerHello) for event in listener_events)


# ----- key files


def test_key_files_take_hex_and_base64_and_skip_comments():
    hex_key, b64_key, url_key = secrets.token_bytes(32), secrets.token_bytes(48), b"\xfb\xff" * 20
    text = "\n".join([
        "# rolled in 2026-12",
        hex_key.hex(),
        "",
        "  " + base64.b64encode(b64_key).decode() + "  ",
        base64.urlsafe_b64encode(url_key).decode(),
    ])  # fmt: skip
    assert parse_keys(text) == (hex_key, b64_key, url_key)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("ab" * (MIN_KEY_BYTES - 1), ("line 1", "31 bytes"), id="short hex"),
        pytest.param("# only a comment\n\n", ("no key",), id="empty"),
        pytest.param("\n" + "not a key!" * 8, ("line 2", "neither hex nor base64"), id="garbage"),
        pytest.param(base64.b64encode(b"x" * 16).decode(), ("16 bytes",), id="short base64"),
    ],
)
def test_bad_key_files_are_named(text, words):
    with pytest.raises(ValueError) as info:
        parse_keys(text)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_a_keyring_signs_with_its_first_key():
    assert Keyring((KEY_A, KEY_B)).signing == Keyring((KEY_A,)).signing != Keyring((KEY_B, KEY_A)).signing
    with pytest.raises(ValueError):
        Keyring(())
