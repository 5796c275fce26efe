"""Fences without a process exit (``--on-fence restart``, ``daemon.on_fence``): the command line a fenced daemon
re-executes in place (same PID), as its orchestrator would have restarted it.

It is the controller's rule R6 applied by the process itself (docs/design.md, "Fences without a container restart"):
with fixed epochs the restart runs the newer epoch that fenced it, which its controller issued; with ``auto`` and
``await`` the same command line (a fresh incarnation mints, or awaits, its epoch). A fixed-epoch fence that named no
newer epoch cannot be restarted in place: the process exits 75 as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.core.generation import EpochMode
from meshd.core.wire import Epoch

# The environment variable that counts a process's in-place restarts (its PID stays, its incarnation is new).
RESTARTS_VARIABLE = "MESHD_RESTARTS"


def restart_argv(argv: Sequence[str], mode: EpochMode, fenced_by: Epoch | None) -> list[str] | None:
    """The arguments of ``meshd run`` (``argv``, the program's own excluded) to re-execute after a fence; None when
    the process must exit 75 instead. With fixed epochs ``--epoch`` becomes the newer epoch (placed before
    ``--exec``, whose command takes the rest of the line)."""
    if mode is not EpochMode.FIXED:
        return list(argv)
    if fenced_by is None or fenced_by.minor != 0:
        return None
    kept: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--exec":
            kept += ["--epoch", str(fenced_by.major), word, *words]
            return kept
        if word == "--epoch":
            next(words, None)
        elif not word.startswith("--epoch="):
            kept.append(word)
    return [*kept, "--epoch", str(fenced_by.major)]
