"""Where chaos daemons live: loopback ports, or one network namespace per daemon with silent partitions.

Namespace topology (names start with ``mch<runner pid>`` so that a later run can tell a dead run's leftovers):
- ``<prefix>-hub`` holds the bridge ``br0``, one veth port per daemon and one for the controller;
- ``<prefix>-d<i>`` is daemon i's namespace: ``eth0`` with ``10.213.<net>.<i+1>/24``, loopback, no default route,
  so nothing in it can reach anything but the other namespaces of this run;
- ``<prefix>c`` in the root namespace holds ``.254``: the controller reaches every daemon's admin port through it.
A partition drops IP packets between chosen daemon addresses in the hub's bridge (nftables, bridge family), so the
peers see silence, never a reset or an ICMP error; the controller's admin traffic is never dropped. A twin
``<prefix>-t<i>`` is a second namespace on the bridge with daemon i's address (an address conflict), removed with
every neighbour cache flushed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable

from meshd.core.address import Address

LOOPBACK = "127.0.0.1"
# Every namespace and root-namespace link of a run starts with this, followed by the runner's pid.
PREFIX = "mch"
STALE_NAME = re.compile(rf"^{PREFIX}(\d+)(?:-|c$)")
# The runs' subnets are 10.213.<net>.0/24; the controller's address in it ends with .254.
SUBNET_BASE = "10.213"
CONTROLLER_HOST = 254
# Bound on one `ip`/`nft` command.
COMMAND_TIMEOUT = 10.0
# Mesh and admin ports of every daemon when each has its own namespace (and so its own address).
NETNS_MESH_PORT = 7000
NETNS_ADMIN_PORT = 7100
# The nftables table and chain in the hub namespace that hold the partition's drop rules.
NFT_TABLE = "chaos"
NFT_CHAIN = "cut"


class NetError(RuntimeError):
    """A namespace, link or nftables command failed; the message holds its output."""


def run(*argv: str) -> str:
    """Run one network-configuration command, bounded; NetError with its stderr when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can (root, `ip` and `nft`, a probe namespace)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing {' and '.join(missing)} (apt-get install iproute2 nftables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "del", probe)
    except NetError as exc:
        return f"cannot create a network namespace here: {exc}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Remove the namespaces and links of runs whose runner is gone, killing the daemons left in them."""
    removed: list[str] = []
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = STALE_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            for pid in run("ip", "netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", name)
            removed.append(name)
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        match = STALE_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            run("ip", "link", "del", name)
            removed.append(name)
    return removed


class Hosts:
    """Loopback: every daemon on 127.0.0.1 with its own mesh and admin port; no partitions."""

    kind = "loopback"
    partitions = False

    def __init__(self, mesh_ports: list[int], admin_ports: list[int]) -> None:
        self.mesh_ports = mesh_ports
        self.admin_ports = admin_ports

    def mesh(self, index: int) -> Address:
        return Address(LOOPBACK, self.mesh_ports[index])

    def admin(self, index: int) -> Address:
        return Address(LOOPBACK, self.admin_ports[index])

    def command(self, index: int, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` where daemon ``index`` lives."""
        return argv

    def partition(self, side: Iterable[int], size: int) -> None:
        raise NetError("loopback hosts cannot be partitioned")

    def add_twin(self, index: int) -> str:
        raise NetError("loopback hosts cannot hold a twin")

    def remove_twin(self, name: str) -> None:
        raise NetError("loopback hosts cannot hold a twin")

    def twin_admin(self, index: int) -> Address:
        raise NetError("loopback hosts cannot hold a twin")

    def command_in(self, namespace: str, argv: list[str]) -> list[str]:
        raise NetError("loopback hosts have no namespaces")

    def heal(self) -> None:
        """Nothing to heal on loopback."""

    def close(self) -> None:
        """Nothing to tear down on loopback."""


class Namespaces(Hosts):
    """One namespace per daemon on a hub bridge; partitions drop packets silently in the hub."""

    kind = "netns"
    partitions = True

    def __init__(self, size: int) -> None:
        super().__init__([NETNS_MESH_PORT] * size, [NETNS_ADMIN_PORT] * size)
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self.daemons = [f"{self.prefix}-d{index}" for index in range(size)]
        self.controller_link = f"{self.prefix}c"
        self.subnet = self._free_subnet()
        self.created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _free_subnet(self) -> str:
        routes = run("ip", "-4", "route", "show")
        for offset in range(250):
            subnet = f"{SUBNET_BASE}.{(os.getpid() + offset) % 250 + 1}"
            if f"{subnet}.0/24" not in routes:
                return subnet
        raise NetError(f"no free {SUBNET_BASE}.X.0/24 subnet for the namespaces")

    def host(self, index: int) -> str:
        return f"{self.subnet}.{index + 1}"

    def mesh(self, index: int) -> Address:
        return Address(self.host(index), self.mesh_ports[index])

    def admin(self, index: int) -> Address:
        return Address(self.host(index), self.admin_ports[index])

    def command(self, index: int, argv: list[str]) -> list[str]:
        return self.command_in(self.daemons[index], argv)

    def command_in(self, namespace: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def twin_admin(self, index: int) -> Address:
        """A twin's admin port: beside the slot's own, so that the controller's polls never reach the twin."""
        return Address(self.host(index), self.admin_ports[index] + 1)

    def _attach(self, name: str, port: str, index: int) -> None:
        """Give namespace ``name`` an ``eth0`` with daemon ``index``'s address, on the hub bridge as ``port``."""
        run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "addr", "add", f"{self.host(index)}/24", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")

    def add_twin(self, index: int) -> str:
        """A second namespace with daemon ``index``'s address on the bridge (an address conflict)."""
        name = f"{self.prefix}-t{index}"
        run("ip", "netns", "add", name)
        self.created.append(name)
        self._attach(name, f"t{index}", index)
        return name

    def remove_twin(self, name: str) -> None:
        """Delete a twin's namespace, and forget its hardware address everywhere (neighbour caches), as the
        network would once the conflict is over; otherwise peers would keep sending to it for up to a minute."""
        self._delete(name)
        for daemon in self.daemons:
            run("ip", "-n", daemon, "neigh", "flush", "all")
        run("ip", "neigh", "flush", "dev", self.controller_link)

    def _build(self) -> None:
        for name in (self.hub, *self.daemons):
            run("ip", "netns", "add", name)
            self.created.append(name)
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for index, name in enumerate(self.daemons):
            self._attach(name, f"d{index}", index)
        run("ip", "link", "add", self.controller_link, "type", "veth", "peer", "name", "ctl", "netns", self.hub)
        run("ip", "-n", self.hub, "link", "set", "ctl", "master", "br0", "up")
        run("ip", "addr", "add", f"{self.subnet}.{CONTROLLER_HOST}/24", "dev", self.controller_link)
        run("ip", "link", "set", self.controller_link, "up")
        nft = f"add table bridge {NFT_TABLE}\nadd chain bridge {NFT_TABLE} {NFT_CHAIN} "
        nft += "{ type filter hook forward priority 0; policy accept; }\n"
        self._nft(nft)

    def _nft(self, script: str) -> None:
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", self.hub, "nft", "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetError(f"nft in {self.hub}: {exc}") from exc
        if done.returncode != 0:
            raise NetError(f"nft in {self.hub} exited {done.returncode}: {done.stderr.strip()}\n{script}")

    def partition(self, side: Iterable[int], size: int) -> None:
        """Cut every daemon in ``side`` off from every daemon outside it, in both directions, silently."""
        inside = sorted(set(side))
        outside = [index for index in range(size) if index not in inside]
        if not inside or not outside:
            return
        a = ", ".join(self.host(index) for index in inside)
        b = ", ".join(self.host(index) for index in outside)
        rules = [f"ip saddr {{ {a} }} ip daddr {{ {b} }} drop", f"ip saddr {{ {b} }} ip daddr {{ {a} }} drop"]
        self._nft("".join(f"add rule bridge {NFT_TABLE} {NFT_CHAIN} {rule}\n" for rule in rules))

    def heal(self) -> None:
        self._nft(f"flush chain bridge {NFT_TABLE} {NFT_CHAIN}\n")

    def _delete(self, name: str) -> None:
        """Kill whatever still runs in namespace ``name`` and delete it (its veth pair goes with it)."""
        with contextlib.suppress(NetError):
            for pid in run("ip", "netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        self.created.remove(name)
        run("ip", "netns", "del", name)

    def close(self) -> None:
        """Delete every namespace of the run, and the controller's link."""
        for name in reversed(list(self.created)):
            try:
                self._delete(name)
            except NetError as exc:
                print(f"[chaos] could not delete namespace {name}: {exc}", file=sys.stderr)
        with contextlib.suppress(NetError):
            run("ip", "link", "del", self.controller_link)
