#!/usr/bin/env bash
# The full CIFAR-10 studies on one GPU: the study's setup (4 arms x 3 seeds), the cosine
# ablation and the leaderboard of every installed variant, 10 epochs each on the JPEG copy.
# Each study resumes where it stopped (finished runs are kept), so the script can be run in
# several device sessions; a time budget (BUDGET seconds, default 540) ends it cleanly.
# The reports land in $OUT (default benchmarks/gpu-results/) as <study>.md.
#
#   bash benchmarks/gpu_studies.sh                 # all three, in this order
#   STUDIES="cifar10-study" bash benchmarks/gpu_studies.sh
#   STUDIES= RUNS="cifar10-strong" bash benchmarks/gpu_studies.sh   # only the strong from-scratch recipe
#
# After the studies, the single-run recipes in RUNS train on the same JPEG copy, each resumed where the
# last session stopped: recipes/cifar10-strong.yaml (100 epochs: several sessions) measures what the
# strong recipe reaches against its published anchor. cifar100-strong needs CIFAR-100 in data/ and the
# finetune-* recipes timm's weights from the Hugging Face Hub: add them to RUNS where those are at hand.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-results}
BUDGET=${BUDGET:-540}
STUDIES=${STUDIES-"cifar10-study cifar10-cosine-ablation leaderboard"}
RUNS=${RUNS-"cifar10-strong"}
TAR=${CIFAR10_TAR:-}
[ -z "$TAR" ] && { [ -f data/cifar10-jpg.tar.gz ] && TAR=data/cifar10-jpg.tar.gz || TAR=../shared/data/cifar10-jpg.tar.gz; }
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

python -c "import attnzoo" 2>/dev/null || pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
if [ ! -d data/cifar10-jpg/train ]; then
    mkdir -p data/cifar10-jpg && tar xzf "$TAR" -C data/cifar10-jpg
fi

for study in $STUDIES; do
    left=$((BUDGET - SECONDS))
    [ "$left" -le 30 ] && { echo "== $study: skipped, the time budget is spent"; continue; }
    echo "== $study ($(date +%T), ${left}s left)"
    # SIGTERM stops a run at its current step with a checkpoint (exit 75); the next call resumes it.
    timeout --signal=TERM --kill-after=30 "$left" attnzoo study "recipes/$study.yaml" \
        data.dataset=imagefolder data.root=data/cifar10-jpg robustness.corruptions=true
    echo "== $study: exit $?"
    [ -f "runs/$study/results.md" ] && cp "runs/$study/results.md" "$OUT/$study.md"
done

for run in $RUNS; do
    left=$((BUDGET - SECONDS))
    [ "$left" -le 30 ] && { echo "== $run: skipped, the time budget is spent"; continue; }
    echo "== $run ($(date +%T), ${left}s left)"
    data=()  # the CIFAR-10 recipes read the JPEG copy; the others their own data
    case "$run" in *cifar10*) data=(data.dataset=imagefolder data.root=data/cifar10-jpg) ;; esac
    timeout --signal=TERM --kill-after=30 "$left" attnzoo train "recipes/$run.yaml" "${data[@]}" \
        "output_dir=runs/$run" --auto-resume
    echo "== $run: exit $?"
    [ -f "runs/$run/test_metrics.json" ] && cp "runs/$run/test_metrics.json" "$OUT/$run.json"
    [ -f "runs/$run/metrics.jsonl" ] && cp "runs/$run/metrics.jsonl" "$OUT/$run.metrics.jsonl"
done
