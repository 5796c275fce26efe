"""The layers of the house, enforced: every import of every module under meshd/ is read (ast) and checked.

- ``meshd.errors`` is a leaf; the sans-I/O core (``meshd.core``) imports only itself, ``meshd.errors`` and plain
  libraries: never trio, loguru or anything above it;
- the daemon and its I/O shell never import the simulation, the explorer or the tools that drive daemons;
- nothing in ``meshd`` imports the tests, the dev tools (``tools``) or the scripts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "meshd"

# Third-party libraries the core may not import (I/O, scheduling, logging belong to the shell).
CORE_FORBIDDEN_LIBRARIES = {"trio", "trio_websocket", "wsproto", "loguru", "cattrs", "socket", "subprocess"}
# What the daemon's side of the house may not import: the harnesses that drive daemons from outside.
ABOVE_THE_DAEMON = ("meshd.sim", "meshd.explore", "meshd.cluster", "meshd.safety", "meshd.cli", "meshd.admin.commands")
DAEMON_SIDE = (
    "meshd.daemon",
    "meshd.link",
    "meshd.heartbeat",
    "meshd.accept",
    "meshd.connection",
    "meshd.net",
    "meshd.bus",
    "meshd.config",
    "meshd.logs",
    "meshd.secret",
    "meshd.gate",
    "meshd.data",
    "meshd.admin.server",
    "meshd.notify",
    "meshd.http",
    "meshd.metrics",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_modules_were_found():
    assert "meshd.core.mesh" in MODULES and "meshd.daemon" in MODULES and len(MODULES) > 20


def test_errors_is_a_leaf():
    assert not [name for name in MODULES["meshd.errors"] if under(name, "meshd")]


def core_violations(found: set[str]) -> list[str]:
    return sorted(
        name
        for name in found
        if (under(name, "meshd") and not under(name, "meshd.core") and not under(name, "meshd.errors"))
        or name.split(".")[0] in CORE_FORBIDDEN_LIBRARIES
    )


def daemon_violations(found: set[str]) -> list[str]:
    return sorted(name for name in found if any(under(name, above) for above in ABOVE_THE_DAEMON))


def outside_violations(found: set[str]) -> list[str]:
    return sorted(name for name in found if name.split(".")[0] in ("tests", "tools", "scripts"))


@pytest.mark.parametrize("module", sorted(name for name in MODULES if under(name, "meshd.core")))
def test_the_core_imports_only_itself_and_plain_libraries(module):
    assert not core_violations(MODULES[module]), f"{module} imports {core_violations(MODULES[module])}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if any(under(name, d) for d in DAEMON_SIDE)))
def test_the_daemon_side_never_imports_what_drives_daemons(module):
    assert not daemon_violations(MODULES[module]), f"{module} imports {daemon_violations(MODULES[module])}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_in_meshd_imports_tests_tools_or_scripts(module):
    assert not outside_violations(MODULES[module]), f"{module} imports {outside_violations(MODULES[module])}"


def test_each_rule_catches_what_it_forbids():
    assert core_violations({"trio", "meshd.daemon", "meshd.core.wire", "attrs"}) == ["meshd.daemon", "trio"]
    assert daemon_violations({"meshd.sim.world", "meshd.core.mesh"}) == ["meshd.sim.world"]
    assert outside_violations({"tests.harness.virtual", "tools.chaos", "meshd.cli"}) == [
        "tests.harness.virtual",
        "tools.chaos",
    ]
