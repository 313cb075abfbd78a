"""Tables and a verdict per GPU target from what benchmarks/gpu_check.sh left behind.

    python benchmarks/gpu_summary.py OUT_DIR RUNS_DIR

Reads OUT_DIR/bench-*.json, OUT_DIR/study-bench-*.json (``attnzoo bench --json``) and the run
folders RUNS_DIR/gpu-speed-<variant> and RUNS_DIR/gpu-study-<mode>; prints markdown. A figure
that is missing (a stage that timed out or failed) is shown as "-" and its target as unmeasured.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

BASELINE_STUDY_IMAGES_PER_SEC = 7_700  # the study's model on an H200 before this work
BENCH_OF_MODE = {"none": "bench-eager", "default": "bench-default", "cudagraphs": "bench-cudagraphs"}  # train.compile


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_rows(out: Path, name: str) -> list[dict]:
    doc = load_json(out / f"{name}.json")
    return doc["results"] if doc else []


def find(rows, impl, variant, tokens):
    return next((r for r in rows if (r["impl"], r["variant"], r["tokens"]) == (impl, variant, tokens)), None)


def epochs(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def steady_images_per_sec(run: Path) -> float | None:
    """Median over epochs of the images/s without the warm-up steps."""
    values = [r.get("steady_images_per_sec") for r in epochs(run)]
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def fmt(x, spec=".2f", unit="x"):
    return "-" if x is None else format(x, spec) + unit


def verdict(value, ok) -> str:
    return "unmeasured" if value is None else ("met" if ok(value) else "NOT met")


class Targets:
    def __init__(self):
        self.lines = ["| target | measured | verdict |", "|---|---|---|"]

    def add(self, what, value, ok, shown=None):
        self.lines.append(f"| {what} | {shown if shown is not None else fmt(value)} | {verdict(value, ok)} |")


def bench_section(out: Path, targets: Targets) -> list[str]:
    lines = []
    for name, label in (("bench-eager", "eager"), ("bench-default", "compiled"), ("bench-cudagraphs", "CUDA graphs")):
        rows = bench_rows(out, name)
        lines += [f"### `attnzoo bench`, {label}", ""]
        if not rows:
            lines += ["(not measured)", ""]
            continue
        lines += ["| impl | variant | tokens | img/s | vs softmax | vs timm | vs naive | peak MiB | compile s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['impl']} | {r['variant']} | {r['tokens']} | {r['images_per_sec']:,.0f} | "
                         f"{fmt(r.get('vs_softmax'))} | {fmt(r.get('vs_timm'))} | {fmt(r.get('vs_naive'))} | "
                         f"{fmt(r.get('peak_memory_mib'), '.0f', '')} | {fmt(r.get('compile_seconds'), '.1f', '')} |")
        lines.append("")
        for tokens in (65, 257):
            std, cos = find(rows, "attnzoo", "standardized", tokens), find(rows, "attnzoo", "cosine", tokens)
            soft = find(rows, "attnzoo", "softmax", tokens)
            targets.add(f"{label}: standardized >= 0.9x softmax at {tokens} tokens", std and std["vs_softmax"],
                        lambda v: v >= 0.9)
            need = 0.9 if tokens == 65 else 1.3
            targets.add(f"{label}: cosine >= {need}x softmax at {tokens} tokens", cos and cos["vs_softmax"],
                        lambda v, need=need: v >= need)
            targets.add(f"{label}: attnzoo softmax >= 1.0x timm at {tokens} tokens", soft and soft.get("vs_timm"),
                        lambda v: v >= 1.0)
            if tokens == 257 and cos and soft and cos["peak_memory_mib"] and soft["peak_memory_mib"]:
                ratio = cos["peak_memory_mib"] / soft["peak_memory_mib"]
                targets.add(f"{label}: cosine peak memory < softmax's at 257 tokens", ratio, lambda v: v < 1.0)
    return lines


def speed_section(runs: Path, out: Path, targets: Targets) -> list[str]:
    lines = ["### `attnzoo train recipes/cifar10-speed.yaml` (CIFAR-10 JPEG copy)", "",
             "| variant | test top-1 | training s | of which warm-up s | steady img/s | vs bench (same compile mode) |", "|---|---|---|---|---|---|"]
    seconds = {}
    for variant in ("softmax", "cosine", "standardized"):
        run = runs / f"gpu-speed-{variant}"
        test = load_json(run / "test_metrics.json") or {}
        steady = steady_images_per_sec(run)
        mode = next((r.get("compile") for r in epochs(run)), "none")
        ref = find(bench_rows(out, BENCH_OF_MODE.get(mode, "bench-eager")), "attnzoo", variant, 65)
        ratio = steady / ref["images_per_sec"] if steady and ref else None
        seconds[variant] = test.get("train_seconds")
        lines.append(f"| {variant} | {fmt(test.get('top1') and 100 * test['top1'], '.1f', ' %')} | "
                     f"{fmt(test.get('train_seconds'), '.1f', '')} | {fmt(test.get('warmup_seconds'), '.1f', '')} | "
                     f"{fmt(steady, ',.0f', '')} | {fmt(ratio)} |")
        targets.add(f"{variant}: a training epoch >= 0.9x the bench's img/s", ratio, lambda v: v >= 0.9)
        if variant != "softmax":
            rel = seconds[variant] / seconds["softmax"] if seconds[variant] and seconds.get("softmax") else None
            targets.add(f"{variant}: speed run <= 1.15x softmax's time", rel, lambda v: v <= 1.15)
    soft = load_json(runs / "gpu-speed-softmax" / "test_metrics.json") or {}
    targets.add("softmax speed run: >= 69 % test top-1", soft.get("top1"), lambda v: v >= 0.69,
                fmt(soft.get("top1") and 100 * soft["top1"], ".1f", " %"))
    targets.add("softmax speed run: <= 25 s of training", soft.get("train_seconds"), lambda v: v <= 25,
                fmt(soft.get("train_seconds"), ".1f", " s"))
    return lines + [""]


def study_section(runs: Path, out: Path, targets: Targets) -> list[str]:
    lines = ["### The study's model (width 128, depth 6, batch 128)", "",
             "| compile | bench img/s | training epoch img/s (steady) | epoch vs bench | vs 7.7k before |",
             "|---|---|---|---|---|"]
    for mode in ("none", "cudagraphs"):
        rows = bench_rows(out, f"study-bench-{mode}")
        bench = rows[0]["images_per_sec"] if rows else None
        steady = steady_images_per_sec(runs / f"gpu-study-{mode}")
        ratio = steady / bench if steady and bench else None
        speedup = steady / BASELINE_STUDY_IMAGES_PER_SEC if steady else None
        lines.append(f"| {mode} | {fmt(bench, ',.0f', '')} | {fmt(steady, ',.0f', '')} | {fmt(ratio)} | {fmt(speedup)} |")
        if mode == "cudagraphs":
            targets.add("study model: training >= 3x 7.7k img/s", speedup, lambda v: v >= 3.0)
    return lines + [""]


def main(out: str, runs: str) -> None:
    out, runs = Path(out), Path(runs)
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "unknown device"
    targets = Targets()
    body = bench_section(out, targets) + speed_section(runs, out, targets) + study_section(runs, out, targets)
    print("\n".join([f"## GPU check: {device}, bf16", "", *body, "### Targets", "", *targets.lines]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
