"""Plain values that the command line, the config and the wire share, importable at no cost (no attrs, no enum
classes): ``meshd run`` reads them, and its listen addresses, before anything heavier loads, so that its mesh port
listens at once."""

from __future__ import annotations

U64_MAX = 2**64 - 1
# The epochs given by name, not by number (the values of ``meshd.core.generation.EpochMode`` beside "fixed").
EPOCH_MODES = ("auto", "await")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
# What a fenced daemon does: exit 75 (its orchestrator restarts it), or restart itself in place (same PID).
ON_FENCE = ("exit", "restart")
DEFAULT_ADMIN_PORT = 7100


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) as (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is outside 0..65535")
    return host, number
