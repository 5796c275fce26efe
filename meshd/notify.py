"""systemd's service notification protocol (``Type=notify``), without a library: one datagram per message to the
Unix socket named by ``$NOTIFY_SOCKET``.

The protocol is documented as stable (sd_notify(3)): a message is newline-separated ``KEY=VALUE`` lines sent as one
datagram; ``NOTIFY_SOCKET`` is a path, or ``@name`` for the abstract namespace. The daemon says

- ``READY=1`` once its mesh port listens (the unit is "started"; the mesh forms afterwards: a unit that waited for a
  ready mesh would hold ``systemctl start`` until every peer is up);
- ``STATUS=...`` with its mesh state on every change (``systemctl status`` shows the line);
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while its event loop runs (with ``WatchdogSec=``), unless
  ``$WATCHDOG_PID`` names another process;
- ``STOPPING=1`` when an orderly stop begins.

Nothing here ever raises into the daemon: a socket that is gone or full loses the message, and the first failure is
logged once, at debug. The variables stay in this process's environment (an in-place restart, ``--on-fence
restart``, must still find them) and are taken out of its children's (``child_environ``), as sd_notify's
``unset_environment`` would.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import trio
from loguru import logger

from meshd.core.status import MeshState
from meshd.core.wire import Epoch

# What systemd sets for the main process only; a child (the worker) must not talk to systemd in our name.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the notification variables: what a child process inherits."""
    return {key: value for key, value in environ.items() if key not in NOTIFY_VARIABLES}


def socket_address(value: str) -> str:
    """The address ``NOTIFY_SOCKET`` names: a path, or (``@name``) the abstract socket ``"\\0name"``."""
    return "\0" + value[1:] if value.startswith("@") else value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, or None (no watchdog, a malformed value, or
    ``WATCHDOG_PID`` naming another process)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    return int(usec) / 2 / 1_000_000


def status_line(state: MeshState, epoch: Epoch | None, up: int, links: int) -> str:
    """The ``STATUS=`` text: e.g. ``mesh ready, epoch 5, 3/3 links up``."""
    if state is MeshState.AWAITING or epoch is None:
        return f"mesh {state}: no epoch yet, waiting for a controller's start op"
    return f"mesh {state}, epoch {epoch}, {up}/{links} links up"


class Notifier:
    """The daemon's channel to systemd; make it with ``from_environ`` (None when systemd did not ask)."""

    def __init__(self, address: str, watchdog: float | None = None) -> None:
        self.address = address  # as socket.sendto takes it: a path or "\0name"
        self.watchdog_interval = watchdog  # seconds between WATCHDOG=1 pings, or None
        self._socket: socket.socket | None = None
        self._failed = False  # a failure was logged (once)
        self._last_status: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier | None:
        """A notifier when ``NOTIFY_SOCKET`` is set (``pid``: ours, for ``WATCHDOG_PID``), else None."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value or (value.startswith("@") and len(value) < 2):
            return None
        return cls(socket_address(value), watchdog_interval(environ, os.getpid() if pid is None else pid))

    def send(self, message: str) -> bool:
        """Send one message (``KEY=VALUE`` lines); False when it could not be sent (logged once, at debug)."""
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec, as every fd here
                self._socket.setblocking(False)  # a full socket loses the message; the event loop never waits
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.debug("cannot notify systemd at {!r}: {} (further failures are not logged)", self.address, exc)
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=text`` (one line), sent only when it differs from the last one sent."""
        line = " ".join(text.splitlines())
        if line == self._last_status:
            return True
        sent = self.send(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """``WATCHDOG=1`` every ``watchdog_interval`` for as long as the event loop runs (returns at once without a
        watchdog): a loop that stops running, or a stopped process, stops the pings and systemd acts."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
