#!/usr/bin/env bash
# Runs every CUDA kernel on this CPU: builds csrc/cuda/*.cu against the emulation of the CUDA
# execution model (csrc/emu, see its README) with its checks, runs the kernels against the
# CPU kernels and the checker's own broken-kernel tests, prints one summary line and exits
# non-zero on any mismatch, memory error, race, divergent barrier or uninitialised read.
#
#     bash scripts/cuda_emu_check.sh [BUILD_DIR]      (default build/emu; g++ and cmake only)
#
# On a machine with a GPU, scripts/gpu_check.sh comes first: this is what CI can prove without.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/emu}
JOBS=$(nproc)
t0=$SECONDS
LOG="$BUILD/cuda_emu_check.log"
mkdir -p "$BUILD"

cmake -S . -B "$BUILD" -DSLIME_CUDA=OFF -DSLIME_CUDA_EMU=ON -DSLIME_SANITIZE=ON -DSLIME_WERROR=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 1
cmake --build "$BUILD" -j "$JOBS" --target test_emu_kernels test_emu_checks || exit 1
UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir "$BUILD" -L emu -j "$JOBS" --output-on-failure \
  >"$LOG" 2>&1
rc=$?
grep -E '^(tile_resize|query_attention|token_select|checker)[:]|Test +#|tests passed|FAILED' "$LOG"

# One line: kernels in csrc/cuda, cases run, findings in our kernels, broken kernels flagged.
T="$BUILD/Testing/Temporary/LastTest.log"
kernels=$(grep -o '__global__' csrc/cuda/*.cu | wc -l)
cases=$(grep -hoE '^[a-z_]+: [0-9]+ cases' "$T" | awk '{s += $2} END {print s + 0}')
found=$(grep -hoE '^[a-z_]+: [0-9]+ cases, [0-9]+ findings' "$T" |
  awk '{s += $4} END {print s + 0}')
flagged=$(grep -hoE '^checker: [0-9]+ of [0-9]+' "$T" | awk '{print $2 "/" $4}')
fatal=$(grep -cE 'ERROR: AddressSanitizer: heap-(buffer-overflow|use-after-free)' "$T")
echo "cuda_emu_check: $([ $rc -eq 0 ] && echo ok || echo FAILED): $kernels kernels, $cases cases," \
  "$found findings in our kernels; broken kernels flagged ${flagged:-0/0} + $fatal by ASan;" \
  "$((SECONDS - t0)) s"
exit $rc
