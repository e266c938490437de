#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU (the CI machines have none):
#   1. build the CUDA kernels against that machine's torch (stable-ABI floor lowered to
#      its version if it is older than 2.13),
#   2. run every CUDA test of tests/ (native vs the pure-PyTorch reference),
#   3. run the CUDA benchmarks (native vs reference in the same run) and print the table,
#   4. run each CUDA kernel once under compute-sanitizer (memcheck), where it exists.
# Logs and the benchmark JSON go to $OUT (default ./gpu-out).
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ROOT=$PWD

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# Optional wheels carried along (captum for the explain benchmark).
if ls .whl/*.whl >/dev/null 2>&1; then $PY -m pip install -q --no-index --no-deps .whl/*.whl; fi

TV=$($PY -c "import torch; v = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); a, b = min(v, (2, 13)); print('0x%02x%02x000000000000' % (a, b))")
export CLEAR_NATIVE_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
t0=$SECONDS
if ! $PY -m pip install --no-build-isolation --no-deps -v . -Cbuild-dir=build/gpu \
     -Ccmake.define.CLEAR_NATIVE_TORCH_TARGET_VERSION="$TV" >"$OUT/build.log" 2>&1; then
  tail -80 "$OUT/build.log"
  exit 1
fi
echo "build: $((SECONDS - t0)) s (TORCH_TARGET_VERSION=$TV, arch $TORCH_CUDA_ARCH_LIST)"

cd "$ROOT/tests"
$PY -c "import clear_native; print(clear_native.build_info())" | tee -a "$OUT/gpu.txt"
t0=$SECONDS
timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -p no:cacheprovider -k cuda --maxfail=30 -rfE \
  >"$OUT/tests.log" 2>&1
echo "tests rc=$? in $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40

cd "$ROOT/benchmarks"
t0=$SECONDS
timeout ${BENCH_TIMEOUT:-240} $PY -m pytest -q -p no:cacheprovider -k cuda --benchmark-only \
  --benchmark-json="$OUT/bench.json" >"$OUT/bench.log" 2>&1
echo "benchmarks rc=$? in $((SECONDS - t0)) s"
tail -5 "$OUT/bench.log"
[ -f "$OUT/bench.json" ] && $PY -c "import json, report; print(report.format_table(json.load(open('$OUT/bench.json'))))" | tee "$OUT/bench.md"

if command -v compute-sanitizer >/dev/null; then
  cd "$ROOT/tests"
  t0=$SECONDS
  timeout ${SANITIZER_TIMEOUT:-150} compute-sanitizer --tool memcheck --leak-check no \
    $PY "$ROOT/benchmarks/gpu_smoke.py" >"$OUT/sanitizer.log" 2>&1
  echo "compute-sanitizer rc=$? in $((SECONDS - t0)) s"
  tail -8 "$OUT/sanitizer.log"
fi
