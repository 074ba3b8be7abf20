#!/usr/bin/env bash
# Installs slime_core and what its tests need into the current Python environment.
# torch: an installed torch (CPU or CUDA, >= 2.4) is kept; if there is none, the CPU build
# torch==2.13.0 is installed. The extension is then compiled against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==${SLIME_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -r requirements-test.txt
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install -q --no-build-isolation -e .
