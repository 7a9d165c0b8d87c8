#!/usr/bin/env bash
# One prepared GPU check (< 8 min on an H100): environment, unit tests on CUDA, training and inference
# benchmarks vs the torchvision twin, SVD head timing. Each section has its own timeout, so one failure
# does not stop the rest. Results go to $OUT/gpu_check (or ./gpu_check_out) and one summary is printed.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3.12 bash benchmarks/gpu_check.sh to choose
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
RES="${OUT:-$REPO/gpu_check_out}/gpu_check"
mkdir -p "$RES"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
SUMMARY="$RES/summary.md"
: > "$SUMMARY"
T0=$(date +%s)

section() {  # section NAME TIMEOUT_S COMMAND...: run with a timeout, log to $RES/NAME.log, note the status
    local name=$1 limit=$2; shift 2
    local t=$(date +%s)
    echo "=== $name (limit ${limit}s) ===" >&2
    timeout --kill-after=10 "$limit" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    local status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT after ${limit}s"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED (exit $rc)"
    echo "- $name: $status in $(( $(date +%s) - t ))s (log: $name.log)" | tee -a "$SUMMARY" >&2
    tail -n 3 "$RES/$name.log" >&2
    return 0
}

# ---------------------------------------------------------------------------------------- environment
if ! "$PY" -c "import torch, torchvision" 2>"$RES/env.log"; then
    echo "gpu_check: '$PY' cannot import torch and torchvision (see $RES/env.log); no internet here, so" \
         "install them first or set PYTHON=<an interpreter that has them>" | tee -a "$SUMMARY" >&2
    exit 2
fi
"$PY" - <<'PYEOF' | tee -a "$SUMMARY"
import importlib, platform, torch, torchvision
missing = []
for m in ("cv2", "albumentations", "pycocotools", "pytest", "numpy", "PIL"):
    try:
        importlib.import_module(m)
    except Exception:
        missing.append(m)
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA"
print(f"- Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {torch.version.cuda}, GPU {gpu}")
print(f"- missing optional modules: {', '.join(missing) or 'none'}")
PYEOF
# Editable install without dependencies or network; PYTHONPATH above already makes `import vggdet` work.
if "$PY" -m pip --version > /dev/null 2>&1; then
    timeout 60 "$PY" -m pip install -e . --no-deps --no-build-isolation -q > "$RES/pip.log" 2>&1 \
        || echo "- pip install -e . failed (using PYTHONPATH instead; see pip.log)" | tee -a "$SUMMARY" >&2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch.cuda.is_available() is False" | tee -a "$SUMMARY" >&2
    exit 3
fi

# ------------------------------------------------------------------------------------------- sections
# Unit tests: test_winograd and test_runtime on CUDA (equality, autocast, forward/backward); test_model on CPU.
if "$PY" -c "import pytest" 2>/dev/null; then
    section tests 110 env VGGDET_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_winograd.py tests/test_runtime.py tests/test_model.py
else
    echo "- tests: SKIPPED (pytest is not installed)" | tee -a "$SUMMARY" >&2
fi
TRAIN="--device cuda --size 600 1000 --batch 1 4 --iters 60 --warmup 5 --threads 8"
section train_fp32 100 "$PY" benchmarks/bench_train.py $TRAIN --json "$RES/train_fp32.json"
section train_amp 90 "$PY" benchmarks/bench_train.py $TRAIN --amp --json "$RES/train_amp.json"
INFER="--device cuda --batch 1 8 --runs 20 --warmup 3 --threads 8 --variants vggdet,torchvision"
section infer_fp32 60 "$PY" benchmarks/bench_infer.py $INFER --json "$RES/infer_fp32.json"
section infer_amp 60 "$PY" benchmarks/bench_infer.py $INFER --amp --json "$RES/infer_amp.json"
section svd 35 "$PY" benchmarks/bench_svd.py random --device cuda --images 8 --runs 20

# ------------------------------------------------------------------------------------------- summary
{
    echo
    echo "## vggdet GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T0 ))s)"
    for name in tests train_fp32 train_amp infer_fp32 infer_amp svd; do
        [ -f "$RES/$name.log" ] || continue
        echo
        echo "### $name"
        if [ "$name" = tests ]; then
            tail -n 5 "$RES/$name.log"
        else
            grep -E '^(\||Machine:|Confident)' "$RES/$name.log" || { echo "(no table; last lines:)"; tail -n 5 "$RES/$name.log"; }
        fi
    done
} >> "$SUMMARY"
cat "$SUMMARY"
