#!/usr/bin/env bash
# The GPU check (issue 21), at most 8 minutes on one GPU: the gpu-marked tests (CPU against CUDA,
# exact resume, bf16 runs, one-GPU NCCL), then step time and peak memory of plain LoRA against
# SGG (fd, exact, lazy:4), OFA and spectral on a ~1B Llama-style model with random weights
# (benchmarks/gpu_cost.py: bf16, batch 8 x 256 tokens), printing ratios and memory.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from anywhere in the repository
#   bash benchmarks/gpu_check.sh --tiny     # dry run on any machine: the gpu tests against the
#                                           # CPU, the benchmark on a tiny config (about a minute)
#
# Setup: gradguide is installed with `pip install --no-deps --no-build-isolation -e .` (the GPU
# machine has torch, transformers, peft and accelerate, and reaches no package registry; where the
# install fails, src/ goes on PYTHONPATH). GRADGUIDE_NO_INSTALL=1 skips the install (a shared venv).
# pytest is used when importable, else installed from wheels in $GRADGUIDE_WHEELS if set (make them
# elsewhere with `pip download -d DIR pytest` and carry DIR along); without it the tests are
# reported as not run. $PYTHON picks the interpreter (default python3). Logs and the benchmark's
# JSON go to $OUT (default ./gpu-check-out).
set -u
cd "$(dirname "$0")/.."
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT_DIR"
export CUBLAS_WORKSPACE_CONFIG=:4096:8 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
STATUS=0
START=$(date +%s)
say() { echo "== $* ($(( $(date +%s) - START )) s)"; }

say "environment"
$PY - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers", "yaml", "numpy",
             "tqdm", "pytest", "scipy", "matplotlib"):
    try:
        print(f"  {name}", getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
        print(f"  {name} MISSING")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
else:
    print("  no CUDA device visible")
EOF

if [ "${GRADGUIDE_NO_INSTALL:-0}" = 1 ]; then
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
elif $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT_DIR/install.log" 2>&1; then
    say "installed gradguide (editable, no dependencies)"
else
    say "pip install failed (see install.log): using src/ on PYTHONPATH"
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi

if ! $PY -c "import pytest" 2>/dev/null && [ -n "${GRADGUIDE_WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --find-links "$GRADGUIDE_WHEELS" pytest || true
fi
if $PY -c "import pytest" 2>/dev/null; then
    if [ $TINY = 1 ]; then
        say "gpu tests, dry run against the CPU"
        export GRADGUIDE_GPU_TEST_DEVICE=cpu
        LIMIT=400
    else
        say "gpu tests"
        LIMIT=240
    fi
    # the warning lines are hidden on screen (kept in the log), not the summary 'N passed, M warnings'
    timeout $LIMIT $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 \
        | tee "$OUT_DIR/gpu_tests.log" | grep -v -E "Warning|warnings\.warn\(" | tail -25
    RC=${PIPESTATUS[0]}
    [ "$RC" = 124 ] && echo "the gpu tests ran past ${LIMIT} s and were stopped"
    [ "$RC" != 0 ] && STATUS=1
    unset GRADGUIDE_GPU_TEST_DEVICE
else
    say "pytest is not installed: the gpu tests did NOT run (set GRADGUIDE_WHEELS)"
    STATUS=1
fi

if [ $TINY = 1 ]; then
    say "cost benchmark, tiny config"
    ARGS=(--tiny)
    LIMIT=300
else
    say "cost benchmark, llama-1.1B random bf16, batch 8 x 256"
    ARGS=()
    LIMIT=$(( 470 - ($(date +%s) - START) ))  # what is left of 8 minutes, minus a margin
    [ $LIMIT -lt 60 ] && LIMIT=60
fi
timeout $LIMIT $PY benchmarks/gpu_cost.py "${ARGS[@]}" --json "$OUT_DIR/gpu_cost.json" 2>&1 \
    | tee "$OUT_DIR/gpu_cost.log" | grep -v -i "warn"
RC=${PIPESTATUS[0]}
[ "$RC" = 124 ] && echo "the benchmark ran past ${LIMIT} s and was stopped (arms done so far above)"
[ "$RC" != 0 ] && STATUS=1

say "done, status $STATUS (logs in $OUT_DIR)"
exit $STATUS
