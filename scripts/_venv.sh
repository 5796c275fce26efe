# Sourced by the scripts: create or reuse .venv at the repo root and install meshd into it (editable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install, or the way of installing did. The editable
# install is a plain path entry ("compat"), not setuptools' import hook, which costs every start of a daemon ~10 ms.
STAMP="$VENV/.meshd-installed"
INSTALL=(-e "$ROOT[test]" --config-settings editable_mode=compat)
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$(cat "$STAMP")" != "${INSTALL[*]}" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${INSTALL[@]}"
    echo "${INSTALL[*]}" > "$STAMP"
fi
# Compiled bytecode for meshd itself: an editable install leaves none, and with PYTHONDONTWRITEBYTECODE set (as on
# this machine) every daemon would compile meshd from source at each start (15-20 % of a formation's CPU).
"$VENV/bin/python" -m compileall -q "$ROOT/meshd" >/dev/null
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
