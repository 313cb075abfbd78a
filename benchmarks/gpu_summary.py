"""Tables and a verdict per GPU target from what benchmarks/gpu_check.sh left behind.

    python benchmarks/gpu_summary.py OUT_DIR RUNS_DIR

Reads the bench rows OUT_DIR/<stage>.jsonl (``attnzoo bench --out``, one row a line, written
as measured; the ``--json`` documents <stage>.json of earlier checks too), the run folders
RUNS_DIR/gpu-speed-<variant> and RUNS_DIR/gpu-study-<mode> (or OUT_DIR/speed-<variant>-stopped.json
for a speed run its time limit stopped) and OUT_DIR/stages.tsv (each stage's exit status);
prints markdown. Every target is met, NOT met or unmeasured, and an unmeasured one says why:
its stage timed out, failed, was skipped when the time budget was spent, or never ran.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

BASELINE_STUDY_IMAGES_PER_SEC = 7_700  # the study's model on an H200 before this work
# The bench stages of each train.compile mode, per token count (gpu_check.sh splits compiled ones per size).
BENCH_STAGES = {"none": {65: "bench-eager", 257: "bench-eager"},
                "cudagraphs": {65: "bench-cudagraphs-65", 257: "bench-cudagraphs-257"},
                "default": {65: "bench-default-65", 257: "bench-default-257"}}
EXIT_TIMED_OUT = (124, 137)  # timeout(1): SIGTERM sent at the limit; SIGKILL after it


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_rows(out: Path, name: str) -> list[dict]:
    """The complete rows of a bench stage: its JSON lines (a torn last line left out), else the
    --json document an earlier check wrote."""
    lines = out / f"{name}.jsonl"
    if lines.exists():
        rows = []
        for line in lines.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows
    doc = load_json(out / f"{name}.json")
    return doc["results"] if doc else []


def mode_rows(out: Path, mode: str) -> list[dict]:
    """Every bench row of a compile mode, from all its stages (and an unsplit stage of earlier checks)."""
    names = dict.fromkeys([*BENCH_STAGES[mode].values(), f"bench-{mode}" if mode != "none" else "bench-eager"])
    return [r for name in names for r in bench_rows(out, name)]


class Stages:
    """Why a figure is missing, from stages.tsv (name, exit status or "skipped", seconds, limit)."""

    def __init__(self, out: Path):
        self.status = {}
        try:
            for line in (out / "stages.tsv").read_text().splitlines():
                name, rc, seconds, limit = (line.split("\t") + ["", "", ""])[:4]
                self.status[name] = (rc, seconds, limit)
        except OSError:
            pass

    def reason(self, *names: str) -> str:
        """The reason a figure of these stages is missing: the first stage that did not end well."""
        for name in names:
            if name not in self.status:
                return f"stage {name} did not run"
            rc, seconds, limit = self.status[name]
            if rc == "skipped":
                return f"stage {name} skipped: the time budget was spent"
            if rc.isdigit() and int(rc) in EXIT_TIMED_OUT:
                return f"stage {name} timed out at its {limit} s limit"
            if rc != "0":
                return f"stage {name} failed (exit {rc}; see log.txt)"
        return f"stage {' / '.join(names)} ran but did not record it"


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
    def __init__(self, stages: Stages | None = None):
        self.lines = ["| target | measured | verdict | why unmeasured |", "|---|---|---|---|"]
        self.stages = stages or Stages(Path("/nonexistent"))

    def add(self, what, value, ok, shown=None, stages=()):
        """`stages`: the stages the figure comes from, to say why it is missing."""
        reason = self.stages.reason(*stages) if value is None and stages else ""
        self.lines.append(f"| {what} | {shown if shown is not None else fmt(value)} | {verdict(value, ok)} | {reason} |")


BENCH_LABELS = (("none", "eager"), ("cudagraphs", "CUDA graphs"), ("default", "compiled"))


def bench_section(out: Path, targets: Targets) -> list[str]:
    """The bench tables; the ratio targets eager and compiled. Compiled is read on CUDA graphs,
    the mode the speed recipe trains with (plain inductor, measured last, only when it ran)."""
    lines = []
    for mode, label in BENCH_LABELS:
        rows = mode_rows(out, mode)
        lines += [f"### `attnzoo bench`, {label}", ""]
        if not rows:
            lines += ["(not measured)", ""]
        else:
            lines += ["| impl | variant | tokens | img/s | vs softmax | vs timm | vs naive | peak MiB | compile s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['impl']} | {r['variant']} | {r['tokens']} | {r['images_per_sec']:,.0f} | "
                             f"{fmt(r.get('vs_softmax'))} | {fmt(r.get('vs_timm'))} | {fmt(r.get('vs_naive'))} | "
                             f"{fmt(r.get('peak_memory_mib'), '.0f', '')} | {fmt(r.get('compile_seconds'), '.1f', '')} |")
            lines.append("")
        if mode == "default" and not rows:
            continue  # an extra: no target of its own
        for tokens in (65, 257):
            stage = (BENCH_STAGES[mode][tokens],)
            std, cos = find(rows, "attnzoo", "standardized", tokens), find(rows, "attnzoo", "cosine", tokens)
            soft = find(rows, "attnzoo", "softmax", tokens)
            targets.add(f"{label}: standardized >= 0.9x softmax at {tokens} tokens", std and std["vs_softmax"],
                        lambda v: v >= 0.9, stages=stage)
            need = 0.9 if tokens == 65 else 1.3
            targets.add(f"{label}: cosine >= {need}x softmax at {tokens} tokens", cos and cos["vs_softmax"],
                        lambda v, need=need: v >= need, stages=stage)
            if mode == "none":  # timm is measured eagerly: compiling it too would cost a cold compile per size
                targets.add(f"{label}: attnzoo softmax >= 1.0x timm at {tokens} tokens", soft and soft.get("vs_timm"),
                            lambda v: v >= 1.0, stages=stage)
            if tokens == 257:
                ratio = (cos["peak_memory_mib"] / soft["peak_memory_mib"]
                         if cos and soft and cos.get("peak_memory_mib") and soft.get("peak_memory_mib") else None)
                targets.add(f"{label}: cosine peak memory < softmax's at 257 tokens", ratio, lambda v: v < 1.0,
                            stages=stage)
    return lines


def speed_result(runs: Path, out: Path, variant: str) -> dict:
    """test_metrics.json of the speed run, or the test of its checkpoint when its limit stopped it."""
    finished = load_json(runs / f"gpu-speed-{variant}" / "test_metrics.json")
    return finished or load_json(out / f"speed-{variant}-stopped.json") or {}


def speed_section(runs: Path, out: Path, targets: Targets) -> list[str]:
    """The speed runs. The 25 s target is read on steady training (train_seconds minus the
    compile and warm-up of the first steps); compile time is shown apart (a second run on the
    same machine reuses inductor's FX graph cache, named in the run's environment.json)."""
    lines = ["### `attnzoo train recipes/cifar10-speed.yaml` (CIFAR-10 JPEG copy)", "",
             "| variant | test top-1 | epochs | training s | compile s | steady s | steady img/s "
             "| vs bench (same compile mode) |", "|---|---|---|---|---|---|---|---|"]
    seconds = {}
    for variant in ("softmax", "cosine", "standardized"):
        run, stage = runs / f"gpu-speed-{variant}", f"speed-{variant}"
        test = speed_result(runs, out, variant)
        steady = steady_images_per_sec(run)
        mode = next((r.get("compile") for r in epochs(run)), "none")
        ref = find(mode_rows(out, mode if mode in BENCH_STAGES else "none"), "attnzoo", variant, 65)
        ratio = steady / ref["images_per_sec"] if steady and ref else None
        seconds[variant] = test.get("steady_seconds") or test.get("train_seconds")
        done = f"{test['epochs_trained']}" if "epochs_trained" in test else "-"
        if test.get("stopped"):
            done += f" of {test.get('epochs_asked')}, stopped at its limit"
        lines.append(f"| {variant} | {fmt(test.get('top1') and 100 * test['top1'], '.1f', ' %')} | {done} | "
                     f"{fmt(test.get('train_seconds'), '.1f', '')} | {fmt(test.get('compile_seconds'), '.1f', '')} | "
                     f"{fmt(test.get('steady_seconds'), '.1f', '')} | {fmt(steady, ',.0f', '')} | {fmt(ratio)} |")
        bench_stage = BENCH_STAGES.get(mode, BENCH_STAGES["none"])[65]
        targets.add(f"{variant}: a training epoch >= 0.9x the bench's img/s", ratio, lambda v: v >= 0.9,
                    stages=(stage, bench_stage) if steady else (stage,))
        if variant != "softmax":
            rel = seconds[variant] / seconds["softmax"] if seconds[variant] and seconds.get("softmax") else None
            targets.add(f"{variant}: speed run <= 1.15x softmax's time", rel, lambda v: v <= 1.15,
                        stages=(stage, "speed-softmax"))
    soft = speed_result(runs, out, "softmax")
    stopped = " (stopped at its limit)" if soft.get("stopped") else ""
    targets.add("softmax speed run: >= 69 % test top-1", soft.get("top1"), lambda v: v >= 0.69,
                fmt(soft.get("top1") and 100 * soft["top1"], ".1f", " %") + stopped, stages=("speed-softmax",))
    # The steady figure where the run recorded it; runs of earlier versions have train_seconds only.
    train = soft.get("steady_seconds") or soft.get("train_seconds")
    shown = fmt(train, ".1f", " s")
    if soft.get("compile_seconds") is not None and soft.get("steady_seconds"):
        shown += f" steady + {soft['compile_seconds']:.1f} s compile"
    # A stopped run did not train all its epochs: it cannot meet the target, whatever its seconds.
    targets.add("softmax speed run: <= 25 s of training", train,
                lambda v: v <= 25 and not soft.get("stopped"), shown + stopped, stages=("speed-softmax",))
    return lines + [""]


def study_section(runs: Path, out: Path, targets: Targets) -> list[str]:
    lines = ["### The study's model (width 128, depth 6, batch 128)", "",
             "| compile | bench img/s | training epoch img/s (steady) | epoch vs bench | vs 7.7k before |",
             "|---|---|---|---|---|"]
    for mode in ("cudagraphs", "none"):
        rows = bench_rows(out, f"study-bench-{mode}")
        bench = rows[0]["images_per_sec"] if rows else None
        steady = steady_images_per_sec(runs / f"gpu-study-{mode}")
        ratio = steady / bench if steady and bench else None
        speedup = steady / BASELINE_STUDY_IMAGES_PER_SEC if steady else None
        lines.append(f"| {mode} | {fmt(bench, ',.0f', '')} | {fmt(steady, ',.0f', '')} | {fmt(ratio)} | {fmt(speedup)} |")
        if mode == "cudagraphs":
            targets.add("study model: training >= 3x 7.7k img/s", speedup, lambda v: v >= 3.0,
                        stages=("study-train-cudagraphs",))
    return lines + [""]


def main(out: str, runs: str) -> None:
    out, runs = Path(out), Path(runs)
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "unknown device"
    targets = Targets(Stages(out))
    body = bench_section(out, targets) + speed_section(runs, out, targets) + study_section(runs, out, targets)
    print("\n".join([f"## GPU check: {device}, bf16", "", *body, "### Targets", "", *targets.lines]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
