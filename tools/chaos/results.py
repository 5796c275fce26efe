"""The bytewax job of the chaos runner (``--worker bytewax`` and the baseline): its command lines and its results.

What bytewax computed is the application's own output: one JSON line per complete (key, window) on its stdout
(examples/bytewax/flow.py), which lands in its daemon's log (meshd) or its process's log (the baseline). Those
lines are read here, and only here, and judged by the example's own checker (``flow.problems``, ``flow.check``):
every line must be right, and after the last fault the job must complete a window again. No meshd fact comes from
these files.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "bytewax"
FLOW = EXAMPLE / "flow.py"
LAUNCH = EXAMPLE / "launch.py"
# Timely's ports: mesh port + OFFSET (launch.py's default).
OFFSET = 1000
# The engine's start-up allowance: bytewax's import, Timely's connections (it retries every 1 s) and a 0.5 s window.
STARTUP = 10.0
# How often the result files are read while waiting for progress.
READ_INTERVAL = 0.25


@cache
def flow() -> ModuleType:
    """examples/bytewax/flow.py, imported from its path (its checker needs no bytewax)."""
    spec = importlib.util.spec_from_file_location("meshd_chaos_bytewax_flow", FLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def available() -> str | None:
    """Why bytewax cannot run here, or None."""
    try:
        import bytewax  # noqa: F401
    except ImportError as error:
        return f"bytewax is not installed ({error}); pip install -e '.[bytewax]'"
    return None


def launch_command() -> list[str]:
    """Every daemon's worker with ``--worker bytewax``: the continuous flow through the example's launcher."""
    return [sys.executable, str(LAUNCH)]


def run_command(index: int, addresses: list[str]) -> list[str]:
    """One bytewax process of the baseline: what launch.py would exec, with fixed addresses."""
    return [
        sys.executable, "-m", "bytewax.run", f"{FLOW}:flow",
        "-i", str(index), "-w", "1", "-a", ";".join(addresses),
    ]  # fmt: skip


def read_lines(paths: Iterable[Path]) -> list[str]:
    text: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text += file.readlines()
        except OSError:
            continue
    return text


@dataclass(frozen=True)
class Progress:
    """The first window completed (every key, every partition, each result right) after ``since``."""

    at: float  # wall clock of its last result line
    window: int
    epoch: str | None  # the generation label, when the group was one epoch
    processes: tuple[int, ...]


def first_complete(
    lines: Iterable[dict[str, Any]], since: float, *, epochs: set[str] | None = None, by_epoch: bool = True
) -> Progress | None:
    """The earliest window all of whose K keys have a right result printed after ``since``: within one epoch label
    (``by_epoch``; only the labels in ``epochs`` when given), else whatever printed it (the baseline's processes
    carry a label per process incarnation)."""
    check = flow()
    groups: dict[tuple[str | None, int], dict[str, dict[str, Any]]] = {}
    for line in lines:
        if line.get("time", 0) <= since or check.problems(line):
            continue
        if epochs is not None and line["epoch"] not in epochs:
            continue
        group = groups.setdefault((line["epoch"] if by_epoch else None, line["window"]), {})
        group.setdefault(line["key"], line)
    best: Progress | None = None
    for (epoch, window), keys in groups.items():
        sample = next(iter(keys.values()))
        if len(keys) < sample["K"]:
            continue
        at = max(line["time"] for line in keys.values())
        processes = tuple(sorted({line["process"] for line in keys.values()}))
        if best is None or at < best.at:
            best = Progress(at, window, epoch, processes)
    return best


def parsed(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return list(flow().results(read_lines(paths)))


def verdict(paths: Iterable[Path]) -> tuple[int, list[str]]:
    """Every result line of the trial, judged by the example's checker: (how many, what was wrong)."""
    text = read_lines(paths)
    summary, errors = flow().check(text)
    return sum(entry["results"] for entry in summary.values()), errors
