"""The peer users would otherwise pick: PyTorch's gloo process group (CPU), measured like meshd.

Each rank is a separate process running ``tools/bench/gloo_rank.py`` (by path: it imports nothing of meshd), which
reports every step as a JSON line with its wall-clock ``time``, so the driver measures from the ranks' own timestamps.

The driver (``bench_formation``, ``bench_kill_one``, ``bench_detection``) bounds every wait and kills every rank
it started; a rank that neither succeeds nor fails within the bound counts as hung.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from meshd.cluster.spawn import log_tail
from tools.bench.common import HOST, BenchError, Lab, load, median, ms, progress, table

# The torch release measured (a CPU wheel); the bench installs it when it is missing (extra "gloo").
TORCH_REQUIREMENT = "torch==2.13.0"

RANK_PROGRAM = Path(__file__).with_name("gloo_rank.py")
# Bounds on every wait of the driver.
FORM_TIMEOUT = 120.0  # spawn of the ranks -> every rank passed the first barrier (imports of N torches included)
RECOVERY_TIMEOUT = 30.0  # replacement spawned -> every rank passed a barrier again, else "hung"
DETECTION_TIMEOUT = 5.0  # seconds, the explicit group timeout= of the detection run (gloo's default: 30 min)
DETECTION_SLACK = 20.0  # SIGSTOP -> every other rank's barrier failed: DETECTION_TIMEOUT plus this
READ_TIMEOUT = 0.2  # one wait for a line from the ranks, between checks of the deadline


def ensure_torch() -> None:
    """Install the measured torch release into this venv when it is missing (only the benchmark needs it).

    Asked of the package metadata: importing torch here would cost the driver 1.5 s and 200 MiB.
    """
    try:
        installed: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed.split("+")[0] == TORCH_REQUIREMENT.split("==")[1]:
        return
    progress(f"installing {TORCH_REQUIREMENT} (the CPU wheel) for the gloo comparison")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH_REQUIREMENT]
    if subprocess.run(command, check=False).returncode != 0:
        raise BenchError(f"could not install {TORCH_REQUIREMENT}; run: pip install -e '.[gloo]'")


@dataclass(eq=False)
class Rank:
    rank: int
    process: subprocess.Popen[str]
    spawned: float
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    def first(self, kind: str, since: float = 0.0) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == kind and e["time"] >= since), None)


class Group:
    """N gloo ranks, their JSON lines gathered by one reader thread per rank into one queue."""

    def __init__(self, size: int, lab: Lab, tag: str, timeout: float | None) -> None:
        self.size = size
        self.store = f"{HOST}:{lab.ports.take(1)[0]}"
        self.workdir = lab.workdir
        self.fleet = lab.fleet
        self.tag = tag
        self.timeout = timeout
        self.lines: queue.Queue[tuple[Rank, str]] = queue.Queue()
        self.ranks: list[Rank] = []

    def start(self, rank: int) -> Rank:
        command = [sys.executable, str(RANK_PROGRAM), "--rank", str(rank), "--world", str(self.size)]
        command += ["--store", self.store] + ([] if self.timeout is None else ["--timeout", str(self.timeout)])
        log = self.workdir / f"{self.tag}-{rank}.log"
        spawned = time.time()
        process = self.fleet.start(command, log, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        started = Rank(rank, process, spawned, log)
        if rank < len(self.ranks):
            self.ranks[rank] = started
        else:
            self.ranks.append(started)
        assert process.stdout is not None
        threading.Thread(target=self._pump, args=(started, process.stdout), daemon=True).start()
        return started

    def _pump(self, rank: Rank, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.lines.put((rank, line))
        except (ValueError, OSError):
            return  # the driver closed the pipe

    def gather(self, done: Callable[[], object], bound: float) -> bool:
        """Take lines until ``done()`` holds (True) or ``bound`` seconds pass (False)."""
        deadline = time.monotonic() + bound
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                rank, line = self.lines.get(timeout=min(remaining, READ_TIMEOUT))
            except queue.Empty:
                continue
            try:
                rank.events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a library's own print
        return True

    def tell(self, ranks: list[Rank], line: str) -> None:
        """Write ``line`` to the ranks' stdin (each line makes a rank run one more barrier)."""
        for rank in ranks:
            assert rank.process.stdin is not None
            try:
                rank.process.stdin.write(line + "\n")
                rank.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                continue  # it died: the measurement sees that

    def form(self) -> None:
        for rank in range(self.size):
            self.start(rank)
        if not self.gather(lambda: all(r.first("barrier") or r.first("error") for r in self.ranks), FORM_TIMEOUT):
            raise BenchError(f"gloo group of {self.size} did not form within {FORM_TIMEOUT:g} s", self.logs())
        failed = [r for r in self.ranks if r.first("error")]
        if failed:
            raise BenchError(f"gloo rank {failed[0].rank} failed to form: {failed[0].first('error')}", self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- gloo rank {r.rank} (pid {r.process.pid}):\n{log_tail(r.log, 8)}" for r in self.ranks[:4])

    def close(self) -> None:
        self.fleet.kill(rank.process for rank in self.ranks)
        for rank in self.ranks:
            for stream in (rank.process.stdin, rank.process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except (OSError, ValueError):
                        continue


# ----- formation


@dataclass
class GlooFormation:
    size: int
    imports: list[float]  # per rank: spawn -> torch imported
    last_imported: float  # spawn of the first rank -> the last rank imported torch
    formation: float  # the last rank imported -> every rank passed the barrier
    load: str


def bench_formation(lab: Lab, size: int, repeats: int) -> list[GlooFormation]:
    results = []
    for repeat in range(repeats):
        group = Group(size, lab, f"gloo-form-{size}-{repeat}", None)
        before = load()
        try:
            group.form()
        finally:
            group.close()
        imported = [r.first("imported") for r in group.ranks]
        barrier = [r.first("barrier") for r in group.ranks]
        stamps = [e["time"] for e in imported if e is not None]
        last = max(stamps)
        done = max(e["time"] for e in barrier if e is not None)
        first_spawn = min(r.spawned for r in group.ranks)
        result = GlooFormation(
            size,
            [e["time"] - r.spawned for r, e in zip(group.ranks, imported, strict=True) if e is not None],
            last - first_spawn,
            done - last,
            f"{before} -> {load()}",
        )
        progress(
            f"gloo formation N={size} {repeat + 1}/{repeats}: import {ms(median(result.imports))} (median), "
            f"last imported -> all passed the barrier {ms(result.formation)}"
        )
        results.append(result)
    return results


def report_formation(results: dict[int, list[GlooFormation]]) -> list[list[str]]:
    """Rows for the formation table: N, runs, start per process, last started -> all ready, load."""
    rows = []
    for size, runs in results.items():
        rows.append(
            [
                str(size),
                str(len(runs)),
                ms(median(t for run in runs for t in run.imports)),
                ms(median(run.last_imported for run in runs)),
                ms(median(run.formation for run in runs)),
                ms(max(run.formation for run in runs)),
                runs[-1].load,
            ]
        )
    return rows


# ----- kill one


@dataclass
class GlooKill:
    recovered_after: float | None  # replacement spawned -> every rank passed a barrier again; None: it did not
    survivors_raised: list[float]  # replacement spawned -> each survivor's barrier raised
    survivors_hung: int  # survivors with neither a barrier nor an error within the bound
    survivor_error: str  # the first survivor error, shortened
    replacement: str  # what the restarted rank did within the bound


def short_error(text: str) -> str:
    """gloo's message without its source path and peer address, so that equal failures read alike."""
    text = re.sub(r"\[[^\]]*\]:?\d*| for (recv|send) operation to complete", "", text)
    return text.split(". ")[0].replace("  ", " ").strip()


def _kill_one(group: Group, rng: random.Random) -> GlooKill:
    victim = group.ranks[rng.randrange(1, group.size)]  # rank 0 hosts the store: killing it ends the group anyway
    survivors = [r for r in group.ranks if r is not victim]
    victim.process.kill()
    victim.process.wait(timeout=10)
    replacement = group.start(victim.rank)
    since = replacement.spawned
    group.tell(survivors, "barrier")  # the survivors carry on: their next collective

    def settled(rank: Rank) -> bool:
        return rank.first("barrier", since) is not None or rank.first("error", since) is not None

    group.gather(lambda: all(settled(r) for r in group.ranks), RECOVERY_TIMEOUT)
    passed = [event for r in group.ranks if (event := r.first("barrier", since)) is not None]
    errors = [event for r in survivors if (event := r.first("error", since)) is not None]
    if replacement.first("barrier", since):
        state = "passed a barrier"
    elif replacement.first("error", since):
        state = f"raised: {short_error(str((replacement.first('error', since) or {}).get('error')))}"
    else:
        state = f"hung in {'barrier' if replacement.first('joined') else 'init_process_group'}"
    return GlooKill(
        max(event["time"] for event in passed) - since if len(passed) == group.size else None,
        [event["time"] - since for event in errors],
        sum(not settled(r) for r in survivors),
        short_error(str(errors[0]["error"])) if errors else "-",
        state,
    )


def bench_kill_one(lab: Lab, size: int, trials: int, seed: int | None) -> list[GlooKill]:
    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        group = Group(size, lab, f"gloo-kill-{trial}", None)
        try:
            group.form()
            result = _kill_one(group, rng)
        finally:
            group.close()
        outcome = (
            "worked again" if result.recovered_after is None else f"worked again after {ms(result.recovered_after)}"
        )
        if result.recovered_after is None:
            outcome = (
                f"did not work again: {len(result.survivors_raised)} survivors raised ({result.survivor_error}), "
                f"{result.survivors_hung} hung; the restarted rank {result.replacement}"
            )
        progress(f"gloo kill one N={size} {trial + 1}/{trials}: {outcome}")
        results.append(result)
    return results


# ----- detection of a stopped rank


@dataclass
class GlooDetection:
    delays: list[float]  # SIGSTOP -> each other rank's barrier raised
    hung: int  # ranks with no error within DETECTION_TIMEOUT + DETECTION_SLACK
    errors: set[str]


def bench_detection(lab: Lab, size: int, seed: int | None) -> GlooDetection:
    rng = random.Random(seed)
    group = Group(size, lab, "gloo-detect", DETECTION_TIMEOUT)
    try:
        group.form()
        victim = group.ranks[rng.randrange(1, size)]
        survivors = [r for r in group.ranks if r is not victim]
        stopped = time.time()
        os.kill(victim.process.pid, signal.SIGSTOP)
        group.tell(survivors, "barrier")
        group.gather(lambda: all(r.first("error", stopped) for r in survivors), DETECTION_TIMEOUT + DETECTION_SLACK)
    finally:
        group.close()  # SIGKILL ends the stopped rank too
    failed = [r.first("error", stopped) for r in survivors]
    delays = [e["time"] - stopped for e in failed if e is not None]
    errors = {short_error(str(e["error"])) for e in failed if e is not None}
    progress(f"gloo detection N={size}: {len(delays)}/{len(survivors)} ranks raised, {sorted(errors)}")
    return GlooDetection(delays, len(survivors) - len(delays), errors)


def report_gloo(kills: list[GlooKill], size: int, detection: GlooDetection | None) -> str:
    recovered = [k.recovered_after for k in kills if k.recovered_after is not None]
    raised = [delay for k in kills for delay in k.survivors_raised]
    replacement = ", ".join(f"{count}x {state}" for state, count in Counter(k.replacement for k in kills).items())
    survivor_errors = "; ".join(sorted({k.survivor_error for k in kills if k.survivor_error != "-"})) or "-"
    rows = [
        [
            f"kill -9 one rank of {size}, restart it at once (same rank)",
            f"{len(recovered)}/{len(kills)}",
            ms(median(recovered)) if recovered else "-",
            f"{len(raised)} raised after {ms(median(raised))} (median): {survivor_errors}" if raised else "-",
            f"{sum(k.survivors_hung for k in kills)} survivors hung; the restarted rank: {replacement}",
        ]
    ]
    if detection is not None:
        delays = detection.delays
        rows.append(
            [
                f"SIGSTOP one rank of {size}, group timeout={DETECTION_TIMEOUT:g} s",
                "-",
                "-",
                f"{len(delays)} raised after {ms(median(delays))} (max {ms(max(delays))}): "
                f"{', '.join(sorted(detection.errors))}"
                if delays
                else "-",
                f"{detection.hung} survivors hung",
            ]
        )
    title = "## 6. gloo (torch.distributed, CPU) under the same faults"
    header = ["fault", "worked again", "after (median)", "survivors' barrier", f"hung (bound {RECOVERY_TIMEOUT:g} s)"]
    note = (
        "Kill one: the survivors call barrier() again at once; the replacement runs init_process_group and "
        "barrier() with gloo's default timeout (30 min). Times from the replacement's spawn (SIGSTOP: from the stop). "
        "Without an explicit timeout= a stopped rank is noticed only after the default 30 min."
    )
    return title + "\n\n" + table(header, rows) + "\n\n" + note
