#!/usr/bin/env bash
# Create or update the virtual environment at $1 (default .venv) from requirements/dev.lock.
# Idempotent: it reinstalls only when the lock, pyproject.toml or the checkout's path changed
# (the editable install points at the checkout), so a cached venv makes this a no-op. The stamp
# alone is not trusted for the checkout's path: a venv shared by several checkouts may have been
# re-pointed since it was written, and then tests and coverage would run another tree's code.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
lock=requirements/dev.lock
key="$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)-$(pwd | sha256sum | cut -c1-8)"
stamp="$venv/.esper-install-stamp"

if [ ! -x "$venv/bin/python" ]; then
  python=$(scripts/find-python.sh)
  echo "ensure-venv: creating $venv with $python"
  "$python" -m venv "$venv"
fi
installed_from() {
  "$venv/bin/python" -c 'import esper, pathlib; print(pathlib.Path(esper.__file__).resolve().parents[2])' \
    2>/dev/null || true
}
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$key" ]; then
  echo "ensure-venv: installing $lock into $venv (the first time downloads torch, ~5 GB)"
  "$venv/bin/python" -m pip install -q --upgrade pip uv
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" -r "$lock"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .
  echo "$key" > "$stamp"
fi
if [ "$(installed_from)" != "$(pwd -P)" ]; then
  echo "ensure-venv: pointing $venv's editable esper at $(pwd -P) (it was: $(installed_from))"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .
fi
