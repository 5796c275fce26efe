"""The network as an injectable interface: the only place in the daemon where sockets are opened.

``TcpNetwork`` is the real one; ``meshd.sim.network.SimNetwork`` runs the same daemon code over in-memory streams in
virtual time. Connection errors leave this module as OSError and are converted to LinkFailure by the caller's
single conversion point (``meshd.connection``); bind errors are retried here and become BindError.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import trio

from meshd.core.address import Address
from meshd.errors import BindError
from meshd.listen import open_listening_sockets

# How often a busy port is tried again while the bind period lasts.
BIND_RETRY_INTERVAL = 0.1


class Network(Protocol):
    async def connect(self, address: Address) -> trio.abc.Stream:
        """An open byte stream to ``address``; raises OSError when nobody accepts."""
        ...

    async def listen(self, address: Address) -> Sequence[trio.abc.Listener[trio.abc.Stream]]:
        """Listeners bound to ``address``; raises OSError (EADDRINUSE when the port is busy)."""
        ...


@runtime_checkable
class Queueing(Protocol):
    """A listener that knows how many connections wait in its accept queue (the simulation's)."""

    def queued(self) -> int: ...


# Linux's struct tcp_info: 8 one-byte fields, then tcpi_rto, tcpi_ato, tcpi_snd_mss, tcpi_rcv_mss, tcpi_unacked;
# for a listening socket tcpi_unacked is its accept queue's length (what ``ss -lt`` shows as Recv-Q).
TCP_INFO_UNACKED = struct.Struct("8B5I")


def queued(listener: trio.abc.Listener[Any]) -> int:
    """How many connections wait in ``listener``'s accept queue: peers that dialed before the daemon served its
    port (``meshd run`` listens before it loads). 0 where the platform does not say."""
    if isinstance(listener, Queueing):
        return listener.queued()
    if isinstance(listener, trio.SocketListener) and hasattr(socket, "TCP_INFO"):
        try:
            info = listener.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_UNACKED.size)
        except OSError:
            return 0
        if len(info) >= TCP_INFO_UNACKED.size:
            return int(TCP_INFO_UNACKED.unpack_from(info)[-1])
    return 0


class TcpNetwork:
    """Real TCP. Listeners set SO_REUSEADDR, so only a live listener makes a port busy.

    ``listening`` hands over sockets opened before the daemon started (``meshd run`` opens its mesh port first):
    the first listen on such an address adopts them.
    """

    def __init__(self, listening: Mapping[Address, Sequence[socket.socket]] | None = None) -> None:
        self._listening = dict(listening or {})

    async def connect(self, address: Address) -> trio.abc.Stream:
        return await trio.open_tcp_stream(address.host, address.port)

    async def listen(self, address: Address) -> Sequence[trio.SocketListener]:
        sockets = self._listening.pop(address, None)
        if sockets is None and _numeric(address.host):
            sockets = open_listening_sockets(address.host, address.port)  # no name to resolve: nothing blocks
        elif sockets is None:
            sockets = await trio.to_thread.run_sync(open_listening_sockets, address.host, address.port)
        return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_os_error(exc: OSError) -> str:
    """The kernel's words for a failed connect, digging under trio's "all attempts ... failed" wrapper."""
    causes = getattr(exc.__cause__, "exceptions", None)
    if causes and isinstance(causes[0], OSError) and causes[0].strerror:
        return causes[0].strerror
    return exc.strerror or str(exc)


async def bind_with_retry(
    net: Network, address: Address, period: float, what: str
) -> Sequence[trio.abc.Listener[trio.abc.Stream]]:
    """Listeners on ``address``, retrying a busy port for ``period`` seconds (an old incarnation may still hold it)."""
    deadline = trio.current_time() + period
    while True:
        try:
            return await net.listen(address)
        except OSError as exc:
            retryable = exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
            if not retryable or trio.current_time() + BIND_RETRY_INTERVAL > deadline:
                reason = describe_os_error(exc)
                raise BindError(f"cannot listen on {address} for the {what}: {reason}") from exc
        await trio.sleep(BIND_RETRY_INTERVAL)
