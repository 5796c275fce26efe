"""An auto-mode cluster under a restarting orchestrator, for real-process tests of generations and fences.

``Orchestrator`` (made by the ``orchestrate`` fixture of tests/conftest.py) plays the orchestrator of an auto-mode
cluster with ``meshd.cluster``'s controller (the one ``meshd cluster`` runs): it keeps one ``meshd run --epoch
auto`` process per slot and restarts any that exits after RESTART_DELAY (kill -9, or 75 because a newer generation
exists; an exit 1 or 2 fails the test), counting every exit per slot. Nothing tells a restarted process which
generation to join: the contract under test is that the cluster settles on one ready generation by itself, and
that a process exits 75 at most once per fault (only a process that was ready, i.e. sealed, in a generation that
is over). Each fault scenario measures the time from the fault to "every slot ready in one generation" (the latest
``state_since`` of the ready statuses, against the wall clock at the fault) and prints it (``record_timing``); with
``MESHD_GENERATION_TIMINGS=FILE`` each measurement is also appended to FILE as one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd.cluster.controller import Controller, Incarnation
from meshd.cluster.policy import convergence_problems
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.status import Status
from tests.harness.procs import STATUS_TIMEOUT, Cluster, Harness

# The exit code of a process killed with -9, as the harness and the controller see it.
KILLED = -signal.SIGKILL
# Bound on reaching one ready generation after a fault: generous, CI runs on a busy 2-core machine.
RECOVERY = 30.0
# How long a settled auto-mode cluster must then stay as it is (same generation, same processes, no further exit).
SETTLE = 1.0
GENERATION = re.compile(r"[0-9]+\.[0-9a-f]{16}")
TIMINGS_ENV = "MESHD_GENERATION_TIMINGS"


def generation_order(epoch: str) -> tuple[int, int]:
    """A self-minted generation "MAJOR.MINORHEX" as the (major, minor) pair it is ordered by."""
    major, _, minor = epoch.partition(".")
    return int(major), int(minor or "0", 16)


def record_timing(scenario: str, **numbers: Any) -> None:
    print(f"\n[generations] {scenario}: " + ", ".join(f"{key}={value}" for key, value in numbers.items()))
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(json.dumps({"scenario": scenario, **numbers}) + "\n")


def log_text(incarnation: Incarnation) -> str:
    """What a daemon the controller started wrote (stdout and stderr)."""
    return incarnation.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class Generation:
    """Every slot ready in one generation, as observed."""

    epoch: str
    statuses: list[dict[str, Any]]
    ready_at: float  # wall clock: when the last slot became ready

    @property
    def incarnations(self) -> list[str]:
        return [status["incarnation"] for status in self.statuses]


def one_generation_problems(statuses: list[Status | None], incarnations: list[int | None]) -> list[str]:
    """Why these statuses (one per slot, by index) are not every slot ready and sealed in one self-minted
    generation, each linked to the processes that run: ``meshd.cluster``'s convergence predicate, and auto mode."""
    problems = convergence_problems(statuses, incarnations=incarnations)
    for index, status in enumerate(statuses):
        if status is None:
            continue
        if status.mode != EpochMode.AUTO:
            problems.append(f"slot {index} runs in mode {status.mode}")
        if status.epoch is None or not GENERATION.fullmatch(str(status.epoch)):
            problems.append(f"slot {index} reports epoch {status.epoch!r}, not a self-minted generation")
    return problems


class TomlEpoch(Controller):
    """Starts daemons without ``--epoch``: the config file says ``epoch = "auto"``."""

    def start_epoch(self, slot: int) -> tuple[Any, str]:
        return None, "member"


class Orchestrator:
    """An auto-mode cluster under ``meshd.cluster``'s controller, seen the way these tests look at it."""

    def __init__(self, harness: Harness, cluster: Cluster, controller: Controller) -> None:
        self.harness = harness
        self.cluster = cluster
        self.controller = controller

    def launch(self, index: int) -> None:
        """Start the slot's daemon now, and keep restarting it for the rest of the test."""
        self.controller.launch(index)

    def proc(self, index: int) -> Incarnation:
        proc = self.controller.slots[index].current
        assert proc is not None, f"slot {index} was never launched"
        return proc

    def admin(self, index: int) -> Address:
        return self.controller.slots[index].admin

    def running(self, index: int) -> bool:
        current = self.controller.slots[index].current
        return current is not None and current.running

    def kill(self, *indices: int) -> float:
        """kill -9 the current daemon of each slot; returns the wall clock just before the first signal."""
        procs = [self.proc(index) for index in indices]
        for proc in procs:
            self.harness.check(proc.running, f"d{proc.slot} (pid {proc.pid}) exited {proc.code} before the kill")
        fault = time.time()
        for proc in procs:
            self.controller.kill(proc)
        return fault

    def exits(self) -> dict[int, list[int]]:
        return self.controller.exits()

    def check_running(self) -> None:
        """Fail at once when the controller stopped the cluster (a daemon exited 1 or 2)."""
        failure = self.controller.failure
        self.harness.check(failure is None, f"the controller stopped the cluster: {failure}")

    async def statuses(self) -> list[Status | None] | None:
        """Every slot's status, from processes that were running before and after the query; None otherwise."""
        procs = [slot.current for slot in self.controller.slots]
        if not all(self.running(index) for index in range(self.cluster.size)):
            return None
        found = await self.controller.statuses(STATUS_TIMEOUT)
        if [slot.current for slot in self.controller.slots] != procs:
            return None
        if not all(self.running(index) for index in range(self.cluster.size)):
            return None
        return found

    async def wait_one_generation(self, what: str, timeout: float = RECOVERY) -> Generation:
        """Wait until every slot is ready and sealed in one generation, each linked to the processes that run."""

        async def probe() -> tuple[bool, Any]:
            self.check_running()
            found = await self.statuses()
            if found is None:
                return False, {"exits": self.exits(), "slots": "a slot is between two processes"}
            problems = one_generation_problems(found, self.controller.incarnations())
            statuses = [None if status is None else status.to_json() for status in found]
            return not problems, {"exits": self.exits(), "problems": problems, "statuses": statuses}

        observed = await self.harness.eventually(probe, f"one ready generation ({what})", timeout)
        statuses = observed["statuses"]
        return Generation(statuses[0]["epoch"], statuses, max(status["state_since"] for status in statuses))

    async def settle(self, generation: Generation, exits: dict[int, list[int]]) -> None:
        """The cluster stays in ``generation`` with the same processes, and nobody exits, for SETTLE seconds."""
        await trio.sleep(SETTLE)
        self.check_running()
        found = await self.statuses()
        self.harness.check(found is not None, f"a daemon exited after the cluster settled; exits {self.exits()}")
        assert found is not None
        problems = one_generation_problems(found, self.controller.incarnations())
        statuses = [None if status is None else status.to_json() for status in found]
        self.harness.check(not problems, f"the ready generation did not hold: {problems}\n{statuses}")
        self.harness.check(
            statuses[0]["epoch"] == generation.epoch  # type: ignore[index]
            and [s["incarnation"] for s in statuses] == generation.incarnations,  # type: ignore[index]
            f"the cluster moved on from generation {generation.epoch} by itself: {statuses}",
        )
        self.harness.check(self.exits() == exits, f"exits changed after the cluster settled: {self.exits()}")


# What the ``orchestrate`` fixture yields: ``await orchestrate(size=4, launch=all, toml=False)``.
Orchestrate = Callable[..., Awaitable[Orchestrator]]
