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
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
