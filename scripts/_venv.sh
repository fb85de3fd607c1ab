# Sourced by scripts/serve, scripts/test and scripts/bench: makes ./.venv match a lock file.
# `ensure_venv requirements.lock` (runtime) or `ensure_venv requirements-dev.lock` (runtime + tools).
# Reinstalls only when that lock file or pyproject.toml changed since its last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARTIFACTS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local lock="$ROOT/$1" stamp="$VENV/.installed-$1" want have=""
  want="$(cat "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$want" != "$have" ]; then
    echo "installing dependencies from $1" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$lock"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
