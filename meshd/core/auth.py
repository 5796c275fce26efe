"""Peer authentication: the cluster's keyring and the tags of the authenticated handshake. Pure, no I/O.

With a cluster secret every connection, control link or data connection, opens with two rounds of its own, and every
hello and answer after them carries a SEAL (docs/protocol.md)::

    1. both ends: CHALLENGE   a fresh nonce, which end dialed, link or data: nothing else is disclosed
    2. both ends: PROOF       tag("proof",  role, challenge_d, challenge_l)
    3. both ends: HELLO SEAL  tag("hello",  role, challenge_d, challenge_l, own hello)
    4. both ends: answer SEAL tag("answer", role, challenge_d, challenge_l, hello_d, hello_l, own answer)

``tag`` is HMAC-SHA256 under a key derived from one of the secret's keys for this purpose alone; ``_d``/``_l`` are
the dialer's and the listener's frames (their encoded bytes), ``role`` the sender's. An end reads the peer's PROOF
before it sends anything of its own state, so a stranger learns a nonce and no more. Both nonces bind every tag to
this connection (a recorded handshake replays nowhere), the roles forbid reflecting an end's tags back at it, and the
answer's tag covers both hellos whole: cluster, indices, epochs, incarnations, modes.

Key rotation: an end signs with the first key of its keyring and accepts a proof under any key it lists; the key
that verified the peer's proof verifies the peer's seals on that connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import string

from attrs import field, frozen

from meshd.core.wire import NONCE_SIZE, Challenge, Proof, Seal, encode

# The least a key may have: 256 bits, HMAC-SHA256's strength.
MIN_KEY_BYTES = 32
# The bytes of a key ``meshd keygen`` makes.
NEW_KEY_BYTES = 32
# Derives the handshake's MAC key from a secret's key, so that the key is used for this purpose alone.
DERIVATION_LABEL = b"meshd v3 handshake key"
_DIALER, _LISTENER = b"dialer", b"listener"
# URL-safe base64 read as standard base64.
_URL_SAFE = str.maketrans("-_", "+/")


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys of a secret file: one per line, hex or base64; blank lines and ``#`` comments are skipped.

    Raises ValueError naming the key (by its line) that is not hex or base64 or is shorter than MIN_KEY_BYTES.
    """
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        key = _decode_key(word)
        if key is None:
            raise ValueError(f"the key on line {number} is neither hex nor base64")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the key on line {number} has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")
        keys.append(key)
    if not keys:
        raise ValueError("holds no key")
    return tuple(keys)


def _decode_key(word: str) -> bytes | None:
    """A key from hex, or else from base64 (standard or URL-safe); None when it is neither."""
    if len(word) % 2 == 0 and all(c in string.hexdigits for c in word):
        return bytes.fromhex(word)
    try:
        return base64.b64decode(word.translate(_URL_SAFE), validate=True)
    except (binascii.Error, ValueError):
        return None


def format_key(key: bytes) -> str:
    """A key as a line of a secret file (hex)."""
    return key.hex()


def _derive(key: bytes) -> bytes:
    return hmac.new(key, DERIVATION_LABEL, hashlib.sha256).digest()


@frozen
class Keyring:
    """The secret's keys, derived for the handshake: sign with the first, accept any."""

    keys: tuple[bytes, ...] = field(converter=lambda keys: tuple(_derive(key) for key in keys))

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring needs at least one key")

    @property
    def signing(self) -> bytes:
        return self.keys[0]


def _tag(key: bytes, label: bytes, role: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over the label, the sender's role and each part with its length (no two transcripts collide)."""
    message = [label, b"\0", role]
    for part in parts:
        message += (len(part).to_bytes(4, "big"), part)
    return hmac.digest(key, b"".join(message), "sha256")  # one-shot: OpenSSL's, without the HMAC object


class Authenticator:
    """One end's side of the authentication of one connection: make our tags, check the peer's.

    The checks return False for a bad tag (the caller refuses AUTH_FAILED) and never raise on the peer's input.
    """

    def __init__(self, keyring: Keyring, *, dialer: bool, data: bool, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce has {NONCE_SIZE} bytes")
        self.challenge = Challenge(nonce, dialer, data)
        self._keyring = keyring
        self._role, self._peer_role = (_DIALER, _LISTENER) if dialer else (_LISTENER, _DIALER)
        self._challenges: tuple[bytes, bytes] | None = None  # (the dialer's, the listener's), encoded
        self._peer_key: bytes | None = None  # the key that verified the peer's proof
        self._hellos = {_DIALER: b"", _LISTENER: b""}

    @property
    def authenticated(self) -> bool:
        """Whether the peer proved a key of ours (only then may anything of our state be sent)."""
        return self._peer_key is not None

    def take_challenge(self, challenge: Challenge) -> Proof | None:
        """Our proof for the peer's challenge; None when the challenge does not fit ours (the same role, the
        other kind of connection, our own nonce reflected)."""
        ours = self.challenge
        if challenge.dialer == ours.dialer or challenge.data != ours.data or challenge.nonce == ours.nonce:
            return None
        pair = (encode(ours), encode(challenge))
        self._challenges = pair if ours.dialer else (pair[1], pair[0])
        return Proof(_tag(self._keyring.signing, b"proof", self._role, *self._challenges))

    def check_proof(self, proof: Proof) -> bool:
        """Whether the peer's proof verifies under any key of ours (that key then verifies its seals)."""
        if self._challenges is None:
            return False
        for key in self._keyring.keys:
            if hmac.compare_digest(proof.tag, _tag(key, b"proof", self._peer_role, *self._challenges)):
                self._peer_key = key
                return True
        return False

    def seal_hello(self, hello: bytes) -> Seal:
        """The seal after our hello (its encoded bytes); only once the peer is authenticated."""
        assert self._challenges is not None and self.authenticated, "no hello before the peer's proof"
        self._hellos[self._role] = hello
        return Seal(_tag(self._keyring.signing, b"hello", self._role, *self._challenges, hello))

    def check_hello(self, hello: bytes, seal: Seal) -> bool:
        if self._peer_key is None or self._challenges is None:
            return False
        if not hmac.compare_digest(seal.tag, _tag(self._peer_key, b"hello", self._peer_role, *self._challenges, hello)):
            return False
        self._hellos[self._peer_role] = hello
        return True

    def seal_answer(self, answer: bytes) -> Seal:
        """The seal after our answer: over both challenges, both hellos and the answer."""
        assert self._challenges is not None and self.authenticated, "no answer before the peer's proof"
        return Seal(_tag(self._keyring.signing, b"answer", self._role, *self._transcript(), answer))

    def check_answer(self, answer: bytes, seal: Seal) -> bool:
        if self._peer_key is None:
            return False
        return hmac.compare_digest(
            seal.tag, _tag(self._peer_key, b"answer", self._peer_role, *self._transcript(), answer)
        )

    def _transcript(self) -> tuple[bytes, ...]:
        assert self._challenges is not None
        return (*self._challenges, self._hellos[_DIALER], self._hellos[_LISTENER])
