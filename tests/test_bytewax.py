"""An unmodified bytewax (Timely) cluster under meshd: examples/bytewax (flow.py, launch.py) end to end.

Three real daemons at epoch 1, each with ``--exec -- python examples/bytewax/launch.py``: the launcher execs
``bytewax.run`` with its Timely addresses derived from MESHD_PEERS, and the dataflow prints one JSON line per
complete (key, window), which needs every process's partition. The test waits until every process printed right
results of generation 1, kill -9s slot 1's daemon (its bytewax dies with it), restarts the slot at epoch 2 and the
survivors once they have left generation 1 (their bytewax panics when its peer dies, so they exit 70, or they are
fenced first, 75) at epoch 2, as the controller would, and waits until generation 2 prints right results from
every process. Every result line of the run is checked against flow.py's independent recomputation.

The launcher and the checker also get a few quick tests of their own (no bytewax needed).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from meshd.errors import ExitCode
from tests.harness.procs import Daemon, Harness, free_ports

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bytewax"
try:
    import bytewax  # noqa: F401
except ImportError as exc:
    NO_BYTEWAX: str | None = f"bytewax cannot be imported ({exc}); pip install -e '.[bytewax]' (bytewax==0.21.1)"
else:
    NO_BYTEWAX = None
needs_bytewax = pytest.mark.skipif(NO_BYTEWAX is not None, reason=NO_BYTEWAX or "")
# Bounds: a generation's first complete window (start, or after the fault: mesh recovery + bytewax start + Timely's
# 1 s dial retry + one window of 0.5 s), on a busy 2-core machine.
FIRST_RESULTS = 25.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"meshd_example_bytewax_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flow = load("flow")
launch = load("launch")


# ----- the launcher and the checker alone


def test_the_launcher_derives_every_slots_timely_address_from_meshd_peers():
    peers = ["127.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"]
    assert launch.timely_addresses(peers, 1000, None) == ["127.0.0.1:8000", "10.0.0.2:8001", "[::1]:8002"]
    assert launch.timely_addresses(peers, 1000, [9000, 9001, 9002]) == ["127.0.0.1:9000", "10.0.0.2:9001", "[::1]:9002"]
    with pytest.raises(ValueError, match="2 ports for 3 peers"):
        launch.timely_addresses(peers, 0, [1, 2])
    with pytest.raises(ValueError, match="out of range"):
        launch.timely_addresses(["h:65000"], 1000, None)


def test_the_launcher_command_line():
    env = {"MESHD_INDEX": "2", "MESHD_PEERS": "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002", "MESHD_EPOCH": "4"}
    argv = [sys.executable, str(EXAMPLE / "launch.py"), "--dry-run", "--workers", "2", "--", "-s", "5"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout)[1:] == [
        "-m", "bytewax.run", f"{EXAMPLE / 'flow.py'}:flow",
        "-i", "2", "-w", "2", "-a", "127.0.0.1:8000;127.0.0.1:8001;127.0.0.1:8002", "-s", "5",
    ]  # fmt: skip
    bad = subprocess.run(argv, env={}, capture_output=True, text=True, timeout=20, check=False)
    assert bad.returncode == launch.BAD_ENV and "MESHD_INDEX" in bad.stderr


def test_the_checker_recomputes_every_result():
    count, total = flow.expected("k5", 3, 3, 12, 120)
    line = {"flow": flow.MARK, "epoch": "1", "process": 0, "worker": 0, "key": "k5", "window": 3, "count": count,
            "sum": total, "parts": [0, 1, 2], "P": 3, "K": 12, "W": 120}  # fmt: skip
    assert count == 30 and flow.problems(line) == []
    assert flow.problems({**line, "sum": total + 1})
    assert flow.problems({**line, "parts": [0, 2]})
    summary, errors = flow.check([f"{line}".replace("'", '"'), "some log line", "{not json"])
    assert errors == [] and summary["1"]["results"] == 1


# ----- a bytewax cluster under real daemons


def results_of(daemons: list[Daemon]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """What the workers printed (on their daemons' stdout), checked: per epoch, and every error."""
    lines: list[str] = []
    for daemon in daemons:
        lines += daemon.stdout().splitlines()
    return flow.check(lines)


async def first_results(
    harness: Harness, daemons: list[Daemon], running: list[Daemon], epoch: str, since: float
) -> float:
    """Wait until generation ``epoch`` printed (on the stdout of one of ``daemons``) a complete window (every key)
    and results from every process, all right, while ``running`` keep running; the seconds since ``since``."""

    async def probe() -> tuple[bool, Any]:
        for daemon in running:
            if daemon.returncode is not None:
                harness.fail(f"{daemon.name} exited {daemon.returncode} while generation {epoch} should run")
        summary, errors = results_of(daemons)
        harness.check(not errors, f"wrong results: {errors[:5]}")
        entry = summary.get(epoch)
        done = entry is not None and entry["complete"] and entry["processes"] == {0, 1, 2}
        return done, summary

    await harness.eventually(probe, f"right results of every process in generation {epoch}", FIRST_RESULTS, 0.2)
    return time.time() - since


@needs_bytewax
async def test_a_bytewax_cluster_recovers_from_a_kill_9_in_a_new_generation(harness: Harness):
    cluster = harness.cluster(3, name="bytewax")
    ports = ",".join(str(port) for port in free_ports(3))
    worker = ["--exec", "--", sys.executable, str(EXAMPLE / "launch.py"), "--ports", ports]

    started = time.time()
    daemons = [harness.start(cluster, index, 1, extra_args=worker) for index in range(3)]
    startup = await first_results(harness, daemons, daemons, "1", started)

    fault = time.time()
    daemons[1].signal(9)
    code = await harness.wait_exit(daemons[1])
    harness.check(code == -9, f"{daemons[1].name} exited {code} after kill -9")
    replacements = {1: harness.start(cluster, 1, 2, extra_args=worker)}
    codes = {}
    for index in (0, 2):  # as the controller would: each survivor, once it left generation 1, joins epoch 2
        codes[index] = await harness.wait_exit(daemons[index])
        harness.check(
            codes[index] in (ExitCode.WORKER_FAILED, ExitCode.FENCED),
            f"{daemons[index].name} exited {codes[index]}, expected 70 (its bytewax failed) or 75 (fenced)",
        )
        replacements[index] = harness.start(cluster, index, 2, extra_args=worker)
    new = [replacements[index] for index in range(3)]
    recovery = await first_results(harness, daemons + new, new, "2", fault)

    summary, errors = results_of(daemons + new)
    harness.check(not errors, f"wrong results: {errors[:5]}")
    harness.check(set(summary) == {"1", "2"}, f"results of generations {sorted(summary)}")
    for epoch, entry in summary.items():
        harness.check(entry["workers"] == {0, 1, 2}, f"generation {epoch}: results from workers {entry['workers']}")
    print(
        f"\n[bytewax] first complete window {startup:.2f}s after the daemons started; after kill -9 of slot 1: "
        f"survivors exited {codes}, generation 2's first complete window {recovery:.2f}s after the fault"
    )
