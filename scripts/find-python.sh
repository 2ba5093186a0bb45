#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, or fail naming what to install.
# Order: $PYTHON, python3.12, python3.13, python3, then a pyenv-managed 3.12+.
set -euo pipefail

is_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

for candidate in "${PYTHON:-}" python3.12 python3.13 python3; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if is_ok "$path"; then
    # pyenv shims resolve through the active version; print the real interpreter.
    "$path" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done

if command -v pyenv >/dev/null 2>&1; then
  version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -V | head -n 1 || true)
  if [ -n "$version" ]; then
    path=$(PYENV_VERSION="$version" pyenv which python 2>/dev/null)
    if is_ok "$path"; then
      echo "$path"
      exit 0
    fi
  fi
fi

echo "find-python: no Python >= 3.12 found; install python3.12 (or set PYTHON=/path/to/python3.12)" >&2
exit 1
