"""What every part of the benchmark shares: where it works (``Lab``: its directory, ports and processes), clean-up,
/proc readings, progress lines.

Every process a part starts itself (gloo ranks, the daemons of a formation mesh) goes through the lab's ``Fleet``:
it dies with the bench (PR_SET_PDEATHSIG, from one long-lived forking thread) and is killed on any way out of the
run (``cleanup``), so that a failed or interrupted run leaves nothing behind. Clusters under a controller
(``meshd.cluster``) start and stop their daemons themselves.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd.children import die_with_parent
from meshd.cluster.spawn import HOST
from meshd.core.address import Address
from tools.ports import LowPorts
from tools.report import load, ms, percentile, table

__all__ = ["HOST", "load", "ms", "percentile", "table"]

# Sleep between two polls of a condition that does not hold yet (a port that does not accept, a state).
POLL_INTERVAL = 0.0005
# Bound on one admin request to a running daemon.
STATUS_TIMEOUT = 5.0
# Bound on one connect that probes whether a port accepts.
PROBE_TIMEOUT = 0.25
# Lines of each daemon's log shown when a run fails.
LOG_TAIL = 25

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failed run; ``logs`` holds the process logs worth showing."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def accepts(address: Address) -> bool:
    """Whether a TCP connection to ``address`` is accepted right now (closed at once)."""
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Processes and clean-up


class Fleet:
    """The processes a bench run started itself and has not reaped yet."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[Any]] = set()
        # PR_SET_PDEATHSIG fires when the forking thread ends: one thread forks every process, for the whole run.
        self._forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-spawn")

    def start(self, command: Sequence[str], log: Path, **popen: Any) -> subprocess.Popen[Any]:
        """Start ``command`` with its output in ``log`` (unless ``popen`` redirects it); it dies with the bench."""
        return self._forker.submit(self._start, list(command), log, popen).result()

    def _start(self, command: list[str], log: Path, popen: dict[str, Any]) -> subprocess.Popen[Any]:
        with log.open("ab") as out:
            options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": out, **popen}
            process = subprocess.Popen(command, preexec_fn=functools.partial(die_with_parent, os.getpid()), **options)
        self.live.add(process)
        return process

    def kill(self, processes: Iterable[subprocess.Popen[Any]]) -> None:
        """SIGKILL the processes (stopped ones too) and reap them."""
        processes = list(processes)
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            self.live.discard(process)

    def kill_all(self) -> None:
        self.kill(list(self.live))

    def close(self) -> None:
        self.kill_all()
        self._forker.shutdown(wait=False)


@dataclass
class Lab:
    """Where a bench run works: its directory (configs and logs), its ports, the processes it started."""

    workdir: Path
    ports: LowPorts
    fleet: Fleet


@contextlib.contextmanager
def cleanup(lab: Lab) -> Iterator[None]:
    """Kill every process on any way out, SIGTERM and SIGHUP included; an interrupted run removes its directory."""

    def die_on_signal(signum: int, _: Any) -> None:
        lab.fleet.kill_all()
        shutil.rmtree(lab.workdir, ignore_errors=True)
        os._exit(128 + signum)

    previous = {signum: signal.signal(signum, die_on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except BaseException:  # Ctrl-C and the like (a failed measurement returns instead, keeping the logs)
        lab.fleet.kill_all()
        shutil.rmtree(lab.workdir, ignore_errors=True)
        raise
    finally:
        lab.fleet.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------------------------
# /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on; the command may contain spaces
    return int(fields[11]) + int(fields[12])  # fields 14 (utime) and 15 (stime)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no VmRSS for process {pid}")


# ---------------------------------------------------------------------------------------------------------------
# Report


def verdict(value: float, target: float, *, inclusive: bool = True) -> str:
    met = value <= target if inclusive else value < target
    return "ok" if met else f"MISS (x{value / target:.1f})"


def median(values: Iterable[float]) -> float:
    return statistics.median(values)
