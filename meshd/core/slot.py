"""Which connection is a peer's link: one per pair, chosen alike at both ends. Pure logic, no I/O.

Both ends dial whenever their link is down, so two established connections of one pair can exist at once; both
ends apply the same rule (``replaces``) and keep the same one. Connections are opaque tokens here: the I/O shell
passes its own session objects and is told which to install, which to fail, which to let linger.
"""

from __future__ import annotations

from collections.abc import Hashable

from attrs import define, field, frozen

from meshd.core.wire import Epoch, Goodbye, Refuse, RefuseReason

# How many replaced incarnations of a peer are remembered (a slot restarting more often than this between two
# of its stale processes waking up is far outside any real deployment).
RETIRED_MEMORY = 64


@frozen
class LinkOrigin:
    """Where an established connection came from: who dialed it and which incarnation of the peer is behind it."""

    dialer: int
    peer_incarnation: int


def replaces(me: int, peer: int, current: LinkOrigin, candidate: LinkOrigin) -> bool:
    """Whether a newly established connection to ``peer`` should replace the current link.

    - a new incarnation of the peer always wins (the old one is dead or doomed);
    - from the same incarnation and the same dialer, the newer connection wins (the dialer gave up on the old one);
    - from the same incarnation but opposite dialers, the connection dialed by the lower index wins.
    """
    if candidate.peer_incarnation != current.peer_incarnation or candidate.dialer == current.dialer:
        return True
    return candidate.dialer == min(me, peer)


@frozen
class SlotDecision:
    """What to do with an established connection offered as a peer's link."""

    install: bool  # the candidate is the link now
    part: Refuse | Goodbye | None = None  # not installed: close it with this frame (None: let it linger)
    fail: Hashable | None = None  # the previous link, to be ended ("replaced by a newer connection")
    linger: Hashable | None = None  # a tie-break loser kept open for one handshake timeout, not as the link


@define
class Slot:
    """The link choice for one peer: the current link and the incarnations it replaced."""

    me: int
    peer: int
    current: Hashable | None = None
    origin: LinkOrigin | None = None
    incarnation: int | None = None  # the peer incarnation that last held the link
    retired: dict[int, None] = field(factory=dict)  # insertion-ordered set of replaced incarnations, oldest first
    closing: bool = False

    def copy(self) -> Slot:
        return Slot(self.me, self.peer, self.current, self.origin, self.incarnation, dict(self.retired), self.closing)

    def offer(self, token: Hashable, origin: LinkOrigin, epoch: Epoch) -> SlotDecision:
        """Make ``token`` the link, or say how to close it (``epoch``: ours, for a refusal).

        It loses while this daemon stops, or when it comes from an incarnation that a newer process in the peer's
        slot already replaced (a paused or zombie process must not win its slot back). Two connections of one
        incarnation dialed from both ends are settled by the tie-break; the loser lingers, heartbeats flowing, for
        one handshake timeout, because the peer may not have established the winner yet and must not see a drop.
        """
        if self.closing:
            return SlotDecision(False, Goodbye("shutting down"))
        if origin.peer_incarnation in self.retired:
            detail = f"incarnation {origin.peer_incarnation:016x} was replaced by a newer process"
            return SlotDecision(False, Refuse(RefuseReason.RETIRED, epoch, detail))
        fail = linger = None
        if self.current is not None:
            assert self.origin is not None
            crossed = self.origin.peer_incarnation == origin.peer_incarnation and self.origin.dialer != origin.dialer
            wins = replaces(self.me, self.peer, self.origin, origin)
            if crossed and not wins:
                return SlotDecision(False, None, linger=token)
            if crossed:
                linger = self.current
            else:  # a new incarnation, or the same dialer trying again: the old connection is finished
                fail = self.current
        if self.incarnation not in (None, origin.peer_incarnation):
            self.retired[self.incarnation] = None
            if len(self.retired) > RETIRED_MEMORY:
                del self.retired[next(iter(self.retired))]
        self.incarnation = origin.peer_incarnation
        self.current, self.origin = token, origin
        return SlotDecision(True, fail=fail, linger=linger)

    def release(self, token: Hashable) -> bool:
        """The connection ``token`` no longer serves (it failed, or its generation ended); whether it was the link.

        Retirement holds only while the replacement holds the link: which incarnation reached us last says nothing
        about which is newer (a zombie can arrive after its replacement), so once the link is gone any incarnation
        may take it again and the tie-break decides afresh.
        """
        if token is None or token != self.current:
            return False
        self.current = self.origin = None
        self.retired.clear()
        return True
