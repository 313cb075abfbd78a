#!/usr/bin/env bash
# Every GPU measurement in one run: the benchmark (eager and compiled) and the 10-epoch
# speed recipe for each variant on the CIFAR-10 JPEG copy. Results go to $OUT (default
# benchmarks/gpu-results/); copy the printed tables into benchmarks/README.md with the device.
#
#   bash benchmarks/gpu_check.sh                           # on the GPU machine
#   EXTRA="model.depth=1 bench.steps=2 train.epochs=1 bench.image_sizes=[32]" bash benchmarks/gpu_check.sh   # CPU dry run
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-results}
TAR=${CIFAR10_TAR:-../shared/data/cifar10-jpg.tar.gz}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

python -c "import attnzoo" 2>/dev/null || pip install --no-deps --no-build-isolation -e . >/dev/null
if [ ! -d data/cifar10-jpg/train ]; then
    mkdir -p data/cifar10-jpg && tar xzf "$TAR" -C data/cifar10-jpg
fi
python - <<'PY' | tee "$OUT/device.txt"
import torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU", "| torch", torch.__version__)
PY

# cosine's Triton kernel vs its PyTorch path vs softmax, forward + backward (tiny on a CPU dry run)
KERNEL_ARGS=$(python -c "import torch; print('' if torch.cuda.is_available() else '--batch 2 --heads 2 --steps 1 --tokens 65 --head-dims 16')")
# shellcheck disable=SC2086
python benchmarks/cosine_kernel.py $KERNEL_ARGS | tee "$OUT/cosine-kernel.md"

DATA="data.dataset=imagefolder data.root=data/cifar10-jpg"
# shellcheck disable=SC2086
attnzoo bench recipes/bench.yaml $DATA $EXTRA | tee "$OUT/bench-eager.md"
# shellcheck disable=SC2086
attnzoo bench recipes/bench.yaml train.compile=true bench.compare_naive=false bench.data_pipeline=false $EXTRA \
    | tee "$OUT/bench-compiled.md"
for variant in softmax cosine standardized; do
    rm -rf "$OUT/speed-$variant"
    # shellcheck disable=SC2086
    attnzoo train recipes/cifar10-speed.yaml attention.name=$variant output_dir="$OUT/speed-$variant" $EXTRA \
        | grep -E "^(epoch|test)" | tee "$OUT/speed-$variant.txt"
    python -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'{sys.argv[2]}: test top-1 {m[\"top1\"]:.4f}, training {m[\"train_seconds\"]:.1f} s')" \
        "$OUT/speed-$variant/test_metrics.json" "$variant" | tee -a "$OUT/summary.txt"
done
