"""Fences without a process exit (``--on-fence restart``, ``daemon.on_fence``): the settings a fenced daemon runs
next, in the same process (same PID, the same command line), as its orchestrator would have restarted it.

It is the controller's rule R6 applied by the process itself (docs/design.md, rule R6 prime): with fixed epochs the next
daemon runs the newer epoch that fenced this one, which its controller issued; with ``auto`` and ``await`` the same
settings (a fresh daemon mints, or awaits, its epoch). Every restart is a new ``Daemon``: a new incarnation, a new
model, new sockets; nothing of the old one is kept. A fixed-epoch fence that named no newer epoch cannot be
restarted in place: the process exits 75 as usual.
"""

from __future__ import annotations

from attrs import evolve

from meshd.core.generation import EpochMode
from meshd.core.wire import Epoch
from meshd.daemon import Settings


def next_settings(settings: Settings, fenced_by: Epoch | None) -> Settings | None:
    """What a daemon fenced by ``fenced_by`` runs next in place; None when it must exit 75 instead."""
    if settings.mode is not EpochMode.FIXED:
        return evolve(settings, restarts=settings.restarts + 1)
    if fenced_by is None or fenced_by.minor != 0:
        return None
    return evolve(settings, epoch=Epoch(fenced_by.major), restarts=settings.restarts + 1)
