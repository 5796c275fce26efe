"""The simulation's view of the one safety checker (``meshd.safety``): every live daemon's status, after every step.

A process's status is rebuilt only when it published an event (everything the checks read changes with one), so
checking after every step stays cheap. The simulation adds what only it can know: that an exit 1 happened because
the network refused the port, and that no process started after the last fault exits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from meshd.errors import ExitCode
from meshd.safety import Observation, SafetyChecker

if TYPE_CHECKING:
    from meshd.sim.world import Process


class SimChecker:
    def __init__(self, *, duplicates: bool) -> None:
        self.safety = SafetyChecker(duplicates=duplicates)
        self.own: list[str] = []  # what only the simulation checks
        self._observations: dict[int, Observation] = {}  # pid -> its status when it last changed

    @property
    def violations(self) -> list[str]:
        return [str(violation) for violation in self.safety.violations] + self.own

    def violate(self, now: float, text: str) -> None:
        if len(self.own) < 20:
            self.own.append(f"t={now:.6f} {text}")

    def changed(self, process: Process) -> None:
        """``process`` published an event: its status must be read again."""
        self._observations.pop(process.pid, None)

    def check(self, now: float, processes: Iterable[Process]) -> None:
        observations = []
        for process in processes:
            observation = self._observations.get(process.pid)
            if observation is None:
                status = process.daemon.model.status()
                observation = Observation(status, process.born, dict(process.down_since))
                self._observations[process.pid] = observation
            observations.append(observation)
        self.safety.observe(now, observations)

    def process_exited(self, now: float, process: Process, last_fault: float) -> None:
        """S5, and the simulation's own: an exit 1 only after a refused bind, none from a process started after the
        last fault (unless the controller started it stale on purpose)."""
        code = process.exit_code
        if code == ExitCode.FENCED:
            self.safety.exited(now, process.daemon.model.status(), code, process.fenced)
        elif code == ExitCode.FAILURE:
            if not process.attachment.refused_binds:
                self.violate(now, f"pid {process.pid} exited 1 but the network never refused it the port")
        else:
            self.violate(now, f"pid {process.pid} exited with {code}")
        if process.born > last_fault and not process.stale:
            self.violate(now, f"exits: pid {process.pid}, started after the last fault, exited with {code}")
        self._observations.pop(process.pid, None)
