#!/usr/bin/env bash
# Create .venv and install the package with its test extras. torch is pinned through
# constraints.txt (a CPU build on the project's machines); CUDA users see README "GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "Python >= 3.10 is required (found $("$PY" --version 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's notices about empty local index folders are noise; real errors still fail the script.
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[testing]" 2>&1 \
  | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import napari_latentseg, torch, monai, napari" \
  || { echo "installation failed: see the pip output above" >&2; exit 1; }
touch .venv/.installed
