"""Listening TCP sockets from the standard library alone.

``meshd run`` opens its mesh and admin ports with this before it loads the config's structuring (attrs, cattrs),
trio and the protocol (most of its start-up): a restarted daemon's peers then find a listening port at once, and
their connections wait in the backlog for the moment the daemon serves them, instead of being refused and backing
off. ``early_addresses`` reads the two addresses from the TOML with the standard library alone. The daemon's own
listens use ``open_listening_sockets`` too (``meshd.net.TcpNetwork``), so both are bound the same way: trio's way
(``trio.open_tcp_listeners``).
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

from meshd.core.names import DEFAULT_ADMIN_PORT, split_address

HostPort = tuple[str, int]

# The backlog asked for; the kernel clamps it to net.core.somaxconn (trio asks for the same).
BACKLOG = 0xFFFF


def early_addresses(config: Path, index: int | None, listen: HostPort | None, admin: HostPort | None) -> list[HostPort]:
    """The mesh and admin addresses ``meshd run`` will bind, from the flags over the raw TOML (``cluster.listen``,
    else ``cluster.peers[index]``; ``admin.listen``). Whatever cannot be read is left out: the daemon's own start,
    which validates everything, then binds it or says what is wrong."""
    try:
        raw: dict[str, Any] = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = {}
    cluster, admin_table = raw.get("cluster", {}), raw.get("admin", {})
    index = raw.get("index") if index is None else index
    found = []
    try:
        if listen is not None:
            found.append(listen)
        elif isinstance(cluster, dict) and isinstance(cluster.get("listen"), str):
            found.append(split_address(cluster["listen"]))
        elif isinstance(cluster, dict) and isinstance(index, int) and not isinstance(index, bool):
            found.append(split_address(cluster["peers"][index]))
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    try:
        if admin is not None:
            found.append(admin)
        elif isinstance(admin_table, dict) and "listen" in admin_table:
            found.append(split_address(admin_table["listen"]))
        else:
            found.append(("127.0.0.1", DEFAULT_ADMIN_PORT))
    except (TypeError, ValueError, AttributeError):
        pass
    return found


def open_listening_sockets(host: str, port: int) -> list[socket.socket]:
    """One listening socket per address family ``host`` resolves to; raises OSError (EADDRINUSE: busy port).

    SO_REUSEADDR lets a port held only by dead connections (TIME_WAIT) be bound again: only a live listener makes a
    port busy. IPv6 sockets are IPv6-only, so that "::" and "0.0.0.0" can listen side by side.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
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
