"""The design's safety properties (docs/design.md §4), checked against the live daemons after every step.

The checker reads the daemons' own state (supervisor, links) and the simulated network's connections; it never
drives anything. Each violation is a line of text naming the property, the virtual time and the processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from meshd.core.wire import Epoch, View
from meshd.supervisor import EXIT_FENCED, MeshState

if TYPE_CHECKING:
    from meshd.sim.world import Process

# Exit codes a simulated process may end with: fenced, or its port stayed busy past ``timeouts.bind``.
EXIT_BIND_FAILED = 1


class SafetyChecker:
    def __init__(self, auto: bool) -> None:
        self.auto = auto
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
        if self.auto:
            self._no_rejoin_of_ready_generation(now, ready)

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
        """S2: processes ready in one generation have one view: one incarnation per slot."""
        views: dict[Epoch, tuple[Process, View]] = {}
        for process in ready:
            view = process.view()
            first = views.setdefault(view.epoch, (process, view))
            if first[1] != view:
                self.violate(
                    now,
                    f"S2: pid {first[0].pid} and pid {process.pid} are ready in {view.epoch} with different views "
                    f"{_short(first[1])} and {_short(view)}",
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
        """S5: an exit needs proof of a newer epoch (75) or a busy port (1).

        And none at all from a process started after the last fault, unless the controller started it stale.
        """
        code = process.exit_code
        if code == EXIT_FENCED:
            if self.newest_epoch is None or not self.newest_epoch > process.epoch:
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
