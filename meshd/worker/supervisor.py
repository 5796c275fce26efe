"""The daemon's side of the worker (``--exec``): start it once with the generation's data sockets, stop it before
the daemon leaves the generation, and report how it ended. The trio shell; the worker's side is ``meshd.worker``.

The worker is forked from the daemon's main thread (never a worker thread: PR_SET_PDEATHSIG fires when the forking
thread ends) and dies with the daemon however the daemon ends, kill -9 included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import trio

from meshd.children import die_with_parent, libc_prctl
from meshd.core.status import WorkerState, WorkerStatus
from meshd.core.wire import Epoch
from meshd.notify import child_environ
from meshd.worker.contract import Facts


class WorkerProcess:
    """One worker process: at most one per daemon, ever."""

    def __init__(self, command: Sequence[str], stop_grace: float) -> None:
        self.command = list(command)
        self.stop_grace = stop_grace
        self.status = WorkerStatus()
        self._process: subprocess.Popen[bytes] | None = None
        self._exited = trio.Event()
        self._terminated_at: float | None = None  # when SIGTERM was sent (once: stop_grace counts from it)
        libc_prctl()  # loaded now, before any fork

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def present(self) -> bool:
        return True  # it is ours to start

    async def start(self, sockets: Mapping[int, socket.socket], facts: Facts, epoch: Epoch, now: float) -> None:
        """Start the worker with ``sockets`` inherited (then closed here: meshd keeps no copy). Runs in the trio
        thread, the daemon's main thread, on purpose (see the module's docstring); a fork takes a millisecond."""
        assert self._process is None, "one worker per daemon"
        self.status = WorkerStatus(None, WorkerState.STARTING, now, None, epoch)
        environment = {
            **child_environ(os.environ),
            **facts.to_env({peer: sock.fileno() for peer, sock in sockets.items()}),
        }
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                env=environment,
                pass_fds=[sock.fileno() for sock in sockets.values()],
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        finally:
            for sock in sockets.values():
                sock.close()
        self.status = WorkerStatus(self._process.pid, WorkerState.RUNNING, now, None, epoch)

    async def wait(self) -> int | None:
        """Until the worker exits; its exit code (minus the signal number when a signal ended it)."""
        assert self._process is not None
        code = await trio.to_thread.run_sync(self._process.wait, abandon_on_cancel=True)
        self.status = WorkerStatus(self.pid, WorkerState.EXITED, self.status.started, code, self.status.epoch)
        self._exited.set()
        return code

    def terminate(self, reason: str) -> None:
        """Ask the worker to end (SIGTERM): the daemon leaves its generation (``reason``: the daemon's log says it)."""
        if self._process is not None and self._terminated_at is None and not self._exited.is_set():
            self._terminated_at = trio.current_time()
            self.status = WorkerStatus(self.pid, WorkerState.STOPPING, self.status.started, None, self.status.epoch)
            self._signal(signal.SIGTERM)

    async def stop(self, reason: str) -> None:
        """SIGTERM, ``stop_grace`` seconds, then SIGKILL; returns once the worker is reaped."""
        if self._process is None:
            return
        self.terminate(reason)
        with trio.move_on_at((self._terminated_at or trio.current_time()) + self.stop_grace):
            await self._reaped()
        if self._process.returncode is None:
            self._signal(signal.SIGKILL)
            await self._reaped()

    async def _reaped(self) -> None:
        assert self._process is not None
        if self._exited.is_set():
            return
        code = await trio.to_thread.run_sync(self._process.wait, abandon_on_cancel=True)
        self.status = WorkerStatus(self.pid, WorkerState.EXITED, self.status.started, code, self.status.epoch)
        self._exited.set()

    def _signal(self, signum: int) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):  # already gone
            self._process.send_signal(signum)
