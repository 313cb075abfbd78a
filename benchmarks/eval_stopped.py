"""Test metrics of a speed run that its time limit stopped (SIGTERM: the trainer saved a
checkpoint and exited 75), so the GPU check keeps its accuracy and timing instead of nothing.

    python benchmarks/eval_stopped.py RUN_DIR OUT_JSON

Evaluates the weights of RUN_DIR's newest checkpoint on the test split, through the same code
as `attnzoo eval`, and writes OUT_JSON: the test report with the training counters of the
checkpoint (train_seconds, epochs_trained, and compile_seconds / steady_seconds where the run
recorded them) and ``"stopped": true``. The run folder is only read: the run stays resumable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from attnzoo.run import checkpoint
from attnzoo.run.evaluate import load_finished_run, load_run_recipe


def stopped_report(run_dir: Path) -> dict:
    checkpoints = checkpoint.list_checkpoints(run_dir)
    if not checkpoints:
        raise SystemExit(f"{run_dir}: no checkpoint to evaluate (the run stopped before its first save)")
    newest = checkpoints[-1]
    state = checkpoint.verify_checkpoint(newest)
    recipe = load_run_recipe(run_dir)
    report = load_finished_run(recipe, newest / "model.safetensors").evaluate()
    history = state.get("history", [])
    report.update(variant=recipe.attention.name, stopped=True, checkpoint=newest.name,
                  epochs_trained=len(history), epochs_asked=recipe.train.epochs,
                  train_seconds=state.get("train_seconds"),
                  compile_seconds=sum(r.get("compile_seconds") or 0.0 for r in history),
                  steady_seconds=sum(r.get("steady_seconds") or 0.0 for r in history),
                  warmup_seconds=sum(r.get("warmup_seconds") or 0.0 for r in history))
    return report


if __name__ == "__main__":
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    report = stopped_report(run)
    out.write_text(json.dumps(report, indent=1))
    print(f"{run}: stopped after {report['epochs_trained']}/{report['epochs_asked']} epochs, "
          f"test top1 {report['top1']:.4f} -> {out}")
