"""scripts/demo's bytewax demo (tools/demo), a short bounded run: not a terminal, so plain lines; it ends by itself,
reports at least one recovery, and every result line the flow printed is checked correct."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import bytewax  # noqa: F401
    import rich  # noqa: F401
except ImportError as exc:
    MISSING: str | None = f"{exc}: pip install -e '.[test]'"
else:
    MISSING = None


def free_block(size: int) -> int:
    """A base port B with B.., B+100.. (admin) and B+1000.. (Timely) free on loopback, below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        ports = [base + offset + index for offset in (0, 100, 1000) for index in range(size)]
        try:
            for port in ports:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise OSError("no free block of loopback ports")


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_the_demo_recovers_from_chaos_and_every_result_is_correct(tmp_path):
    base = free_block(4)
    command = [
        sys.executable, "-m", "tools.demo", "--duration", "20", "--chaos", "9", "--seed", "1",
        "--base-port", str(base), "--admin-base-port", str(base + 100), "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "\x1b[" not in out  # not a terminal: plain lines, no redrawing
    assert re.search(r"^faults: [1-9]", out, re.M), out
    recoveries = re.search(r"^recoveries: (\d+)", out, re.M)
    assert recoveries and int(recoveries.group(1)) >= 1, out
    results = re.search(r"^results: (\d+) checked, (\d+) correct, (\d+) incorrect", out, re.M)
    assert results, out
    checked, correct, incorrect = map(int, results.groups())
    assert correct > 0 and incorrect == 0 and checked == correct, out
