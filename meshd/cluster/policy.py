"""The controller's epoch rule (docs/design.md R6) and what "the cluster converged" means, once each."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define

from meshd.core.generation import EpochMode
from meshd.core.status import MeshState, PeerState, Status
from meshd.core.wire import Epoch
from meshd.errors import ExitCode


@define
class EpochController:
    """R6 with fixed epochs: a daemon that exits 75 only learned that it was stale and is restarted with the current
    epoch; a daemon that dies any other way gets an epoch above every epoch given before, so that its replacement
    fences the survivors. In auto mode every daemon is simply restarted with ``--epoch auto``."""

    mode: EpochMode = EpochMode.FIXED
    current: int = 1
    bumps: int = 0  # how many times a death raised the epoch

    def epoch(self) -> int | str:
        """What the next start gets on its command line."""
        return "auto" if self.mode is EpochMode.AUTO else self.current

    def exited(self, started_with: int | str, code: int) -> bool:
        """Account for an exit of a daemon started with ``started_with``; True when it was a death (not a fence)."""
        if code == ExitCode.FENCED:
            return False
        if self.mode is not EpochMode.AUTO:
            self.current = max(self.current, int(started_with)) + 1
            self.bumps += 1
        return True


def convergence_problems(
    statuses: Sequence[Status | None],
    *,
    incarnations: Sequence[int | None] | None = None,
    epoch: Epoch | int | None = None,
) -> list[str]:
    """Why these statuses (one per slot, by index) are not every slot ready in one epoch, each linked to the
    incarnation the other slots actually run; empty when they are. ``incarnations`` are the processes the
    controller believes run (None: whatever answers); ``epoch`` the one they must be in (None: any; an integer is
    a controller's epoch)."""
    if isinstance(epoch, int):
        epoch = Epoch(epoch)
    problems = []
    answered = {status.index: status for status in statuses if status is not None}
    epochs = {status.epoch for status in answered.values()}
    if len(epochs) > 1:
        problems.append(f"epochs {sorted(map(str, epochs))}")
    if epoch is not None and epochs and epochs != {epoch}:
        problems.append(f"not in epoch {epoch}")
    for index, status in enumerate(statuses):
        if status is None:
            problems.append(f"slot {index} does not answer")
            continue
        if status.index != index:
            problems.append(f"slot {index}'s admin port answers as index {status.index}")
        if incarnations is not None and incarnations[index] not in (None, status.incarnation):
            problems.append(f"slot {index} answers as incarnation {status.incarnation:016x}, not the one started")
        if status.state is not MeshState.READY:
            problems.append(f"slot {index} is {status.state}")
        if status.mode == EpochMode.AUTO and not status.sealed:
            problems.append(f"slot {index} is not sealed")
        for peer in status.peers:
            other = answered.get(peer.index)
            if peer.state is not PeerState.UP or peer.epoch != status.epoch:
                problems.append(f"slot {index} sees peer {peer.index} {peer.state} at epoch {peer.epoch}")
            elif other is not None and peer.incarnation != other.incarnation:
                problems.append(f"slot {index} links to incarnation {peer.incarnation:016x} of slot {peer.index}")
    return problems
