"""Starting daemons: free ports, the config file, the ``meshd run`` command line, processes that die with us."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshd.children import die_with_parent, libc_prctl
from meshd.core.address import Address
from meshd.secret import write_key_file

HOST = "127.0.0.1"
# Timeouts of clusters on one host that must notice faults in a fraction of a second (the real-process tests, chaos):
# trials take seconds, and the bound B follows from them.
FAST_TIMEOUTS: dict[str, float] = {
    "connect": 0.5,
    "handshake": 0.5,
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 0.5,
    "backoff_initial": 0.05,
    "backoff_max": 0.5,
    "bind": 2.0,
}


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

    def take_range(self, count: int, attempts: int = 200) -> list[int]:
        """``count`` consecutive free ports (``meshd cluster`` numbers its ports from a base): the kernel picks the
        first, the others are bound too while they are checked."""
        for _ in range(attempts):
            held: list[socket.socket] = []
            try:
                first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(first)
                first.bind((self.host, 0))
                base = first.getsockname()[1]
                ports = list(range(base, base + count))
                if ports[-1] > 65535 or self._handed_out.intersection(ports):
                    continue
                for port in ports[1:]:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    held.append(sock)
                    sock.bind((self.host, port))
            except OSError:
                continue
            finally:
                for sock in held:
                    sock.close()
            self._handed_out.update(ports)
            return ports
        raise RuntimeError(f"no {count} consecutive free ports on {self.host} in {attempts} attempts")


# The key file a cluster's configs share: one per directory (a local cluster, a test).
SHARED_KEY_FILE = "meshd.key"
# The admin token file they share when they have one (a new key makes a good token).
SHARED_TOKEN_FILE = "admin.token"


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
    secret_file: str | None = SHARED_KEY_FILE,
    admin_token: bool = False,
) -> Path:
    """A cluster's TOML config: its name, its peers in slot order, timeouts over the defaults; ``extra`` verbatim.

    ``secret_file`` (beside the config; made when missing, so that every config of one directory shares its key)
    is the cluster's secret; None runs without one. ``admin_token`` adds an ``admin.token_file`` made the same way
    (admin websockets beyond loopback need one)."""
    lines = ["[cluster]", f"name = {toml_value(name)}", f"peers = {toml_value([str(peer) for peer in peers])}"]
    if secret_file is not None:
        if not (path.parent / secret_file).exists():
            write_key_file(path.parent / secret_file)
        lines.append(f"secret_file = {toml_value(secret_file)}")
    if admin_token:
        if not (path.parent / SHARED_TOKEN_FILE).exists():
            write_key_file(path.parent / SHARED_TOKEN_FILE)
        lines += ["", "[admin]", f"token_file = {toml_value(SHARED_TOKEN_FILE)}"]
    if timeouts:
        lines += ["", "[timeouts]", *(f"{key} = {toml_value(value)}" for key, value in timeouts.items())]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def meshd_argv(args: Iterable[str]) -> list[str]:
    """``python -m meshd ARGS`` with this interpreter."""
    return [sys.executable, "-m", "meshd", *args]


def run_argv(
    config: Path, index: int, epoch: int | str | None, admin: Address | None, extra: Iterable[str] = ()
) -> list[str]:
    """``python -m meshd run`` for slot ``index``; ``epoch`` an integer, "auto" or "await", or None (the config's)."""
    return meshd_argv([
        "run",
        "--config", str(config),
        "--index", str(index),
        *([] if epoch is None else ["--epoch", str(epoch)]),
        *([] if admin is None else ["--admin", str(admin)]),
        *extra,
    ])  # fmt: skip


def popen(
    argv: Sequence[str],
    *,
    stdout: Any,
    stderr: Any,
    env: Mapping[str, str] | None = None,
    text: bool = False,
) -> subprocess.Popen[Any]:
    """Start ``argv`` with no stdin, unbuffered Python output, and death with this process (``die_with_parent``).

    Call it from a thread that lives as long as the caller (the main thread, or a dedicated one): PR_SET_PDEATHSIG
    fires when the thread that forked the child exits.
    """
    libc_prctl()
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        text=text,
        bufsize=1 if text else -1,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
    )


def start(argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log``; it dies with this process (see ``popen``)."""
    with log.open("ab") as out:
        return popen(argv, stdout=out, stderr=out, env=env)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, indented, for a failure message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"
