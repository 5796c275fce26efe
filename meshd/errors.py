"""The short list of errors meshd raises, each converted once where I/O happens.

Every error carries what a log line or an exit code needs; nothing classifies errors by matching message strings.
"""

from __future__ import annotations

import enum


class MeshdError(Exception):
    """Base of every error meshd raises on purpose."""


class ConfigError(MeshdError):
    """The configuration or the command line is unusable; ``key`` names the offending setting (exit code 2)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class LocalProtocolError(MeshdError):
    """We were asked to send something the protocol does not allow: a bug on our side, never the peer's fault."""


class RemoteProtocolError(MeshdError):
    """The peer sent bytes that are not a valid meshd frame, or a frame that is illegal in the current state."""


class BindError(MeshdError):
    """A listening address stayed unavailable (busy port, bad host) for the whole bounded retry period (exit 1)."""


class Fenced(MeshdError):
    """A peer runs a newer epoch: this process belongs to a finished generation and must exit (exit code 75)."""

    def __init__(self, source: str, newer: object, own_epoch: object) -> None:
        super().__init__(f"{source} runs epoch {newer}, newer than ours ({own_epoch})")
        self.source = source
        self.newer = newer
        self.own_epoch = own_epoch


class AdminUnreachable(MeshdError):
    """No admin websocket answered at the given address (``meshd status``/``watch`` exit 1)."""


class NewerGeneration(MeshdError):
    """Auto mode: a peer runs a newer generation and this process, never ready in its own, should join it."""

    def __init__(self, peer: int, epoch: object) -> None:
        super().__init__(f"peer {peer} runs newer generation {epoch}")
        self.peer = peer
        self.epoch = epoch


class ExitCode(enum.IntEnum):
    """How a meshd process ends; a controller restarts on 75 (and on a death), and should not on 1 or 2."""

    OK = 0  # orderly stop (SIGTERM/SIGINT), or a command that succeeded
    FAILURE = 1  # runtime failure: a port stayed busy, the admin websocket is unreachable
    USAGE = 2  # usage or configuration error; the message names the flag or key
    WORKER_FAILED = 70  # the supervised worker failed (a non-zero exit, a signal): a death of the slot's process
    FENCED = 75  # this process's generation is over (a newer epoch, or its generation lost a member): restart it
