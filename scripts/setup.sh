#!/usr/bin/env bash
# Installs slime_core and what its tests need into the current Python environment.
# torch: an installed torch (CPU or CUDA, >= 2.4) is kept; if there is none, the CPU build
# torch==2.13.0 is installed. The extension is then compiled against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # On plain PyPI this is the CUDA build; SLIME_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
  # gets the CPU-only wheel.
  "$PY" -m pip install -q "torch==${SLIME_TORCH_VERSION:-2.13.0}" \
    ${SLIME_TORCH_INDEX_URL:+--index-url "$SLIME_TORCH_INDEX_URL"}
fi
"$PY" -m pip install -q -r requirements-test.txt
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install -q --no-build-isolation -e .
