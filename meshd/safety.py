"""The design's safety properties (docs/design.md §4) over status snapshots: one checker for the simulation, which
feeds it every live daemon's status after every step, and for chaos, which polls real daemons' admin websockets.

Each violation names the property, when it was seen (on the observer's clock) and the processes. The checker never
drives anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attrs import define, field, frozen

from meshd.core.status import Fenced, MeshState, PeerState, Status
from meshd.core.wire import Epoch
from meshd.errors import ExitCode

# How long a ready process may not yet know that a link of its mesh went down at a member, once the network is
# timely (seconds on the observer's clock): the member's partial view takes one message delay.
READY_LAG = 0.01
# Violations kept (the first ones tell the story; a broken protocol can produce thousands).
KEEP = 20


@frozen
class Observation:
    """One live process as an observer sees it: its status, when it started and when its links went down, both on
    the observer's clock (daemons' wall clocks may disagree with it and with each other)."""

    status: Status
    born: float
    down_since: Mapping[int, float] = field(factory=dict)  # peer -> when the link to it went down here

    @property
    def view(self) -> tuple[int, ...]:
        """The incarnation it links in every slot (its own in its own slot, 0 while down)."""
        status = self.status
        linked = {peer.index: peer.incarnation or 0 for peer in status.peers if peer.state is PeerState.UP}
        return tuple(status.incarnation if slot == status.index else linked.get(slot, 0) for slot in range(status.size))


@frozen
class Violation:
    kind: str
    detail: str
    at: float

    def __str__(self) -> str:
        return f"t={self.at:.6f} {self.kind}: {self.detail}"


@define
class SafetyChecker:
    """S1, S3, S5 and R4's promise always. Self-minted generations: D always, S2 and S4 only while no slot had two
    live incarnations at once (A5): with ``duplicates`` (a zombie, a twin) two disjoint meshes of one generation are
    possible, and no protocol without a quorum can exclude them. Fixed epochs have no membership: D and S2 hold by the
    controller's contract A4 (one start per slot per epoch), and are checked while it is kept (``contract``)."""

    duplicates: bool = False
    contract: bool = True  # fixed epochs: the controller kept A4 (a slot started at most once per epoch)
    timely_from: float = float("inf")  # from then on the network is timely (A2): R4 is checked
    violations: list[Violation] = field(factory=list)
    first_ready: dict[Epoch, float] = field(factory=dict)  # when some process was first ready in each generation
    newest: Epoch | None = None  # the newest epoch any process has held
    _seen: set[tuple[str, str]] = field(factory=set)

    def violate(self, kind: str, detail: str, at: float) -> None:
        if (kind, detail) not in self._seen and len(self.violations) < KEEP:
            self._seen.add((kind, detail))
            self.violations.append(Violation(kind, detail, at))

    def observe(self, now: float, observations: Sequence[Observation]) -> None:
        """Check the processes alive at ``now``."""
        for observation in observations:
            epoch = observation.status.epoch
            if epoch is not None and (self.newest is None or epoch > self.newest):
                self.newest = epoch
        self._links_share_epochs(now, observations)
        ready = [o for o in observations if o.status.state is MeshState.READY]
        self._ready_views(now, ready)
        if not self.duplicates:
            self._no_rejoin(now, ready)
        self._ready_means_every_link_is_up(now, ready, observations)

    def _links_share_epochs(self, now: float, observations: Sequence[Observation]) -> None:
        """S1 and S3: an up link joins two processes of one epoch, and a ready process has every link up."""
        by_incarnation = {o.status.incarnation: o.status for o in observations}
        for observation in observations:
            status = observation.status
            for peer in status.peers:
                if peer.state is not PeerState.UP:
                    if status.state is MeshState.READY:
                        self.violate("S3", f"{_who(status)} is ready with its link to slot {peer.index} down", now)
                    continue
                other = by_incarnation.get(peer.incarnation or 0)
                mutual = other is not None and any(
                    row.index == status.index and row.state is PeerState.UP and row.incarnation == status.incarnation
                    for row in other.peers
                )
                if peer.epoch != status.epoch or (mutual and other is not None and other.epoch != status.epoch):
                    seen = other.epoch if other is not None else peer.epoch
                    self.violate("S1", f"{_who(status)} has an up link to slot {peer.index} at epoch {seen}", now)

    def _ready_views(self, now: float, ready: Sequence[Observation]) -> None:
        """D: two views ready in one generation are equal or share no process; S2 (under A5): they are equal."""
        by_epoch: dict[Epoch | None, list[Observation]] = {}
        for observation in ready:
            for other in by_epoch.setdefault(observation.status.epoch, []):
                mine, theirs = observation.view, other.view
                if mine == theirs:
                    continue
                shared = any(a == b for a, b in zip(mine, theirs, strict=True))
                if observation.status.mode != "auto" and not self.contract:
                    continue  # fixed epochs with A4 broken on purpose: nothing is claimed
                if shared or not self.duplicates:
                    detail = (
                        f"{_who(other.status)} and {_who(observation.status)} are ready in {observation.status.epoch} "
                        f"with different views {_short(theirs)} and {_short(mine)}"
                    )
                    self.violate("D" if shared else "S2", detail, now)
            by_epoch[observation.status.epoch].append(observation)

    def _no_rejoin(self, now: float, ready: Sequence[Observation]) -> None:
        """S4 (auto, under A5): a process born after its generation was first ready is never ready in it."""
        for observation in ready:
            status = observation.status
            if status.mode != "auto" or status.epoch is None:
                continue
            first = self.first_ready.setdefault(status.epoch, now)
            if observation.born > first:
                born = f"born {observation.born:.6f}"
                self.violate("S4", f"{_who(status)}, {born}, is ready in {status.epoch}, first ready {first:.6f}", now)

    def _ready_means_every_link_is_up(
        self, now: float, ready: Sequence[Observation], observations: Sequence[Observation]
    ) -> None:
        """R4: once the network is timely, no process stays ready longer than READY_LAG after a member of its mesh
        saw one of its links go down."""
        by_incarnation = {o.status.incarnation: o for o in observations}
        for observation in ready:
            for incarnation in observation.view:
                member = by_incarnation.get(incarnation)
                if member is None or member is observation:
                    continue
                for peer, since in member.down_since.items():
                    if since >= self.timely_from and now > since + READY_LAG:
                        detail = (
                            f"{_who(observation.status)} is ready though {_who(member.status)}'s link to slot {peer} "
                            f"has been down since {since:.6f}"
                        )
                        self.violate("R4", detail, now)

    def exited(self, now: float, status: Status, code: int, fenced: Fenced | None) -> None:
        """S5: an exit 75 needs proof: a newer epoch exists, or the generation lost a member for good."""
        if code != ExitCode.FENCED:
            return
        replaced = fenced is not None and fenced.cause == "member_replaced"
        newer = self.newest is not None and status.epoch is not None and self.newest > status.epoch
        if not (newer or replaced):
            self.violate("S5", f"{_who(status)} exited 75 in {status.epoch} with no newer epoch anywhere", now)


def _who(status: Status) -> str:
    return f"slot {status.index} ({status.incarnation:016x})"


def _short(view: Sequence[int]) -> str:
    return "[" + " ".join(f"{incarnation & 0xFFFF:04x}" for incarnation in view) + "]"
