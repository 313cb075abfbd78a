#!/usr/bin/env bash
# Every GPU measurement in one run, most important first, each stage under its own time limit
# so a slow stage cannot cost the others; results accumulate in $OUT (default
# benchmarks/gpu-results/) and benchmarks/gpu_summary.py turns them into the tables of
# benchmarks/README.md with a verdict per target.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine (about 8 minutes on an H200)
#   DRY=1 bash benchmarks/gpu_check.sh              # CPU dry run: tiny shapes, 1 epoch, same code paths
#
# The CIFAR-10 JPEG copy is read from $CIFAR10_TAR (default ../shared/data/cifar10-jpg.tar.gz,
# or data/cifar10-jpg.tar.gz inside the checkout when that exists).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-results}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
TAR=${CIFAR10_TAR:-}
[ -z "$TAR" ] && { [ -f data/cifar10-jpg.tar.gz ] && TAR=data/cifar10-jpg.tar.gz || TAR=../shared/data/cifar10-jpg.tar.gz; }
export PYTHONUNBUFFERED=1

python -c "import attnzoo" 2>/dev/null || pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1
if [ ! -d data/cifar10-jpg/train ]; then
    mkdir -p data/cifar10-jpg && tar xzf "$TAR" -C data/cifar10-jpg
fi
DATA="data.dataset=imagefolder data.root=data/cifar10-jpg"

# Shapes: the real ones, or tiny ones for a CPU dry run of the same code paths.
if [ -n "${DRY:-}" ]; then
    BENCH_SIZE="model.depth=1 model.dim=32 model.heads=2 bench.batch_size=8 bench.steps=2 bench.rounds=1 bench.warmup_steps=1"
    TRAIN_SIZE="model.depth=1 model.dim=32 model.heads=2 train.epochs=1 data.max_train_samples=512 data.max_eval_samples=256"
    LIMIT=${LIMIT:-600}
    BUDGET=${BUDGET:-3600}
else
    BENCH_SIZE=""
    TRAIN_SIZE=""
    LIMIT=${LIMIT:-150}
fi

BUDGET=${BUDGET:-450}  # seconds for all stages together: the whole check stays under 8 minutes
stage() {  # stage NAME SECONDS COMMAND...: run under a time limit, log, never stop the script
    local name=$1 seconds=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -le 10 ]; then
        echo "== $name: skipped, the time budget (${BUDGET}s) is spent" | tee -a "$LOG"
        return
    fi
    [ "$seconds" -gt "$left" ] && seconds=$left
    echo "== $name ($(date +%T), limit ${seconds}s): $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$seconds" "$@" 2>>"$LOG"
    echo "== $name: exit $? after $((SECONDS - start))s" | tee -a "$LOG"
}

python - <<'PY' | tee "$OUT/device.txt"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
print(f"{name} | torch {torch.__version__}")
PY

# 1. Eager benchmark: every variant, their naive explicit paths, timm, the data pipeline; 65 and 257 tokens.
stage bench-eager "$LIMIT" sh -c "attnzoo bench recipes/bench.yaml $DATA $BENCH_SIZE --json > $OUT/bench-eager.json"
# 2. The speed recipe, one run per built-in variant (CIFAR-10 copy, 10 epochs; a compiler failure
#    makes the trainer itself continue eagerly, and the run records compile: none).
for variant in softmax cosine standardized; do
    rm -rf "runs/gpu-speed-$variant"
    stage "speed-$variant" "$LIMIT" attnzoo train recipes/cifar10-speed.yaml attention.name=$variant \
        output_dir="runs/gpu-speed-$variant" $TRAIN_SIZE
done
# 3. The study's model (width 128, depth 6, batch 128): bench and a real epoch, eager and with CUDA graphs.
STUDY="model.dim=128 model.depth=6 model.heads=4"
for mode in none cudagraphs; do
    stage "study-bench-$mode" "$LIMIT" sh -c "attnzoo bench recipes/bench.yaml $STUDY bench.batch_size=128 \
        bench.image_sizes=[32] bench.variants=[softmax] bench.compare_naive=false bench.compare_timm=false \
        bench.data_pipeline=false train.compile=$mode $BENCH_SIZE --json > $OUT/study-bench-$mode.json"
    rm -rf "runs/gpu-study-$mode"
    stage "study-train-$mode" "$LIMIT" attnzoo train recipes/cifar100-seed.yaml $DATA $STUDY train.epochs=3 \
        data.download=false train.mixed_precision=bf16 train.compile=$mode output_dir="runs/gpu-study-$mode" $TRAIN_SIZE
done
# 4. Kernels per attention call (counted, not timed) and the cosine kernel against its PyTorch path.
stage launches "$LIMIT" sh -c "python benchmarks/kernel_launches.py >> $OUT/summary-extra.md"
KERNEL_ARGS=""  # cosine's Triton kernel vs its PyTorch path vs softmax; tiny on a CPU dry run
[ -n "${DRY:-}" ] && KERNEL_ARGS="--batch 2 --heads 2 --steps 1 --tokens 65 --head-dims 16"
stage cosine-kernel "$LIMIT" sh -c "python benchmarks/cosine_kernel.py $KERNEL_ARGS >> $OUT/summary-extra.md"
# 5. Compiled benchmarks (no naive rows, no data row): CUDA graphs (the speed recipe's mode), then
#    plain inductor kernels if time is left.
for mode in cudagraphs default; do
    stage "bench-$mode" "$((LIMIT * 2))" sh -c "attnzoo bench recipes/bench.yaml train.compile=$mode \
        bench.compare_naive=false bench.data_pipeline=false $BENCH_SIZE --json > $OUT/bench-$mode.json"
done

python benchmarks/gpu_summary.py "$OUT" runs | tee "$OUT/summary.md"
# At most 8 files come back from a device machine: the extras join the summary.
[ -f "$OUT/summary-extra.md" ] && { cat "$OUT/summary-extra.md" >> "$OUT/summary.md"; rm "$OUT/summary-extra.md"; }
