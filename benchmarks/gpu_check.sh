#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh                    (on a machine with a CUDA GPU, from the repository root)
# bash benchmarks/gpu_check.sh --cpu-smoke        (anywhere: every part for seconds on the CPU; tests run this)
#
# The first-day GPU figures, in one go, printed to stdout:
#   1. stage-2 training throughput, fp32 against bf16 autocast, at width 768 (benchmarks/precision_check.py stage2)
#   2. stage-1 fine-tuning throughput of the bundled all-MiniLM-L6-v2, fp32 against bf16 (... minilm)
#   3. the demo's wall time with 0.25 GPU per trial (four trials share the GPU; stage-1 tasks take a whole one)
#   4. seed bundles on the GPU: wall per seed of k seeds as one bundle against k separate trainings
#      (benchmarks/seed_bundle.py --device cuda; a small model leaves most of the GPU idle)
# Paste the output into benchmarks/RESULTS.md with the date and the GPU's name (printed first).
# PYTHON (default .venv/bin/python) and OUT (default a fresh temporary directory) may be set in the environment.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t magtkd-gpu-check-XXXXXX)}
export PYTHONPATH=$PWD
MODE=gpu
if [[ ${1:-} == "--cpu-smoke" ]]; then
    MODE=cpu
fi

if [[ $MODE == gpu ]]; then
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA GPU visible to torch: nothing measured (run with --cpu-smoke to check the script itself)" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    DEVICE=cuda; QUICK=""; DEMO_OVERRIDES=(); DEMO_ARGS=(--gpus-per-trial 0.25)
    BUNDLE_ARGS=(--ks 1,5,8 --widths 64,768 --threads 1 --epochs 2 --repeats 3)
else
    DEVICE=cpu; QUICK="--quick"
    # No GPU: the demo is only planned, on logical GPUs (Ray schedules by the count; trials use the CPU).
    DEMO_OVERRIDES=(train.device=cpu); DEMO_ARGS=(--gpus-per-trial 0.25 --num-gpus 1 --dry-run)
    BUNDLE_ARGS=(--ks 2 --widths 64 --threads 1 --epochs 1 --dialogues-64 8)
fi
date -u +"%Y-%m-%d %H:%M UTC, $(hostname), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

echo "== 1. stage-2 training throughput, fp32 vs bf16, width 768"
"$PYTHON" benchmarks/precision_check.py stage2 --device "$DEVICE" --width 768 $QUICK

echo "== 2. stage-1 fine-tuning throughput of the bundled MiniLM, fp32 vs bf16"
"$PYTHON" benchmarks/precision_check.py minilm --device "$DEVICE" $QUICK 2>&1 | grep -v -e "Loading weights" -e "embeddings will be"

echo "== 3. the demo at 0.25 GPU per trial (resources.stage1 stays the demo's; output $OUT)"
start=$(date +%s)
"$PYTHON" run_sweep.py ablate ablations/demo.yaml "${DEMO_OVERRIDES[@]}" --output "$OUT" --max-concurrent 0 \
    "${DEMO_ARGS[@]}" | tail -n 25
echo "demo wall: $(( $(date +%s) - start )) s"

echo "== 4. seed bundles on $DEVICE: k seeds as one bundle against k separate trainings"
"$PYTHON" benchmarks/seed_bundle.py --device "$DEVICE" --no-probe "${BUNDLE_ARGS[@]}"
