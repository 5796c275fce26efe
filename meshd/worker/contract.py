"""What a worker is told (README, "Workers"): the same facts as environment variables (``--exec``) or as the JSON
line of an attach (``worker.socket``). Standard library only: the worker's side imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The descriptor list's entry at the worker's own index (it has no socket to itself).
OWN = "-"


@dataclass(frozen=True)
class Facts:
    """Who the worker is and which generation's sockets it holds."""

    index: int
    size: int
    cluster: str
    epoch: str  # as ``meshd status`` prints it: "5", or "<ms>.<16 hex digits>" for a self-minted generation
    incarnation: int  # the daemon's (printed as 16 hex digits)
    peers: tuple[str, ...]  # every slot's mesh address, config order
    admin: str | None  # the daemon's admin address, when it has one

    def to_env(self, fds: dict[int, int]) -> dict[str, str]:
        """The MESHD_* variables; ``fds`` is the descriptor of the data socket to each peer."""
        env = {
            "MESHD_INDEX": str(self.index),
            "MESHD_SIZE": str(self.size),
            "MESHD_CLUSTER": self.cluster,
            "MESHD_EPOCH": self.epoch,
            "MESHD_INCARNATION": f"{self.incarnation:016x}",
            "MESHD_PEERS": ",".join(self.peers),
            "MESHD_FDS": ",".join(OWN if peer == self.index else str(fds[peer]) for peer in range(self.size)),
        }
        if self.admin is not None:
            env["MESHD_ADMIN"] = self.admin
        return env

    def to_json(self) -> dict[str, Any]:
        """The attach answer's JSON (the sockets travel beside it, in index order, the worker's own skipped)."""
        return {
            "index": self.index,
            "size": self.size,
            "cluster": self.cluster,
            "epoch": self.epoch,
            "incarnation": f"{self.incarnation:016x}",
            "peers": list(self.peers),
            "admin": self.admin,
        }
