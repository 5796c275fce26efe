"""Who may speak to a daemon: the cluster's keys for every handshake, the bound on strangers in their handshake, and
the counters and throttled log lines that strangers leave behind (status ``auth_failures``, ``handshakes_shed``,
``admin_rejected``).

One object per daemon; the mesh links, the data plane, the accept loop and the admin server all ask it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from meshd.core.address import Address
from meshd.core.auth import Authenticator
from meshd.core.status import LinkEnd
from meshd.core.wire import NONCE_SIZE
from meshd.logs import Throttle
from meshd.secret import SecretFile

if TYPE_CHECKING:
    from loguru import Logger

# At most one log line per this many seconds about inbound connections refused, and as many about connections that
# failed to authenticate: a flood of strangers stays quiet.
LOG_INTERVAL = 1.0


class Gate:
    def __init__(
        self, secret: SecretFile | None, pending_limit: int, peers: list[Address], log: Callable[[], Logger]
    ) -> None:
        self.secret = secret
        self._pending_limit = pending_limit  # limits.pending_handshakes
        self._pending = 0  # inbound connections not through their handshake yet
        self._peers = peers
        self._log = log
        self.counters = {"auth_failures": 0, "handshakes_shed": 0, "admin_rejected": 0}  # status fields
        self.admin_clients = 0  # admin websocket clients connected now (the admin server counts them)
        self._auth_log = Throttle(LOG_INTERVAL)
        self._inbound_log = Throttle(LOG_INTERVAL)

    def authenticator(self, *, dialer: bool, data: bool) -> Authenticator | None:
        """A fresh authenticator for one connection, under the secret file's keys as they are now."""
        if self.secret is None:
            return None
        return Authenticator(self.secret.keyring(), dialer=dialer, data=data, nonce=secrets.token_bytes(NONCE_SIZE))

    def reload(self) -> None:
        """SIGHUP: read the secret file again now (handshakes also notice a changed file by themselves)."""
        if self.secret is not None:
            self.secret.reload()

    def warn_if_insecure(self) -> None:
        if self.secret is None and not all(address.loopback for address in self._peers):
            self._log().warning(
                "no cluster secret (cluster.insecure): anyone who reaches a mesh port can fence or join this cluster"
            )

    def admit(self) -> bool:
        """Whether a new inbound connection may begin its handshake; beyond the bound it is shed (counted), and the
        caller closes it unheard. An admitted one calls ``done`` when its handshake ends."""
        if self._pending >= self._pending_limit:
            self.counters["handshakes_shed"] += 1
            return False
        self._pending += 1
        return True

    def done(self) -> None:
        self._pending -= 1

    def auth_failed(self, remote: str, detail: str) -> None:
        """A connection whose peer proved no key of ours: counted, and logged with its address (throttled)."""
        self.counters["auth_failures"] += 1
        held = self._auth_log.allow(trio.current_time())
        if held is not None:
            also = f" ({held} more since the last such line)" if held else ""
            self._log().warning("connection with {} refused (auth_failed): {}{}", remote, detail, also)

    def inbound_refused(self, end: LinkEnd | str, remote: str | None = None) -> None:
        """An inbound connection that made no link: logged with its address, throttled (strangers come in floods)."""
        held = self._inbound_log.allow(trio.current_time())
        if held is not None:
            who = "" if remote is None else f" from {remote}"
            also = f" ({held} more since the last such line)" if held else ""
            self._log().warning("inbound connection{} closed: {}{}", who, end, also)

    def admin_rejected(self) -> None:
        self.counters["admin_rejected"] += 1
