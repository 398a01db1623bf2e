#!/usr/bin/env bash
# Create .venv in the repo root with torch==2.13.0 installed FIRST (the local CPU wheel; any
# other spec pulls gigabytes of CUDA), then the package with all extras. Idempotent and fast
# when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[all,dev]"
  echo "$want" > "$stamp"
fi
