"""What every part of the benchmark shares: ports, process bookkeeping and clean-up, /proc readings, tables.

Every process a part starts goes into ``LIVE`` and is killed on any way out of the run (``cleanup``), so that a
failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meshd.core.address import Address

HOST = "127.0.0.1"
# Fresh ports come from below the kernel's ephemeral range, so that no outgoing connection can hold one.
PORT_RANGE = (20000, 32000)
# Sleep between two polls of a condition that does not hold yet (a port that does not accept, a state).
POLL_INTERVAL = 0.0005
# Bound on one admin request to a running daemon.
STATUS_TIMEOUT = 5.0
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


def load() -> str:
    """The load average now, printed beside every figure: the machine is shared, so figures are upper bounds."""
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


# ---------------------------------------------------------------------------------------------------------------
# Ports


class PortAllocator:
    """Loopback ports never handed out twice in one bench run, each checked free with a test bind."""

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.randrange(*PORT_RANGE)
        self._used: set[int] = set()

    @staticmethod
    def _free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                return False
        return True

    def take(self, count: int) -> list[int]:
        ports: list[int] = []
        for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
            if len(ports) == count:
                return ports
            port = self._next
            self._next = self._next + 1 if self._next + 1 < PORT_RANGE[1] else PORT_RANGE[0]
            if port not in self._used and self._free(port):
                self._used.add(port)
                ports.append(port)
        if len(ports) == count:
            return ports
        raise BenchError(f"ran out of free loopback ports in {PORT_RANGE[0]}..{PORT_RANGE[1]}")


def accepts(address: Address) -> bool:
    """Whether a TCP connection to ``address`` is accepted right now (closed at once)."""
    with socket.socket() as probe:
        probe.settimeout(0.25)
        try:
            probe.connect((address.host, address.port))
        except OSError:
            return False
    return True


def write_config(path: Path, mesh_ports: list[int], timeouts: dict[str, float] | None = None) -> Path:
    """A cluster config for daemons listening on ``mesh_ports``; ``timeouts`` override meshd's defaults."""
    peers = ", ".join(f'"{HOST}:{port}"' for port in mesh_ports)
    lines = ["[cluster]", 'name = "bench"', f"peers = [{peers}]", "[timeouts]"]
    lines += [f"{key} = {value!r}" for key, value in (timeouts or {}).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def meshd_command(config: Path, index: int, epoch: int | str, admin: Address) -> list[str]:
    return [
        sys.executable, "-m", "meshd", "run", "--config", str(config),
        "--index", str(index), "--epoch", str(epoch), "--admin", str(admin),
    ]  # fmt: skip


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"


# ---------------------------------------------------------------------------------------------------------------
# Processes and clean-up

# Every process this bench started and has not reaped yet; killed on any exit path.
LIVE: set[subprocess.Popen[Any]] = set()

# The temporary directory of this bench run, removed when the run is interrupted by a signal.
WORKDIR: list[Path] = []


def spawn(command: list[str], log: Path, **popen: Any) -> subprocess.Popen[Any]:
    """Start ``command`` with its output in ``log`` (unless ``popen`` redirects it) and register it in LIVE."""
    with log.open("ab") as out:
        options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": out, **popen}
        process = subprocess.Popen(command, **options)
    LIVE.add(process)
    return process


def kill(processes: Iterable[subprocess.Popen[Any]]) -> None:
    """SIGKILL the processes (stopped ones too) and reap them."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        LIVE.discard(process)


def kill_all() -> None:
    kill(list(LIVE))


def _die_on_signal(signum: int, _: Any) -> None:
    kill_all()
    for directory in WORKDIR:
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(128 + signum)


@contextlib.contextmanager
def cleanup(workdir: Path) -> Iterator[None]:
    """Kill every process on any way out, SIGTERM and SIGHUP included; an interrupted run removes ``workdir``."""
    WORKDIR.append(workdir)
    previous = {signum: signal.signal(signum, _die_on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except BaseException:  # Ctrl-C and the like (a failed measurement returns instead, keeping the logs)
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        kill_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        WORKDIR.remove(workdir)


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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(value: float, target: float, *, inclusive: bool = True) -> str:
    met = value <= target if inclusive else value < target
    return "ok" if met else f"MISS (x{value / target:.1f})"


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: with fewer than 100 values, p99 is the maximum."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
