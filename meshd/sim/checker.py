"""The design's safety properties (docs/design.md §4), checked against the live daemons after every step.

The checker reads the daemons' own state (mesh model, links) and the simulated network's connections; it never
drives anything. Each violation is a line of text naming the property, the virtual time and the processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from meshd.core.status import MeshState
from meshd.core.wire import Epoch, View
from meshd.errors import ExitCode

if TYPE_CHECKING:
    from meshd.sim.world import Process

# Exit codes a simulated process may end with: fenced, or its port stayed busy past ``timeouts.bind``.
EXIT_BIND_FAILED = 1


# How long a ready process may not yet know that a link of its mesh went down at a member, once the network is timely
# (virtual seconds): the member's partial VIEW takes one latency (at most 2 ms here) and one delivery tick.
READY_LAG = 0.01


class SafetyChecker:
    """S1, D and R3's promise always; S2 and S4 only while no slot had two live incarnations at once (A5): a run with
    a zombie (``duplicates``) can hold two disjoint meshes of one generation, which no protocol without a quorum
    can exclude."""

    def __init__(self, auto: bool, *, duplicates: bool = False) -> None:
        self.auto = auto
        self.duplicates = duplicates
        self.timely_from = float("inf")  # set at the last fault: from then on the network is timely (A2)
        self.violations: list[str] = []
        self.first_ready: dict[Epoch, float] = {}  # when some process was first ready in each generation
        self.newest_epoch: Epoch | None = None  # the newest epoch any process has held

    def violate(self, now: float, text: str) -> None:
        if len(self.violations) < 20:  # the first ones tell the story; a broken variant can produce thousands
            self.violations.append(f"t={now:.6f} {text}")

    def check(self, now: float, processes: Iterable[Process]) -> None:
        live = [process for process in processes if process.alive]
        for process in live:
            epoch = process.epoch
            if self.newest_epoch is None or epoch > self.newest_epoch:
                self.newest_epoch = epoch
        self._links_share_epochs(now, live)
        ready = [process for process in live if process.state is MeshState.READY]
        self._ready_views_agree(now, ready)
        if self.auto and not self.duplicates:
            self._no_rejoin_of_ready_generation(now, ready)
        self._ready_means_every_link_is_up(now, ready, live)

    def _links_share_epochs(self, now: float, live: Sequence[Process]) -> None:
        """S1 (and S3): both ends of an up link hold the same epoch."""
        holders: dict[int, Process] = {}  # id of a stream serving as a link -> the process holding it
        for process in live:
            epoch = process.epoch
            for peer, stream in process.link_streams():
                holders[id(stream)] = process
                connection = stream.connection
                partner = connection.dialer if stream is connection.listener else connection.listener
                other = holders.get(id(partner))
                if other is not None and other.epoch != epoch:
                    self.violate(
                        now,
                        f"S1: link up between pid {process.pid} (slot {process.slot}, epoch {epoch}) "
                        f"and pid {other.pid} (slot {peer}, epoch {other.epoch})",
                    )

    def _ready_views_agree(self, now: float, ready: Sequence[Process]) -> None:
        """D: two views ready in one generation are equal or share no process; S2 (under A5): they are equal."""
        views: dict[Epoch, list[tuple[Process, View]]] = {}
        for process in ready:
            view = process.view()
            for other, seen in views.setdefault(view.epoch, []):
                if seen == view:
                    continue
                shared = any(a == b for a, b in zip(seen.incarnations, view.incarnations, strict=True))
                if shared or not self.duplicates:
                    rule = "D" if shared else "S2"
                    self.violate(
                        now,
                        f"{rule}: pid {other.pid} and pid {process.pid} are ready in {view.epoch} with different "
                        f"views {_short(seen)} and {_short(view)}",
                    )
            views[view.epoch].append((process, view))

    def _ready_means_every_link_is_up(self, now: float, ready: Sequence[Process], live: Sequence[Process]) -> None:
        """R3: once the network is timely, no process stays ready longer than READY_LAG after a member of its mesh
        saw one of its links go down."""
        by_incarnation = {process.daemon.me.incarnation: process for process in live}
        for process in ready:
            for incarnation in process.view().incarnations:
                member = by_incarnation.get(incarnation)
                if member is None or member is process:
                    continue
                for peer, since in member.down_since.items():
                    if since >= self.timely_from and now > since + READY_LAG:
                        self.violate(
                            now,
                            f"R3: pid {process.pid} is ready though pid {member.pid}'s link to slot {peer} has been "
                            f"down since {since:.6f}",
                        )

    def _no_rejoin_of_ready_generation(self, now: float, ready: Sequence[Process]) -> None:
        """S4: a process born after its generation was first ready is never ready in it."""
        for process in ready:
            first = self.first_ready.setdefault(process.epoch, now)
            if process.born > first:
                self.violate(
                    now,
                    f"S4: pid {process.pid} (slot {process.slot}, born {process.born:.6f}) is ready in "
                    f"{process.epoch}, which was first ready at {first:.6f}",
                )

    def process_exited(self, now: float, process: Process, last_fault: float) -> None:
        """S5: an exit needs proof (75: a newer epoch exists, or the generation lost a member for good) or a busy
        port (1).

        And none at all from a process started after the last fault, unless the controller started it stale.
        """
        code = process.exit_code
        if code == ExitCode.FENCED:
            replaced = process.fenced is not None and process.fenced.cause == "member_replaced"
            newer = self.newest_epoch is not None and self.newest_epoch > process.epoch
            if not (newer or replaced):
                self.violate(now, f"S5: pid {process.pid} exited 75 in {process.epoch} with no newer epoch anywhere")
        elif code == EXIT_BIND_FAILED:
            if not process.attachment.refused_binds:
                self.violate(now, f"pid {process.pid} exited 1 but the network never refused it the port")
        else:
            self.violate(now, f"pid {process.pid} exited with {code}")
        if process.born > last_fault and not process.stale:
            self.violate(now, f"exits: pid {process.pid}, started after the last fault, exited with {code}")


def _short(view: View) -> str:
    return "[" + " ".join(f"{incarnation & 0xFFFF:04x}" for incarnation in view.incarnations) + "]"
