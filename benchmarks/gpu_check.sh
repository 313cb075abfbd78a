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
    SPEED_LIMIT=${SPEED_LIMIT:-600}
    BUDGET=${BUDGET:-3600}
else
    BENCH_SIZE=""
    TRAIN_SIZE=""
    # Start-up, compile (cached after the first variant), 10 epochs of ~0.7 s and the test: a run
    # still going at 70 s misses the 25 s target anyway, and is stopped so its test still runs.
    SPEED_LIMIT=${SPEED_LIMIT:-70}
fi

BUDGET=${BUDGET:-450}  # seconds for all stages together: the whole check stays under 8 minutes
STAGES="$OUT/stages.tsv"  # one line per stage: name, exit status (or "skipped"), seconds, limit
: > "$STAGES"
stage() {  # stage NAME SECONDS COMMAND...: run under a time limit, log, never stop the script
    local name=$1 seconds=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -le 10 ]; then
        echo "== $name: skipped, the time budget (${BUDGET}s) is spent" | tee -a "$LOG"
        printf '%s\tskipped\t0\t0\n' "$name" >> "$STAGES"
        return 1
    fi
    [ -n "${DRY:-}" ] && seconds=${DRY_LIMIT:-600}  # a CPU is slower than the limits are set for
    [ "$seconds" -gt "$left" ] && seconds=$left
    echo "== $name ($(date +%T), limit ${seconds}s): $*" | tee -a "$LOG"
    local start=$SECONDS rc
    timeout --signal=TERM --kill-after=10 "$seconds" "$@" >>"${STAGE_STDOUT:-/dev/stdout}" 2>>"$LOG"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$seconds" >> "$STAGES"
    return $rc
}
bench() {  # bench NAME SECONDS OVERRIDES...: attnzoo bench, each row on disk as soon as it is measured
    local name=$1 seconds=$2
    shift 2
    rm -f "$OUT/$name.jsonl"
    # the rows are in the file; the final JSON document would only repeat them
    STAGE_STDOUT=/dev/null stage "$name" "$seconds" attnzoo bench recipes/bench.yaml "$@" $BENCH_SIZE --json \
        --out "$OUT/$name.jsonl"
}
speed() {  # speed VARIANT: the speed recipe under a time limit that leaves its test evaluation
    local variant=$1 run="runs/gpu-speed-$1"
    rm -rf "$run" "$OUT/speed-$variant-stopped.json"
    stage "speed-$variant" "$SPEED_LIMIT" attnzoo train recipes/cifar10-speed.yaml attention.name=$variant \
        output_dir="$run" $TRAIN_SIZE
    # Stopped by its limit (SIGTERM: checkpoint saved, exit 75): test the checkpoint's weights.
    # A dry run's tiny runs finish: it tests their last checkpoint all the same, to cover the stage.
    if [ ! -f "$run/test_metrics.json" ] || [ -n "${DRY:-}" ]; then
        stage "speed-$variant-eval" 40 python benchmarks/eval_stopped.py "$run" "$OUT/speed-$variant-stopped.json"
    fi
}

python - <<'PY' | tee "$OUT/device.txt"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
print(f"{name} | torch {torch.__version__}")
PY

# Every Done-means target has its stage in the first six minutes (limits: about 20 s of start-up,
# then 60 + 70 + 40 + 75 + 75 + 60 = 380 s at most, and less when a stage ends early):
#   bench-eager            standardized / cosine / timm / peak memory, eager, 65 and 257 tokens
#   speed-softmax          69 % in <= 25 s of steady training (compile apart); epoch vs bench
#   bench-cudagraphs-65    the compiled ratios at 65 tokens and the bench side of "epoch vs bench"
#                          (the speed recipe trains with CUDA graphs; the speed run fills the cache)
#   bench-cudagraphs-257   the compiled ratios at 257 tokens
#   study-train-cudagraphs the study model's training speed vs 7.7k img/s
# The compiled bench is split per size so a slow compile costs one size only, and each bench
# writes its rows as it measures them (--out), so a stage cut by its limit keeps its finished sizes.
COMPILED="bench.compare_naive=false bench.compare_timm=false bench.data_pipeline=false"
STUDY="model.dim=128 model.depth=6 model.heads=4"
bench bench-eager 60 $DATA
speed softmax
bench bench-cudagraphs-65 75 train.compile=cudagraphs bench.image_sizes=[32] $COMPILED
bench bench-cudagraphs-257 75 train.compile=cudagraphs bench.image_sizes=[64] $COMPILED
study_train() {  # study_train MODE
    rm -rf "runs/gpu-study-$1"
    stage "study-train-$1" 60 attnzoo train recipes/cifar100-seed.yaml $DATA $STUDY train.epochs=3 \
        data.download=false train.mixed_precision=bf16 train.compile=$1 output_dir="runs/gpu-study-$1" $TRAIN_SIZE
}
study_train cudagraphs

# What is left of the budget: the other speed runs, the study model's bench and eager epoch,
# kernel counts, cosine's kernel alone and plain inductor kernels.
speed cosine
speed standardized
for mode in cudagraphs none; do
    bench "study-bench-$mode" 45 $STUDY bench.batch_size=128 bench.image_sizes=[32] bench.variants=[softmax] \
        train.compile=$mode $COMPILED
done
study_train none
stage launches 30 sh -c "python benchmarks/kernel_launches.py >> $OUT/summary-extra.md"
KERNEL_ARGS=""  # cosine's Triton kernel vs its PyTorch path vs softmax; tiny on a CPU dry run
[ -n "${DRY:-}" ] && KERNEL_ARGS="--batch 2 --heads 2 --steps 1 --tokens 65 --head-dims 16"
stage cosine-kernel 40 sh -c "python benchmarks/cosine_kernel.py $KERNEL_ARGS >> $OUT/summary-extra.md"
bench bench-default-65 75 train.compile=default bench.image_sizes=[32] $COMPILED
bench bench-default-257 75 train.compile=default bench.image_sizes=[64] $COMPILED

python benchmarks/gpu_summary.py "$OUT" runs | tee "$OUT/summary.md"
# At most 8 files come back from a device machine: the extras join the summary.
[ -f "$OUT/summary-extra.md" ] && { cat "$OUT/summary-extra.md" >> "$OUT/summary.md"; rm "$OUT/summary-extra.md"; }
