"""Child processes that die with their parent: the worker under its daemon, the daemons under ``meshd cluster``.

``PR_SET_PDEATHSIG`` makes the kernel kill the child when the *thread* that forked it ends, so children are started
from a thread that lives as long as their parent does (the main thread, or a dedicated one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
from typing import Any

# prctl(2) option: the signal the kernel sends this process when its parent thread dies.
PR_SET_PDEATHSIG = 1


@functools.cache
def libc_prctl() -> Any:
    """libc's prctl, loaded before any fork (loading a library in a forked child of a threaded process may hang)."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl


def die_with_parent(parent: int | None = None) -> None:
    """In the child, before exec: be killed when the process that started us dies, however it dies.

    ``parent`` is the starter's pid, taken before the fork: should it have died before the prctl took effect, the
    signal would never come, so the child ends itself at once."""
    libc_prctl()(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
