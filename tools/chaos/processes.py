"""The processes of one chaos trial: the cluster harness's controller with the chaos runner's own starts, and what
the runner knows of each process.

Every process has a role: the slot's own (a member, or a member started with a stale epoch on purpose), or a second
process of a live slot (a duplicate on the same host, a twin in a second namespace on its address). Whether a second
process got its slot's mesh port is read from the kernel (it holds a listening socket: ``listens``), never from a
log line. Fault injection, observation and the runner all ask ``ChaosController``; it lives apart from the runner so
that they can without importing it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import trio

from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import EpochController
from meshd.cluster.spawn import run_argv
from meshd.core.generation import EpochMode
from tools.chaos.faults import BASE_EPOCH
from tools.chaos.netns import Hosts
from tools.chaos.spec import TrialSpec
from tools.chaos.workers import exec_args

# Roles of the processes a trial starts: the slot's own (a member, or a member started with a stale epoch), and
# second processes of a live slot (a duplicate on the same host, a twin in a second namespace on its address).
MEMBER, STALE_START, DUPLICATE_START, TWIN_START = "member", "stale", "duplicate", "twin"
# /proc/net/tcp's state column for a listening socket.
TCP_LISTEN = "0A"


def listens(pid: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket (a daemon does once it bound its mesh port): its socket
    inodes against the listening sockets of its network namespace, both from /proc. False once it is gone."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        if not inodes:
            return False
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as sockets:
                next(sockets)  # the header
                for row in sockets:
                    fields = row.split()
                    if fields[3] == TCP_LISTEN and fields[9] in inodes:
                        return True
    except OSError:
        return False
    return False


class ChaosController(Controller):
    """The cluster harness's controller, with the chaos runner's starts: a slot may be restarted with a stale epoch
    on purpose, every daemon runs where ``hosts`` puts it, a twin in its own namespace; before a slot restarts, its
    duplicates are retired (one may hold the port the slot's process left)."""

    def __init__(self, spec: TrialSpec, hosts: Hosts, workdir: Path, config: Path, name: str) -> None:
        mode = EpochMode.AUTO if spec.mode == "auto" else EpochMode.FIXED
        admins = [hosts.admin(index) for index in range(spec.size)]
        policy = EpochController(mode, current=BASE_EPOCH)
        extra = exec_args(spec.worker) if spec.workers else ()
        super().__init__(config=config, admins=admins, policy=policy, workdir=workdir, name=name, extra_args=extra)
        self.hosts = hosts
        self.pending_stale: dict[int, int] = {}  # slot -> the stale epoch its next start gets
        self.twins: dict[int, str] = {}  # slot -> the namespace of its twin
        self.watches: dict[int, trio.Event] = {}  # id(incarnation) -> set once its admin watch ended
        self.bound: set[Incarnation] = set()  # second processes seen holding a listening socket

    def command(self, slot: int, epoch: int | str, role: str) -> list[str]:
        hosts = self.hosts
        if role == TWIN_START:
            argv = run_argv(
                self.config, slot, epoch, hosts.twin_admin(slot), ("--log-format", "json", *self.extra_args)
            )
            return hosts.command_in(self.twins[slot], argv)
        return hosts.command(slot, super().command(slot, epoch, role))

    def start_epoch(self, slot: int) -> tuple[int | str, str]:
        stale = self.pending_stale.pop(slot, None)
        return super().start_epoch(slot) if stale is None else (stale, STALE_START)

    async def follow(self, incarnation: Incarnation) -> None:
        """Only the slot's own processes are watched: a duplicate shares its admin port with the slot's process (and
        would make the watch retry against that one for its whole life), a twin answers on an admin port of its own.
        Whether either got the port is read from the kernel instead (``listens``)."""
        if incarnation.role in (MEMBER, STALE_START):
            ended = self.watches[id(incarnation)] = trio.Event()
            try:
                await super().follow(incarnation)
            finally:
                ended.set()

    async def watches_ended(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until the admin watch of every watched process ended: it read every event its
        process published before it exited (a daemon drains its watchers before it ends)."""
        with trio.move_on_after(timeout):
            for ended in list(self.watches.values()):
                await ended.wait()
            return True
        return False

    async def exited(self, incarnation: Incarnation, code: int) -> None:
        await self.retire_duplicates(incarnation.slot)

    def current(self, slot: int) -> Incarnation | None:
        """The slot's own process (a member, or one started stale), the latest started."""
        own = [inc for inc in self.slots[slot].history if inc.role in (MEMBER, STALE_START)]
        return own[-1] if own else None

    def members(self) -> list[Incarnation]:
        return [inc for inc in self.processes() if inc.role in (MEMBER, STALE_START)]

    def seconds(self) -> list[Incarnation]:
        """Second processes of live slots: duplicates and twins."""
        return [inc for inc in self.processes() if inc.role in (DUPLICATE_START, TWIN_START)]

    def was_bound(self, incarnation: Incarnation) -> bool:
        """Whether a second process got its slot's mesh port (it was seen holding a listening socket)."""
        return incarnation in self.bound

    def note_bound(self, incarnation: Incarnation) -> None:
        if incarnation.running and listens(incarnation.pid):
            self.bound.add(incarnation)

    def kill_second(self, incarnation: Incarnation) -> None:
        """Kill a duplicate or a twin, noting first whether it got the port."""
        self.note_bound(incarnation)
        self.kill(incarnation)

    async def retire_duplicates(self, slot: int) -> None:
        """Before a slot's restart, kill its duplicates: one may have bound the port its process freed, and the
        restart must not fail to bind. One that did was a process of the slot, and the controller saw it die."""
        for duplicate in self.seconds():
            if duplicate.slot == slot and duplicate.role == DUPLICATE_START and duplicate.code is None:
                self.kill_second(duplicate)
                code = await self.wait(duplicate)
                if self.was_bound(duplicate):
                    self.policy.exited(duplicate.epoch, code)
