"""The design's safety properties (docs/design.md §4), checked on what daemons report through the admin websocket.

Pure functions of status objects (``meshd status --json``), watch events and exit codes, so that a fabricated
snapshot shows the checker able to fail (tests/test_chaos.py). What counts as a violation:
- S1: an up link whose epoch differs from the process's own;
- S3: a ``ready`` process with a link that is down or at another epoch;
- S2: two ``ready`` statuses of one epoch naming different incarnations for a slot. This holds across time, not
  only at one instant: with fixed epochs a slot has one incarnation per epoch (the controller's contract A4), and a
  self-minted generation's membership is write-once (S4), so polled snapshots need not be simultaneous;
- S5: an exit 75 without a ``fenced`` event (or, when the watch could not see it, log line) naming an epoch newer
  than the process's own; an exit code other than 0, 1 or 75 that the chaos runner did not cause;
- a stale-epoch process that links to anyone or becomes ready; a duplicate start that does not exit 1 after
  ``timeouts.bind``;
- the exit bound (§5): a slot that was never killed exits 75 at most once per death in the trial, and no slot
  exits 75 more than once after the last fault.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_FENCED = 0, 1, 75
ALLOWED_EXITS = (EXIT_OK, EXIT_FAILURE, EXIT_FENCED)


def epoch_order(epoch: int | str) -> tuple[int, int]:
    """An epoch as reported (an integer, or a generation "MS.NONCEHEX") as the pair it is ordered by."""
    if isinstance(epoch, int):
        return epoch, 0
    major, _, minor = epoch.partition(".")
    return int(major), int(minor or "0", 16)


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    at: float  # wall clock when it was seen

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fence_is_proven(fence: dict[str, Any]) -> bool:
    """Whether a fenced event (its fields) proves the exit: a newer epoch than the process's own, or a generation
    that can no longer be complete (its member of a slot was replaced by a live process)."""
    if fence.get("cause") == "member_replaced":
        return True
    newer = fence.get("newer")
    return newer is not None and epoch_order(newer) > epoch_order(fence["epoch"])


@dataclass
class SafetyChecker:
    """Accumulates violations over one trial; ``ready_views`` remembers, per epoch, who was ready with which view."""

    violations: list[Violation] = field(default_factory=list)
    ready_views: dict[str, tuple[int, dict[int, str]]] = field(default_factory=dict)
    _reported: set[tuple[str, str]] = field(default_factory=set)

    def flag(self, kind: str, detail: str, at: float) -> None:
        if (kind, detail) not in self._reported:
            self._reported.add((kind, detail))
            self.violations.append(Violation(kind, detail, at))

    def observe(self, status: dict[str, Any], at: float) -> None:
        """Check one daemon's status object (S1, S2, S3)."""
        me, epoch, ready = status["index"], status["epoch"], status["state"] == "ready"
        for peer in status["peers"]:
            if peer["state"] == "up" and peer["epoch"] != epoch:
                link = f"an up link to slot {peer['index']} at epoch {peer['epoch']}"
                self.flag("S1", f"slot {me} at epoch {epoch} has {link}", at)
            elif ready and peer["state"] != "up":
                self.flag("S3", f"slot {me} is ready at epoch {epoch} while its link to {peer['index']} is down", at)
        if not ready:
            return
        view = {me: status["incarnation"]}
        view.update({peer["index"]: peer["incarnation"] for peer in status["peers"] if peer["state"] == "up"})
        key = str(epoch)
        if key not in self.ready_views:
            self.ready_views[key] = (me, view)
            return
        first, seen = self.ready_views[key]
        for slot, incarnation in sorted(view.items()):
            if slot in seen and seen[slot] != incarnation:
                self.flag(
                    "S2",
                    f"ready at epoch {epoch}: slot {me} links incarnation {incarnation} in slot {slot}, "
                    f"slot {first} was ready with {seen[slot]}",
                    at,
                )

    def exited(
        self, slot: int, role: str, code: int, caused_by_runner: bool, fences: Iterable[dict[str, Any]], at: float
    ) -> None:
        """Check one exit (S5): a code the design allows, and a proven fence before every 75."""
        if caused_by_runner:
            return
        if code not in ALLOWED_EXITS:
            self.flag("exit-code", f"slot {slot} ({role}) exited {code}", at)
        if code == EXIT_FENCED and not any(fence_is_proven(fence) for fence in fences):
            self.flag("S5", f"slot {slot} ({role}) exited 75 without a proven fence", at)

    def stale_behaved(self, slot: int, epoch: int, events: Iterable[dict[str, Any]], at: float) -> None:
        """A process started with a stale epoch must never link to anyone nor become ready."""
        for event in events:
            if event["event"] in ("link_up", "ready"):
                self.flag("stale-admitted", f"slot {slot} started with stale epoch {epoch} reported {event}", at)

    def fenced_by_stale(self, fences: Iterable[dict[str, Any]], stale_epochs: set[int], at: float) -> None:
        """No process may exit because of a stale-epoch start: no fence names a stale epoch."""
        for fence in fences:
            newer = fence.get("newer")
            if newer is not None and epoch_order(newer) in {(epoch, 0) for epoch in stale_epochs}:
                self.flag("stale-fenced", f"a process was fenced by a stale epoch: {fence.get('reason')}", at)

    def duplicate_exited(self, slot: int, code: int, lived: float, bind_timeout: float, at: float) -> None:
        """A second process for a live slot must fail to bind: exit 1, and only after ``timeouts.bind``."""
        if code != EXIT_FAILURE or lived < bind_timeout:
            self.flag("duplicate", f"duplicate of slot {slot} exited {code} after {lived:.2f}s", at)

    def exits_after_last_fault(self, fenced_after: dict[int, int], at: float) -> None:
        """§5: once the faults stop, a slot exits 75 at most once (its process sealed, or running an old epoch, at
        t0 fences once; its successor is born into the recovery and never exits)."""
        for slot, count in sorted(fenced_after.items()):
            if count > 1:
                self.flag("exits-after-t0", f"slot {slot} exited 75 {count} times after the last fault", at)

    def exit_bound(self, exits: dict[int, list[int]], survivors: Iterable[int], deaths: int, at: float) -> None:
        """§5 exits per process: a slot never killed exits 75 at most once per death in the trial."""
        for slot in survivors:
            fenced = exits.get(slot, []).count(EXIT_FENCED)
            if fenced > deaths:
                self.flag("exit-bound", f"surviving slot {slot} exited 75 {fenced} times for {deaths} deaths", at)
