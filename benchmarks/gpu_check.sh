#!/usr/bin/env bash
# The whole GPU check of dslc's CUDA path, as one script for a machine with an NVIDIA GPU.
#
#   OUT=gpu-results bash benchmarks/gpu_check.sh        # everything it learns lands in $OUT
#
# 1. installs dslc with the `gpu` extra (or, on an image that already holds CuPy and has no
#    network, dslc alone over the CuPy it finds; wheels in .whl/ are installed first);
# 2. runs the `gpu` tests (`pytest -m gpu`, a per-test timeout), alongside
# 3. digits_mlp trained from the CLI on the CPU and on the GPU, the GPU's checkpoint
#    evaluated on the CPU, and the two test accuracies compared (within one point);
# 4. then, alone on the GPU, `python -m benchmarks.train_step --device gpu --json`:
#    dslc's CUDA step against PyTorch CUDA eager on the same GPU.
# Each stage has its own time limit (seconds, overridable), so a hang in one still
# leaves the others' results. Exit status: 0 when every stage passed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=passive
PY=${PYTHON:-python3}
TEST_S=${TEST_S:-200} TRAIN_S=${TRAIN_S:-200} BENCH_S=${BENCH_S:-120}
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY --version
  $PY -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'numpy', numpy.__version__, 'numba', numba.__version__)"
} >"$OUT/env.txt" 2>&1
log "env: $(tr '\n' ' ' <"$OUT/env.txt")"

# --- 1. install ---------------------------------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then $PY -m pip install -q --no-index --no-deps .whl/*.whl; fi
if $PY -c "import cupy" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || $PY -m pip install -q -e .
else
    $PY -m pip install -q -e ".[gpu,test]"
fi
$PY -c "import dslc, lark, cupy" || { log "install failed"; exit 1; }
log "installed dslc $($PY -c 'import dslc; print(dslc.__version__)')"

# --- 2 and 3 side by side -------------------------------------------------------------------
timeout "$TEST_S" $PY -m pytest -m gpu -q -p no:cacheprovider -n 6 --timeout 150 -o addopts="-ra" \
    tests/ >"$OUT/pytest.txt" 2>&1 &
tests=$!

train_and_compare() {
    local runs=/tmp/gpu_check_runs
    rm -rf $runs
    dslc train models/digits_mlp.net --device gpu --quiet --out $runs/gpu || return 1
    dslc train models/digits_mlp.net --device cpu --quiet --out $runs/cpu || return 1
    dslc eval models/digits_mlp.net --checkpoint $runs/gpu/best --device cpu --json >$runs/gpu_on_cpu.json || return 1
    dslc eval models/digits_mlp.net --checkpoint $runs/cpu/best --device cpu --json >$runs/cpu_on_cpu.json || return 1
    $PY - $runs <<'EOF'
import json, sys
runs = sys.argv[1]
gpu = json.load(open(f"{runs}/gpu_on_cpu.json"))["accuracy"]
cpu = json.load(open(f"{runs}/cpu_on_cpu.json"))["accuracy"]
print(f"digits_mlp test accuracy: GPU-trained {gpu:.4f} (evaluated on the CPU), CPU-trained {cpu:.4f}, "
      f"difference {abs(gpu - cpu) * 100:.2f} points")
sys.exit(0 if abs(gpu - cpu) <= 0.01 else 1)
EOF
}
timeout "$TRAIN_S" bash -c "$(declare -f train_and_compare); PY=$PY; train_and_compare" >"$OUT/train.txt" 2>&1
train_rc=$?
wait $tests
test_rc=$?
log "pytest -m gpu: exit $test_rc; $(tail -n 1 "$OUT/pytest.txt")"
log "digits_mlp cpu/gpu: exit $train_rc; $(grep 'test accuracy' "$OUT/train.txt")"

# --- 4. the benchmark, alone on the GPU ------------------------------------------------------
timeout "$BENCH_S" $PY -m benchmarks.train_step --device gpu --json >"$OUT/bench.json" 2>"$OUT/bench.err"
bench_rc=$?
log "benchmark: exit $bench_rc"
cat "$OUT/bench.json" >>"$OUT/summary.txt"
[ $test_rc -eq 0 ] && [ $train_rc -eq 0 ] && [ $bench_rc -eq 0 ]
