#!/usr/bin/env bash
# One command that validates and measures the CUDA path on a machine with an NVIDIA GPU, a
# CUDA torch and nvcc, and no network:
#
#     bash scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench/results/gpu-<date>)
#
# Steps, each logged to OUT_DIR: build the CUDA extension in place (no pip, nothing fetched),
# print the build info and the toolchain, check that the C++ checks' errors reach Python (if
# not: a backtrace and rebuilds with other settings, see cpp_errors below), run the whole test
# suite (CUDA cases included), run the benchmarks on the GPU, run compute-sanitizer memcheck
# and racecheck on small cases of every kernel, then print a summary table (also written to
# OUT_DIR/summary.md). Budget: under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench/results/gpu-$(date +%F)}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$SECONDS
rows=()

step() {  # step NAME LOG CMD...: runs CMD, appends its output to LOG, records rc and time
  local name=$1 log=$2; shift 2
  local s=$SECONDS
  echo "== $name" | tee -a "$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  rows+=("| $name | $([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)") | $((SECONDS - s)) s | $(basename "$log") |")
  tail -n 5 "$log"
  return $rc
}

setup_log="$OUT_DIR/setup.log"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -n 2
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} >"$setup_log" 2>&1
cc=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
# Build for the GPU in hand as well as the default sm_80/sm_90 list.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0${cc:+;$cc}"}
step "build CUDA extension" "$setup_log" env SLIME_CUDA=1 MAX_JOBS=$(nproc) \
  $PY setup.py build_ext --inplace
built=$?
step "build info" "$setup_log" $PY -m slime_core.info

toolchain() {  # which compilers and runtime libraries the extension met
  echo "CXX=${CXX:-} CC=${CC:-}; c++ is $(command -v "${CXX:-c++}")"
  "${CXX:-c++}" --version | head -n 1
  echo "objects' compilers (readelf .comment):"
  readelf -p .comment slime_core/_C*.so | sed -n 's/^ *\[ *[0-9a-f]*\] *//p' | sort -u
  echo "linked (ldd):"
  ldd slime_core/_C*.so | grep -E "stdc|gcc_s|gomp|cudart|libc\.so"
  echo "loaded after import (/proc/self/maps):"
  $PY -c "import slime_core; print(open('/proc/self/maps').read())" |
    grep -oE '/[^ ]*(stdc\+\+|gcc_s|gomp)[^ ]*' | sort -u
}

CANARY=tests/test_build.py::test_cpp_errors_reach_python_as_exceptions
canary() { $PY -m pytest -q -p no:cacheprovider "$CANARY"; }

cpp_errors() {  # the canary failed: say where it dies and which build settings avoid it
  if command -v cuda-gdb >/dev/null; then
    echo "== backtrace (cuda-gdb)"
    timeout 120 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY -c \
      "import sys; sys.path.insert(0, 'tests'); import test_build; exec(test_build._CPP_ERRORS)"
  fi
  # Seen on an H100 (2026-11-22) and an H200 (2026-12-04) of one image: any TORCH_LIBRARY
  # op that throws segfaults there, a ten-line extension of no code of ours too, built
  # CPU-only or without -march=native alike; pybind11 functions throw fine. What is left to
  # try is the toolchain: other compilers there, and linking without the Python's LDSHARED
  # flags (-Bsymbolic-functions).
  local cxx name c adopted=""
  cxx=$(realpath "$(command -v "${CXX:-c++}")")
  local link="${CXX:-c++} -shared"
  local -a variants=("ldshared-plain|LDSHARED=$link|LDCXXSHARED=$link|SLIME_CUDA=1") parts
  for c in /usr/bin/g++ /usr/bin/g++-1[0-9] /usr/bin/clang++; do
    [ -x "$c" ] && [ "$(realpath "$c")" != "$cxx" ] && variants+=("cxx-${c##*/}|CXX=$c|SLIME_CUDA=1")
  done
  for v in "${variants[@]}"; do  # name|VAR=value|VAR=value...
    IFS='|' read -ra parts <<<"$v"
    name=${parts[0]}
    local dir=/tmp/slime_variant_$name
    rm -rf "$dir" && mkdir -p "$dir" && cp -r setup.py csrc slime_core tests "$dir"/
    rm -f "$dir"/slime_core/_C*.so
    echo "== variant $name (${parts[*]:1})"
    if (cd "$dir" && env "${parts[@]:1}" MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace \
          >build.log 2>&1); then
      if (cd "$dir" && PYTHONPATH="$dir" canary); then
        echo "variant $name: errors reach Python"
        if [ -z "$adopted" ]; then  # the rest of the check runs on a build that works
          adopted=$name; cp "$dir"/slime_core/_C*.so slime_core/
          echo "variant $name: its extension is used for the rest of this check"
        fi
      else
        echo "variant $name: FAILS too"
      fi
    else
      echo "variant $name: build failed"; tail -n 5 "$dir/build.log"
    fi
  done
  [ -n "$adopted" ]  # ok in the summary: a variant works and the rest of the check uses it
}

if [ $built -eq 0 ]; then
  {
    echo "== toolchain"; toolchain
  } >>"$setup_log" 2>&1
  if ! step "C++ errors reach Python" "$OUT_DIR/cpp_errors.log" canary; then
    step "C++ errors: backtrace and variants" "$OUT_DIR/cpp_errors.log" cpp_errors
    grep "^variant" "$OUT_DIR/cpp_errors.log"
  fi
  xdist=$($PY -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-$(nproc)}")
  step "test suite (CPU + CUDA)" "$OUT_DIR/tests.log" $PY -m pytest -q -rs $xdist tests
  step "benchmarks (cuda)" "$OUT_DIR/bench.log" $PY -m bench --device cuda --out "$OUT_DIR"
  # (One log for both: the device tool brings back 8 files at most.)
  # Last, and each under a time limit: a sanitizer slows torch's own start-up 10-100x, and a
  # slow one must not cost the measurements above (a timeout reads as rc 124 in the table).
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool" "$OUT_DIR/sanitizers.log" \
      timeout "${SANITIZER_TIMEOUT:-240}" \
      compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
      $PY scripts/sanitize_cases.py
  done
fi

{
  echo "# GPU check, $(date +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
  echo
  echo "| step | result | time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "total $((SECONDS - t0)) s"
  grep -E "passed|failed" "$OUT_DIR/tests.log" 2>/dev/null | tail -n 1
} | tee "$OUT_DIR/summary.md"
