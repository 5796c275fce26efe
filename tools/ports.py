"""Loopback ports for tools that restart daemons on the same ports: taken below the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket

from meshd.cluster.spawn import HOST, PortAllocator

# Below the kernel's ephemeral range (32768 and up by default): an outgoing connection takes its source port from
# that range, and one that took a killed daemon's port would keep its restart from binding it.
PORT_RANGE = (20000, 32000)


class LowPorts(PortAllocator):
    """meshd.cluster's allocator (never a port twice), drawing from PORT_RANGE instead of the kernel's pick, from a
    seeded starting point; each port is checked free with a test bind."""

    def __init__(self, rng: random.Random, host: str = HOST) -> None:
        super().__init__(host)
        self._next = rng.randrange(*PORT_RANGE)

    def take(self, count: int) -> list[int]:
        ports: list[int] = []
        for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
            if len(ports) == count:
                return ports
            port = self._next
            self._next = port + 1 if port + 1 < PORT_RANGE[1] else PORT_RANGE[0]
            if port not in self._handed_out and self._free(port):
                self._handed_out.add(port)
                ports.append(port)
        if len(ports) == count:
            return ports
        raise OSError(f"ran out of free loopback ports in {PORT_RANGE[0]}..{PORT_RANGE[1]}")

    def _free(self, port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind((self.host, port))
            except OSError:
                return False
        return True
