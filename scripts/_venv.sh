# Sourced by scripts/serve, scripts/test and scripts/bench: makes ./.venv match a lock file.
# `ensure_venv requirements.lock` (runtime) or `ensure_venv requirements-dev.lock` (runtime + tools).
# Reinstalls only when that lock file or pyproject.toml (or client/pyproject.toml) changed since
# its last install. The dev install also installs the client package (client/) editable; its one
# dependency, httpx, is in both locks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARTIFACTS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local lock="$ROOT/$1" stamp="$VENV/.installed-$1" want have=""
  want="$(cat "$lock" "$ROOT/pyproject.toml" "$ROOT/client/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$want" != "$have" ]; then
    echo "installing dependencies from $1" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$lock"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
    if [ "$1" = requirements-dev.lock ]; then
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT/client"
    fi
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
