"""The spin models of docs/model/: spin must refute the classic start-up and verify meshd's, and catch every
mutation that reverts a rule of the fix.

The checks are the table of ``scripts/check-model --list`` (one source of truth); this module runs each of them
itself: ``spin -a``, ``gcc``, ``pan`` in a temporary directory (no pan, pan.c or .trail lands in the repository).
pan exits 0 even when it finds a violation, so a check is judged from its "errors: N" line and the .trail files.
Checks with the same model and flags share one compiled verifier, and builds run two at a time.

The lockstep tests need no spin: docs/model/rules.pml must be exactly what ``python -m meshd.explore.tables``
prints from the code, and meshd.pml must take its deciding rules from it and define none of its own.

The default checks take about a minute on two idle cores; ``MESHD_MODEL_DEEP=1`` adds the long ones.
The spin checks are skipped when spin or gcc is missing (``scripts/check-model`` installs spin when run as root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check-model"
MODELS = ROOT / "docs" / "model"
BUILD_TIMEOUT = 300  # seconds for spin -a plus gcc (about 10 s here)
PAN_TIMEOUT = 900  # seconds per search; the slowest default check takes about 20 s on an idle core
DEEP = os.environ.get("MESHD_MODEL_DEEP") == "1"


@dataclass(frozen=True)
class Check:
    name: str
    model: str
    spin_flags: tuple[str, ...]
    gcc_flags: tuple[str, ...]
    pan_flags: tuple[str, ...]
    expect: str  # "pass": errors: 0; "fail": a counterexample
    deep: bool
    what: str

    @property
    def build_key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return self.model, self.spin_flags, self.gcc_flags


@dataclass(frozen=True)
class Outcome:
    errors: int | None
    trails: tuple[str, ...]
    output: str


def load_checks() -> list[Check]:
    listing = subprocess.run([str(SCRIPT), "--list"], capture_output=True, text=True, check=True, timeout=60)
    checks = []
    for line in listing.stdout.splitlines():
        name, model, spin_flags, gcc_flags, pan_flags, expect, deep, what = line.split("\t")
        checks.append(
            Check(
                name,
                model,
                tuple(spin_flags.split()),
                tuple(gcc_flags.split()),
                tuple(pan_flags.split()),
                expect,
                deep == "1",
                what,
            )
        )
    return checks


ALL_CHECKS = load_checks()
CHECKS = [check for check in ALL_CHECKS if DEEP or not check.deep]

needs_spin = pytest.mark.skipif(
    shutil.which("spin") is None or shutil.which("gcc") is None,
    reason="spin or gcc missing (apt-get install -y spin gcc, or run scripts/check-model as root)",
)


def run_build(checks: list[Check], workdir: Path) -> dict[str, Outcome]:
    """Generate and compile the verifier of ``checks`` (one model, the same flags) once, then run each search."""
    first = checks[0]
    for model in MODELS.glob("*.pml"):  # a model may #include another (meshd.pml: rules.pml)
        shutil.copy(model, workdir)
    subprocess.run(
        ["spin", *first.spin_flags, "-a", first.model],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    subprocess.run(
        ["gcc", "-O2", "-w", *first.gcc_flags, "-o", "pan", "pan.c"],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    outcomes = {}
    for check in checks:
        for trail in workdir.glob("*.trail"):
            trail.unlink()
        search = subprocess.run(
            ["./pan", "-m200000", *check.pan_flags],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=PAN_TIMEOUT,
        )
        found = re.search(r"errors: (\d+)", search.stdout)
        outcomes[check.name] = Outcome(
            errors=int(found.group(1)) if found else None,
            trails=tuple(sorted(trail.name for trail in workdir.glob("*.trail"))),
            output=search.stdout + search.stderr,
        )
    return outcomes


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Start every selected check at once (two builds at a time); each test waits for its own."""
    wanted = {
        item.callspec.params["check"].name
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("check"), Check)
    }
    builds: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[Check]] = {}
    for check in CHECKS:
        if check.name in wanted:
            builds.setdefault(check.build_key, []).append(check)
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for checks in builds.values():
            build = pool.submit(run_build, checks, tmp_path_factory.mktemp(f"model-{checks[0].name}"))
            for check in checks:
                futures[check.name] = build
        yield futures
        for build in futures.values():
            build.cancel()


@needs_spin
@pytest.mark.parametrize("check", CHECKS, ids=[check.name for check in CHECKS])
def test_model_check(check: Check, outcomes: dict[str, Future]) -> None:
    outcome = outcomes[check.name].result(timeout=BUILD_TIMEOUT + PAN_TIMEOUT * 4)[check.name]
    tail = outcome.output[-3000:]
    if check.expect == "pass":
        assert outcome.errors == 0, f"{check.name}: spin found a violation ({check.what})\n{tail}"
        assert outcome.trails == (), f"{check.name}: pan wrote a trail\n{tail}"
        for cut_short in ("max search depth too small", "out of memory", "Search not completed"):
            assert cut_short not in outcome.output, f"{check.name}: the search is incomplete\n{tail}"
    else:
        assert outcome.errors is not None, f"{check.name}: pan did not report\n{tail}"
        assert outcome.errors > 0, f"{check.name}: spin no longer refutes it ({check.what})\n{tail}"
        assert outcome.trails, f"{check.name}: a violation without a trail\n{tail}"
        kind = "acceptance cycle" if "-a" in check.pan_flags else "assertion violated"
        assert f"pan:1: {kind}" in outcome.output, f"{check.name}: expected an {kind}\n{tail}"


def test_default_checks_cover_both_outcomes() -> None:
    """The default set refutes the classic baseline, verifies both epoch modes of meshd with zombies, and catches
    the controller that reuses its epoch and every mutation that reverts a rule of the fix."""
    default = [check for check in ALL_CHECKS if not check.deep]
    assert {check.model for check in default if check.expect == "fail"} >= {"classic.pml"}
    verified = [check for check in default if check.expect == "pass" and check.model == "meshd.pml"]
    assert any("-DFIXED" in check.spin_flags for check in verified)
    assert any("-DFIXED" not in check.spin_flags for check in verified)
    assert any("-DZOMBIE" in check.spin_flags for check in verified)
    assert any("live" in check.pan_flags and "-f" in check.pan_flags for check in verified)
    assert any("safety" in check.pan_flags for check in verified)
    refuted = {flag for check in default if check.expect == "fail" for flag in check.spin_flags}
    assert {"-DNOBUMP", "-DNO_CONSENT", "-DFULL_VIEWS_ONLY", "-DHELLO_ALONE"} <= refuted
    # no-leave needs a zombie and a kill (about a minute to refute): with --deep, like the first design itself
    refuted_deep = {flag for check in ALL_CHECKS if check.expect == "fail" for flag in check.spin_flags}
    assert {"-DNO_LEAVE", "-DFIRST_DESIGN"} <= refuted_deep


def test_the_rules_are_the_codes() -> None:
    """Lockstep: docs/model/rules.pml is byte for byte what the code decides (meshd.explore.tables)."""
    generated = subprocess.run(
        [sys.executable, "-m", "meshd.explore.tables"], cwd=ROOT, capture_output=True, check=True, timeout=120
    ).stdout
    committed = (MODELS / "rules.pml").read_bytes()
    assert generated == committed, (
        "docs/model/rules.pml differs from the rules of the code: regenerate it with "
        "`python -m meshd.explore.tables > docs/model/rules.pml`, then rerun the spin checks (scripts/check-model)"
    )


def test_the_model_takes_its_rules_from_rules_pml() -> None:
    """meshd.pml includes rules.pml and defines no judge, conclude or move of its own (only wrappers that apply
    the mutations on top of them)."""
    model = (MODELS / "meshd.pml").read_text()
    code = re.sub(r"/\*.*?\*/", "", model, flags=re.DOTALL)  # comments may name the rules
    assert re.search(r'^#include "rules\.pml"$', code, flags=re.MULTILINE)
    for name in ("judge", "conclude", "move"):
        assert not re.search(rf"\binline\s+{name}\s*\(", code), f"meshd.pml defines its own {name}"
        assert not re.search(rf"^\s*#define\s+{name}\b", code, flags=re.MULTILINE), f"meshd.pml defines {name}"
        assert re.search(rf"\b{name}\s*\(", code), f"meshd.pml does not use {name} from rules.pml"


def test_no_verifier_files_in_the_repository() -> None:
    leftovers = [path.name for path in MODELS.iterdir() if path.name.startswith("pan") or path.suffix == ".trail"]
    assert leftovers == []
