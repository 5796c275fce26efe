"""A TCP endpoint as meshd names it: the one type every layer shares for peer, mesh and admin addresses."""

from __future__ import annotations

import ipaddress

from attrs import frozen

from meshd.core.names import split_address


@frozen(order=True)
class Address:
    """A TCP endpoint, written ``host:port`` (``[v6addr]:port`` for IPv6)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        return cls(*split_address(text))

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the address: a loopback IP, or the name ``localhost``."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
