"""The exhaustive explorer (meshd.explore): every interleaving of small clusters under the real rules.

The suite runs the searches that finish in seconds; ``python -m meshd.explore`` runs the larger ones (docs/model/
README.md lists them with their sizes). A search that cannot fail proves nothing, so a broken rule must fail here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshd.core.generation import EpochMode
from meshd.explore.search import explore
from meshd.sim.variants import VARIANTS

# (processes, mode, faults, fault kinds, crossed dials): each exhaustive in a few seconds here.
SEARCHES = [
    (2, "auto", 0, "kill", True),
    (2, "fixed", 0, "kill", True),
    (2, "auto", 1, "kill", False),
    (2, "fixed", 1, "kill", False),
    (2, "auto", 1, "linger", True),
    (2, "auto", 1, "timeout", True),
]


@pytest.mark.parametrize(("size", "mode", "faults", "kinds", "crossed"), SEARCHES)
def test_every_interleaving_is_safe_and_converges(size, mode, faults, kinds, crossed):
    report = explore(size, EpochMode(mode), faults, kinds=frozenset(kinds.split(",")), crossed=crossed)
    assert report.ok, "\n".join(report.lines())
    assert report.converged > 0 and report.states > 100


def test_the_explorer_catches_a_broken_rule():
    with VARIANTS["no-epoch-check"]():
        report = explore(2, EpochMode.AUTO, 1, kinds=frozenset({"kill"}), crossed=False)
    assert not report.ok
    assert "S1 a link between two epochs" in report.violations
    assert report.violations["S1 a link between two epochs"][0][0].startswith("start slot")  # a path to replay


def test_a_capped_search_says_it_is_not_exhaustive():
    report = explore(2, EpochMode.AUTO, 1, kinds=frozenset({"zombie"}), crossed=False, max_states=200)
    assert report.truncated and not report.ok
    assert not report.wedged  # what it did not expand is not reported as a wedge
    assert "TRUNCATED" in "\n".join(report.lines())


def test_the_command_line_runs_a_search_and_fails_on_a_broken_rule():
    command = [sys.executable, "-m", "meshd.explore", "--size", "2", "--faults", "0"]
    good = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0 and "no violation" in good.stdout, good.stdout + good.stderr
    bad = subprocess.run(
        [*command[:-1], "1", "--kinds", "kill", "--no-crossed", "--variant", "no-epoch-check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "VIOLATION S1" in bad.stdout, bad.stdout + bad.stderr
