"""The hello exchange: what each end says, how it judges the other, and what the two answers decide. No I/O.

Every connection starts with two rounds, run by both ends alike::

    both send HELLO at once  ->  each judges the other's hello and answers ACCEPT or REFUSE  ->  each reads the
    other's answer and concludes

Nothing a hello says takes effect until the peer has answered ours: an answer proves that the peer was alive after
reading our hello, so a hello served from a listen backlog after its sender died (a *ghost hello*) decides nothing.

``judge`` is the verdict on one hello, checked in this order (first match wins):

1. another cluster, an index that does not fit, the other epoch mode, a generation beyond the ceiling: refuse
   (WRONG_CLUSTER, WRONG_INDEX, WRONG_MODE, BAD_EPOCH); nothing changes at either end;
2. the peer's epoch is older: refuse STALE_EPOCH, or (auto) SEALED when our generation already has a member in the
   peer's slot (the peer may then not join our generation and must mint above it);
3. the peer's epoch is newer: answer BEHIND and FOLLOW it once it answers (adopt it, mint above it, or exit);
   except (auto) while our mesh is ready and links the peer's slot with another incarnation: refuse RETIRED (a
   duplicate does not break up a ready mesh);
4. equal epochs, (auto) our member in the peer's slot is another incarnation: RETIRED while our ready mesh links it,
   else SEALED and LEAVE our generation once the peer answers (it can never hold the live process of that slot);
5. otherwise ACCEPT: the peer becomes our generation's member in its slot (the caller records it at once), and the
   connection becomes the link when the peer accepts too.

``conclude`` turns our pending action and the peer's answer into an Outcome (the table CONCLUSIONS), and ``move``
turns an outcome into what the process does, by where it stands (the table MOVES): with self-minted generations a
process never ready in its generation moves in place (ADOPT: to the peer's generation; SURPASS: to a new one above
the peer's; LEAVE: to a new one above its own), while a sealed process or one with a fixed epoch exits 75 instead.
The three are the whole of the deciding rules; the mesh model (``meshd.core.mesh``) applies them.
"""

from __future__ import annotations

import enum

from attrs import frozen

from meshd.core import generation
from meshd.core.auth import Authenticator
from meshd.core.wire import (
    NO_TARGET,
    Accept,
    Answer,
    Challenge,
    Epoch,
    Frame,
    FrameDecoder,
    Goodbye,
    Hello,
    Proof,
    Refuse,
    RefuseReason,
    Seal,
    UnsupportedVersion,
    encode,
)
from meshd.errors import LocalProtocolError, RemoteProtocolError


@frozen
class Identity:
    """What this process says in its hello: who it is and which epoch it runs."""

    cluster: str
    index: int
    size: int
    epoch: Epoch
    incarnation: int
    auto: bool = False  # self-minted generations (``--epoch auto``)

    def hello(self, target: int | None) -> Hello:
        return Hello(
            self.cluster, self.index, NO_TARGET if target is None else target, self.epoch, self.incarnation, self.auto
        )


class Action(enum.Enum):
    """What the judging end will do once the peer has answered its hello."""

    NONE = "none"  # nothing changes at this end
    LINK = "link"  # we accepted: the connection becomes the link if the peer accepts too
    FOLLOW = "follow"  # the peer's epoch is newer: follow it (ADOPT or SURPASS, by the peer's answer)
    LEAVE = "leave"  # our generation cannot hold the peer's live process in its slot: leave it


@frozen
class Judgement:
    answer: Answer  # what we send back: ACCEPT, or REFUSE with the reason
    action: Action


def judge(
    me: Identity, hello: Hello, expected_peer: int | None, members: tuple[int, ...] | None, holder: int | None
) -> Judgement:
    """Our verdict on a peer's hello. ``expected_peer`` is the index we dialed (None: an accepted connection).

    ``members`` (auto) are our generation's members, slot by slot (0: none yet); ``holder`` is the incarnation our
    mesh links in the sender's slot while it is ready (None when it is not ready).
    """

    def refuse(reason: RefuseReason, detail: str, action: Action = Action.NONE) -> Judgement:
        return Judgement(Refuse(reason, me.epoch, detail), action)

    if hello.cluster != me.cluster:
        return refuse(RefuseReason.WRONG_CLUSTER, f"hello for cluster {hello.cluster!r}, we are {me.cluster!r}")
    if not 0 <= hello.sender < me.size or hello.sender == me.index:
        return refuse(RefuseReason.WRONG_INDEX, f"sender index {hello.sender} is not a peer of ours")
    if expected_peer is not None and hello.sender != expected_peer:
        return refuse(RefuseReason.WRONG_INDEX, f"dialed index {expected_peer} but index {hello.sender} answered")
    if hello.target not in (me.index, NO_TARGET):
        return refuse(RefuseReason.WRONG_INDEX, f"peer wants index {hello.target}, we are index {me.index}")
    if hello.auto != me.auto:
        modes = ("fixed epochs", "self-minted generations")
        return refuse(RefuseReason.WRONG_MODE, f"peer uses {modes[hello.auto]}, we use {modes[me.auto]}")
    if me.auto and not generation.acceptable(hello.epoch):
        return refuse(RefuseReason.BAD_EPOCH, f"peer generation {hello.epoch} lies beyond the generation ceiling")
    member = 0 if members is None else members[hello.sender]
    if hello.epoch < me.epoch:
        if member not in (0, hello.incarnation):  # (the same process may have sent this hello before it moved up)
            return refuse(
                RefuseReason.SEALED, f"generation {me.epoch} already has another process in slot {hello.sender}"
            )
        return refuse(RefuseReason.STALE_EPOCH, f"peer epoch {hello.epoch} is older than ours")
    if holder not in (None, hello.incarnation):
        detail = f"our ready mesh in {me.epoch} links slot {hello.sender} with incarnation {holder:016x}"
        return refuse(RefuseReason.RETIRED, detail)
    if hello.epoch > me.epoch:
        return refuse(RefuseReason.BEHIND, f"we run {me.epoch}, older than the peer's {hello.epoch}", Action.FOLLOW)
    if member not in (0, hello.incarnation):
        detail = f"generation {me.epoch} already has another process in slot {hello.sender}"
        return refuse(RefuseReason.SEALED, detail, Action.LEAVE)
    return Judgement(Accept(), Action.LINK)


class Outcome(enum.Enum):
    """What an exchange decided at one end, once both answers are in."""

    NOTHING = "nothing"  # no link, nothing changes; the dial loop tries again after a back-off
    LINK = "link"  # both accepted: the connection is offered as the peer's link
    ADOPT = "adopt"  # the peer's epoch is newer and its generation may take us: move to it (or exit 75)
    SURPASS = "surpass"  # the peer's generation is newer but holds our slot: mint above it (or exit 75)
    LEAVE = "leave"  # our generation can never hold the live process of a slot: mint above it (or exit 75)


# (our action, the peer's answer) -> outcome; an answer is ACCEPT, a REFUSE reason, GOODBYE, or None (none came).
# Anything not listed is NOTHING.
CONCLUSIONS: dict[tuple[Action, str], Outcome] = {
    (Action.LINK, "ACCEPT"): Outcome.LINK,
    (Action.LINK, "SEALED"): Outcome.LEAVE,
    (Action.FOLLOW, "STALE_EPOCH"): Outcome.ADOPT,
    (Action.FOLLOW, "SEALED"): Outcome.SURPASS,
    **{(Action.LEAVE, answer): Outcome.LEAVE for answer in ("ACCEPT", "GOODBYE", *RefuseReason.__members__)},
}


def answer_name(answer: Answer | None) -> str:
    """The key an answer has in CONCLUSIONS: ACCEPT, GOODBYE, a refuse reason's name, or NONE."""
    match answer:
        case Accept():
            return "ACCEPT"
        case Goodbye():
            return "GOODBYE"
        case Refuse(reason=reason):
            return reason.name
    return "NONE"


def conclude(action: Action, answer: Answer | None) -> Outcome:
    """The outcome of an exchange at one end: our pending action and the peer's answer (None: it never answered)."""
    return CONCLUSIONS.get((action, answer_name(answer)), Outcome.NOTHING)


class Standing(enum.Enum):
    """Where a process stands when an exchange concludes: what it may do about a newer or conflicting epoch."""

    FIXED = "fixed"  # its epoch comes from a controller (fixed or await mode): it never changes epoch in place
    OPEN = "open"  # auto, never ready in its generation: it may move to another one in place
    SEALED = "sealed"  # auto, was ready in its generation: it leaves it only by exiting


class Move(enum.Enum):
    """What a process does about an outcome (the table MOVES)."""

    STAY = "stay"  # nothing changes
    LINK = "link"  # offer the connection as the peer's link (``meshd.core.slot``)
    JOIN = "join"  # move to the peer's generation in place
    MINT_ABOVE_PEER = "mint above peer"  # mint a generation above the peer's and move to it in place
    MINT_ABOVE_OURS = "mint above ours"  # mint a generation above our own and move to it in place
    EXIT = "exit"  # our generation is over: exit 75 (the orchestrator restarts us)


# (outcome, standing) -> move: R4 and R5 of docs/design.md. Anything not listed is STAY.
MOVES: dict[tuple[Outcome, Standing], Move] = {
    **{(Outcome.LINK, standing): Move.LINK for standing in Standing},
    (Outcome.ADOPT, Standing.FIXED): Move.EXIT,
    (Outcome.ADOPT, Standing.OPEN): Move.JOIN,
    (Outcome.ADOPT, Standing.SEALED): Move.EXIT,
    (Outcome.SURPASS, Standing.FIXED): Move.EXIT,
    (Outcome.SURPASS, Standing.OPEN): Move.MINT_ABOVE_PEER,
    (Outcome.SURPASS, Standing.SEALED): Move.EXIT,
    (Outcome.LEAVE, Standing.OPEN): Move.MINT_ABOVE_OURS,
    (Outcome.LEAVE, Standing.SEALED): Move.EXIT,
}


def move(outcome: Outcome, standing: Standing) -> Move:
    return MOVES.get((outcome, standing), Move.STAY)


@frozen
class PeerHello:
    """The peer's hello arrived: judge it, then call ``Handshake.answer``."""

    hello: Hello


@frozen
class PeerAnswer:
    """The peer's answer to our hello (None: it closed, or sent something else, instead of answering)."""

    answer: Answer | None


@frozen
class PeerFailed:
    """No hello came: the peer closed first, sent garbage or failed to authenticate (we refused it: ``ours``), or
    refused us unheard (``reason`` is the refusal's)."""

    reason: RefuseReason | None
    detail: str
    ours: bool = False  # we refused the peer (else it refused us, or closed)


HandshakeEvent = PeerHello | PeerAnswer | PeerFailed


class Phase(enum.Enum):
    AWAIT_CHALLENGE = "await challenge"  # (with a secret) the peer's nonce
    AWAIT_PROOF = "await proof"  # (with a secret) the peer's proof of a key
    AWAIT_HELLO = "await hello"
    MUST_ANSWER = "must answer"
    AWAIT_ANSWER = "await answer"
    DONE = "done"


# The epoch a refusal carries before the peer proved a key: ours is not disclosed to strangers.
UNDISCLOSED = Epoch(0)


class Handshake:
    """One end of the exchange: feed bytes in, take events out, send what ``data_to_send`` returns.

    Events come in order: PeerHello (then the caller must ``answer``), then PeerAnswer; or PeerFailed. After the
    exchange, ``decoder`` still holds whatever the peer sent after its answer; the link reads on from it.

    With an ``auth`` (a cluster secret) the machine first trades challenges and proofs, sends our hello only once
    the peer's proof verified, and takes the peer's hello and answer only with a valid seal: an unsealed or badly
    sealed hello is PeerFailed(AUTH_FAILED) and never reaches the caller; a badly sealed answer is no answer.
    """

    def __init__(self, hello: Hello, auth: Authenticator | None = None) -> None:
        self.decoder = FrameDecoder()
        self._hello = hello
        self._auth = auth
        self._unsealed_hello: Hello | None = None  # the peer's hello, waiting for its seal
        self._unsealed_answer: Answer | None = None  # the peer's answer, waiting for its seal
        if auth is None:
            self.phase = Phase.AWAIT_HELLO
            self._outgoing = bytearray(encode(hello))
        else:
            self.phase = Phase.AWAIT_CHALLENGE
            self._outgoing = bytearray(encode(auth.challenge))

    @property
    def _disclosed_epoch(self) -> Epoch:
        """The epoch our refusals may carry: ours once the peer proved a key (or without a secret)."""
        return self._hello.epoch if self._auth is None or self._auth.authenticated else UNDISCLOSED

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        self.decoder.receive_data(data)

    def receive_eof(self) -> None:
        self.decoder.receive_eof()

    def answer(self, frame: Answer) -> None:
        """Queue our answer to the peer's hello (only right after PeerHello)."""
        if self.phase is not Phase.MUST_ANSWER:
            raise LocalProtocolError(f"answer in phase {self.phase.value}")
        data = encode(frame)
        self._outgoing += data
        if self._auth is not None:
            self._outgoing += encode(self._auth.seal_answer(data))
        self.phase = Phase.AWAIT_ANSWER

    def next_event(self) -> HandshakeEvent | None:
        """The next event, or None while more bytes are needed (or while our answer is due)."""
        while True:
            if self.phase is Phase.AWAIT_CHALLENGE:
                event = self._read_challenge()
            elif self.phase is Phase.AWAIT_PROOF:
                event = self._read_proof()
            elif self.phase is Phase.AWAIT_HELLO:
                event = self._read_hello()
            elif self.phase is Phase.AWAIT_ANSWER:
                event = self._read_answer()
            else:
                return None
            if event is _Step.ADVANCED:
                continue
            if isinstance(event, PeerHello):
                self.phase = Phase.MUST_ANSWER
            elif event is not None:
                self.phase = Phase.DONE
            return event

    def _fail(self, reason: RefuseReason, detail: str) -> PeerFailed:
        self._outgoing += encode(Refuse(reason, self._disclosed_epoch, detail))
        return PeerFailed(reason, detail, ours=True)

    def _next_frame(self) -> Frame | PeerFailed | None:
        """The peer's next frame; a malformed one fails the exchange (refused BAD_VERSION or PROTOCOL_ERROR)."""
        try:
            return self.decoder.next_frame()
        except UnsupportedVersion as exc:
            return self._fail(RefuseReason.BAD_VERSION, str(exc))
        except RemoteProtocolError as exc:
            return self._fail(RefuseReason.PROTOCOL_ERROR, str(exc))

    def _unexpected(self, frame: Frame | None, expected: str) -> HandshakeEvent | None:
        """The peer's frame where ``expected`` was due: its refusal or goodbye, the end of the stream, or garbage."""
        match frame:
            case None:
                return PeerFailed(None, f"peer closed before its {expected}") if self.decoder.at_eof else None
            case Refuse(reason=reason, detail=detail):
                return PeerFailed(reason, f"peer refused us: {detail}")
            case Goodbye(reason=reason):
                return PeerFailed(None, f"peer is leaving: {reason}")
            case Challenge() if self._auth is None:
                return self._fail(RefuseReason.AUTH_FAILED, "peer authenticates with a cluster secret; we have none")
            case Hello() if self._auth is not None and expected != "hello":
                return self._fail(RefuseReason.AUTH_FAILED, "peer sent a hello without proving a key")
        return self._fail(RefuseReason.PROTOCOL_ERROR, f"expected a {expected}, got {type(frame).__name__}")

    def _read_challenge(self) -> HandshakeEvent | _Step | None:
        assert self._auth is not None
        frame = self._next_frame()
        if not isinstance(frame, Challenge):
            return frame if isinstance(frame, PeerFailed) else self._unexpected(frame, "challenge")
        proof = self._auth.take_challenge(frame)
        if proof is None:
            return self._fail(RefuseReason.AUTH_FAILED, "peer's challenge does not fit ours")
        self._outgoing += encode(proof)
        self.phase = Phase.AWAIT_PROOF
        return _Step.ADVANCED

    def _read_proof(self) -> HandshakeEvent | _Step | None:
        assert self._auth is not None
        frame = self._next_frame()
        if not isinstance(frame, Proof):
            return frame if isinstance(frame, PeerFailed) else self._unexpected(frame, "proof")
        if not self._auth.check_proof(frame):
            return self._fail(RefuseReason.AUTH_FAILED, "peer's proof verifies under none of our keys")
        hello = encode(self._hello)
        self._outgoing += hello + encode(self._auth.seal_hello(hello))
        self.phase = Phase.AWAIT_HELLO
        return _Step.ADVANCED

    def _read_hello(self) -> HandshakeEvent | _Step | None:
        frame = self._next_frame()
        if isinstance(frame, PeerFailed):
            return frame
        if self._auth is None:
            return PeerHello(frame) if isinstance(frame, Hello) else self._unexpected(frame, "hello")
        if self._unsealed_hello is None:
            if not isinstance(frame, Hello):
                return self._unexpected(frame, "hello")
            self._unsealed_hello = frame
            return _Step.ADVANCED
        if not isinstance(frame, Seal):
            return self._unexpected(frame, "seal")
        hello, self._unsealed_hello = self._unsealed_hello, None
        if not self._auth.check_hello(encode(hello), frame):
            return self._fail(RefuseReason.AUTH_FAILED, "peer's hello is not sealed by its key")
        return PeerHello(hello)

    def _read_answer(self) -> PeerAnswer | _Step | None:
        try:
            frame = self.decoder.next_frame()
        except RemoteProtocolError:
            return PeerAnswer(None)
        if frame is None:
            return PeerAnswer(None) if self.decoder.at_eof else None
        if self._auth is None:
            return PeerAnswer(frame if isinstance(frame, Accept | Refuse | Goodbye) else None)
        if self._unsealed_answer is None:
            if not isinstance(frame, Accept | Refuse | Goodbye):
                return PeerAnswer(None)
            self._unsealed_answer = frame
            return _Step.ADVANCED
        answer, self._unsealed_answer = self._unsealed_answer, None
        sealed = isinstance(frame, Seal) and self._auth.check_answer(encode(answer), frame)
        return PeerAnswer(answer if sealed else None)


class _Step(enum.Enum):
    """What a step of the machine that took a frame without an event returns: read on."""

    ADVANCED = "advanced"
