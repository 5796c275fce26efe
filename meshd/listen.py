"""Listening TCP sockets from the standard library alone.

``meshd run`` opens its mesh port with this before it loads trio and the protocol (about two thirds of its start-up):
a restarted daemon's peers then find a listening port at once, and their connections wait in the backlog for the
moment the daemon serves them, instead of being refused and backing off. The daemon's own listens use it too
(``meshd.net.TcpNetwork``), so both are bound the same way: trio's way (``trio.open_tcp_listeners``).
"""

from __future__ import annotations

import socket

from meshd.core.address import Address

# The backlog asked for; the kernel clamps it to net.core.somaxconn (trio asks for the same).
BACKLOG = 0xFFFF


def open_listening_sockets(address: Address) -> list[socket.socket]:
    """One listening socket per address family ``address`` resolves to; raises OSError (EADDRINUSE: busy port).

    SO_REUSEADDR lets a port held only by dead connections (TIME_WAIT) be bound again: only a live listener makes a
    port busy. IPv6 sockets are IPv6-only, so that "::" and "0.0.0.0" can listen side by side.
    """
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    opened: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened
