"""The hello exchange and the rules that decide which connection becomes a peer's link. Pure logic, no I/O.

Both ends of every connection run the same machine: send our hello at once, read theirs, judge it.
Because the rules are symmetric (same cluster, the right indices, equal epochs), both ends reach the same
verdict from the two hellos, so neither side is left believing in a link the other refused.

Verdicts, in the order they are checked:

1. unknown protocol version, another cluster, an index that does not fit, the other epoch mode: refuse, close,
   retry with back-off;
2. the peer's epoch is older: refuse with STALE_EPOCH (the peer learns it is stale), close, retry later;
3. the peer's epoch is newer: fence, this process belongs to a finished generation and exits; except that with
   self-minted generations a process that has never been ready in its generation adopts the newer one instead
   (it has no state to lose);
4. with self-minted generations, a generation's membership is write-once: once this process has linked one
   incarnation of a slot in its generation, any other incarnation of that slot is refused with SEALED and must
   mint a newer generation (so a restarted process never joins a generation that already had its slot);
5. otherwise: the link is up.
"""

from __future__ import annotations

import enum

from attrs import frozen

from meshd.core.wire import (
    NO_TARGET,
    PROTOCOL_VERSION,
    Epoch,
    FrameDecoder,
    Hello,
    Refuse,
    RefuseReason,
    UnsupportedVersion,
    encode,
)
from meshd.errors import RemoteProtocolError


@frozen
class Identity:
    """What this process is: everything it says in its hello and checks against the peer's."""

    cluster: str
    index: int
    size: int
    epoch: Epoch
    incarnation: int
    auto: bool = False  # self-minted generations (``--epoch auto``)
    # Auto only: the incarnation this process linked in each slot of its generation (0: none yet), write-once.
    members: tuple[int, ...] | None = None
    sealed: bool = False  # auto only: this process was ready in its generation, so it fences rather than adopts

    def admits(self, slot: int, incarnation: int) -> bool:
        """Whether this generation may link ``incarnation`` in ``slot`` (always, with fixed epochs)."""
        return self.members is None or self.members[slot] in (0, incarnation)

    def hello(self, target: int | None) -> Hello:
        target = NO_TARGET if target is None else target
        return Hello(self.cluster, self.index, target, self.epoch, self.incarnation, self.auto)


class Verdict(enum.Enum):
    ACCEPT = "accept"  # same cluster, right indices, equal epoch: the link is up
    REFUSE = "refuse"  # not a link for us (stale peer, other cluster, wrong index): close and retry later
    FENCE = "fence"  # the peer runs a newer epoch: this process is stale and must exit
    ADOPT = "adopt"  # auto only: the peer runs a newer generation and we were never ready: move to it in place


@frozen
class Judgement:
    verdict: Verdict
    reason: RefuseReason | None = None
    detail: str = ""


def judge(me: Identity, hello: Hello, expected_peer: int | None, holders: tuple[int, ...] | None = None) -> Judgement:
    """The verdict on a peer's hello. ``expected_peer`` is the index we dialed, or None for an accepted connection.

    ``holders`` (auto mode, only while our mesh is ready) are the incarnations we are linked to, slot by slot: a
    newer generation offered by another incarnation of a held slot is a duplicate (a zombie, or a replacement
    started while its predecessor still lives), and it may not break up a ready mesh. Once that link is down, the
    same hello fences us as usual.
    """
    if hello.version != PROTOCOL_VERSION:
        return Judgement(Verdict.REFUSE, RefuseReason.BAD_VERSION, f"peer speaks protocol version {hello.version}")
    if hello.cluster != me.cluster:
        return Judgement(
            Verdict.REFUSE, RefuseReason.WRONG_CLUSTER, f"hello for cluster {hello.cluster!r}, we are {me.cluster!r}"
        )
    if not 0 <= hello.sender < me.size or hello.sender == me.index:
        return Judgement(Verdict.REFUSE, RefuseReason.WRONG_INDEX, f"sender index {hello.sender} is not a peer of ours")
    if expected_peer is not None and hello.sender != expected_peer:
        return Judgement(
            Verdict.REFUSE, RefuseReason.WRONG_INDEX, f"dialed index {expected_peer} but index {hello.sender} answered"
        )
    if hello.target not in (me.index, NO_TARGET):
        return Judgement(
            Verdict.REFUSE, RefuseReason.WRONG_INDEX, f"peer wants index {hello.target}, we are index {me.index}"
        )
    if hello.auto != me.auto:
        modes = ("fixed epochs", "self-minted generations")
        detail = f"peer uses {modes[hello.auto]}, we use {modes[me.auto]}"
        return Judgement(Verdict.REFUSE, RefuseReason.WRONG_MODE, detail)
    if hello.epoch < me.epoch:
        return Judgement(Verdict.REFUSE, RefuseReason.STALE_EPOCH, f"peer epoch {hello.epoch} is older than ours")
    if hello.epoch > me.epoch:
        held_by = 0 if holders is None else holders[hello.sender]
        if held_by not in (0, hello.incarnation):
            detail = f"slot {hello.sender} is held by incarnation {held_by:016x} in our ready generation {me.epoch}"
            return Judgement(Verdict.REFUSE, RefuseReason.RETIRED, detail)
        if me.auto and not me.sealed:
            return Judgement(Verdict.ADOPT, None, f"peer generation {hello.epoch} is newer than ours ({me.epoch})")
        return Judgement(Verdict.FENCE, None, f"peer epoch {hello.epoch} is newer than ours ({me.epoch})")
    if not me.admits(hello.sender, hello.incarnation):
        detail = f"generation {me.epoch} already has another process in slot {hello.sender}"
        return Judgement(Verdict.REFUSE, RefuseReason.SEALED, detail)
    return Judgement(Verdict.ACCEPT)


@frozen
class Established:
    """The peer's hello was accepted: the connection is this peer's link candidate."""

    hello: Hello


@frozen
class Refused:
    """We refuse the peer; ``Handshake.data_to_send`` holds the REFUSE frame that tells it why."""

    reason: RefuseReason
    detail: str


@frozen
class Rejected:
    """The peer refused us, or closed before saying hello."""

    reason: RefuseReason | None
    detail: str


@frozen
class MustFence:
    """The peer proved a newer epoch exists."""

    peer: int
    epoch: Epoch
    detail: str


@frozen
class MustAdopt:
    """Auto mode, never ready: the peer runs a newer generation, which this process joins in place."""

    peer: int
    epoch: Epoch


HandshakeEvent = Established | Refused | Rejected | MustFence | MustAdopt


class Handshake:
    """One end of the hello exchange: feed bytes in, read the outcome and the bytes to send out.

    After ``Established``, ``decoder`` still holds whatever the peer sent after its hello; the link reads on from it.
    """

    def __init__(self, me: Identity, expected_peer: int | None, holders: tuple[int, ...] | None = None) -> None:
        self.me = me
        self.expected_peer = expected_peer
        self.holders = holders
        self.decoder = FrameDecoder()
        self.outcome: HandshakeEvent | None = None
        self._outgoing = bytearray(encode(me.hello(expected_peer)))

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        self.decoder.receive_data(data)

    def receive_eof(self) -> None:
        self.decoder.receive_eof()

    def next_event(self) -> HandshakeEvent | None:
        """The outcome once the peer's hello (or its refusal, or garbage) is in; None while more bytes are needed."""
        if self.outcome is None:
            self.outcome = self._decide()
        return self.outcome

    def _refuse(self, reason: RefuseReason, detail: str) -> Refused:
        self._outgoing += encode(Refuse(reason, self.me.epoch, detail))
        return Refused(reason, detail)

    def _decide(self) -> HandshakeEvent | None:
        try:
            frame = self.decoder.next_frame()
        except UnsupportedVersion as exc:
            return self._refuse(RefuseReason.BAD_VERSION, str(exc))
        except RemoteProtocolError as exc:
            return self._refuse(RefuseReason.PROTOCOL_ERROR, str(exc))
        match frame:
            case None:
                return Rejected(None, "peer closed before its hello") if self.decoder.at_eof else None
            case Refuse():
                return Rejected(frame.reason, frame.detail)
            case Hello():
                judgement = judge(self.me, frame, self.expected_peer, self.holders)
                if judgement.verdict is Verdict.ACCEPT:
                    return Established(frame)
                if judgement.verdict is Verdict.FENCE:
                    return MustFence(frame.sender, frame.epoch, judgement.detail)
                if judgement.verdict is Verdict.ADOPT:
                    return MustAdopt(frame.sender, frame.epoch)
                assert judgement.reason is not None
                return self._refuse(judgement.reason, judgement.detail)
        return self._refuse(RefuseReason.PROTOCOL_ERROR, f"expected a hello, got {type(frame).__name__}")


@frozen
class LinkOrigin:
    """Where an established connection came from: who dialed it and which incarnation of the peer is behind it."""

    dialer: int
    peer_incarnation: int


def replaces(me: int, peer: int, current: LinkOrigin, candidate: LinkOrigin) -> bool:
    """Whether a newly established connection to ``peer`` should replace the current link.

    Both ends may dial at once; both then apply this same rule and keep the same connection:
    - a new incarnation of the peer always wins (the old one is dead or doomed);
    - from the same incarnation and the same dialer, the newer connection wins (the dialer gave up on the old one);
    - from the same incarnation but opposite dialers, the connection dialed by the lower index wins.
    """
    if candidate.peer_incarnation != current.peer_incarnation or candidate.dialer == current.dialer:
        return True
    return candidate.dialer == min(me, peer)
