"""Starting daemons: free ports, the config file, the ``meshd run`` command line, processes that die with us."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshd.core.address import Address

HOST = "127.0.0.1"
# prctl(2) option: the kernel sends the child this signal when the parent dies (even by kill -9).
PR_SET_PDEATHSIG = 1


class PortAllocator:
    """Free loopback ports, none handed out twice by this allocator (a test session, a bench run)."""

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self._handed_out: set[int] = set()

    def take(self, count: int) -> list[int]:
        """``count`` distinct free ports: all sockets are held at once while the kernel picks (port 0), then closed
        without ever having had a connection, so nothing lingers in TIME_WAIT."""
        ports: list[int] = []
        held: list[socket.socket] = []
        try:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
                if port not in self._handed_out:
                    self._handed_out.add(port)
                    ports.append(port)
        finally:
            for sock in held:
                sock.close()
        return ports


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def write_config(
    path: Path,
    name: str,
    peers: Sequence[Address | str],
    timeouts: Mapping[str, float] | None = None,
    extra: str = "",
) -> Path:
    """A cluster's TOML config: its name, its peers in slot order, timeouts over the defaults; ``extra`` verbatim."""
    lines = ["[cluster]", f"name = {toml_value(name)}", f"peers = {toml_value([str(peer) for peer in peers])}"]
    if timeouts:
        lines += ["", "[timeouts]", *(f"{key} = {toml_value(value)}" for key, value in timeouts.items())]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def run_argv(
    config: Path, index: int, epoch: int | str | None, admin: Address | None, extra: Iterable[str] = ()
) -> list[str]:
    """``python -m meshd run`` for slot ``index``; ``epoch`` an integer, "auto" or "await", or None (the config's)."""
    return [
        sys.executable, "-m", "meshd", "run",
        "--config", str(config),
        "--index", str(index),
        *([] if epoch is None else ["--epoch", str(epoch)]),
        *([] if admin is None else ["--admin", str(admin)]),
        *extra,
    ]  # fmt: skip


def die_with_parent() -> None:
    """In the child, before exec: be killed when the process that started us dies, however it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log``; it dies with this process.

    Start it from a thread that lives as long as the caller (the main thread): PR_SET_PDEATHSIG fires when the
    thread that forked the child exits.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=die_with_parent,
        )


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, indented, for a failure message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"
