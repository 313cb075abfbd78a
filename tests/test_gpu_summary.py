"""benchmarks/gpu_summary.py: the verdicts of the GPU check from made-up results."""

import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)


def bench_row(impl, variant, tokens, ips, memory=None, **ratios):
    return {"impl": impl, "variant": variant, "tokens": tokens, "images_per_sec": ips,
            "peak_memory_mib": memory, "compile_seconds": 0.0, **ratios}


def test_verdicts(tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    (out / "device.txt").write_text("NVIDIA H200 | torch 2.11")
    rows = [bench_row("attnzoo", "softmax", 65, 1000, vs_softmax=1.0, vs_timm=1.02),
            bench_row("attnzoo", "standardized", 65, 950, vs_softmax=0.95),
            bench_row("attnzoo", "cosine", 65, 800, vs_softmax=0.8),
            bench_row("attnzoo", "softmax", 257, 300, 900, vs_softmax=1.0, vs_timm=0.97),
            bench_row("attnzoo", "cosine", 257, 450, 600, vs_softmax=1.5)]
    (out / "bench-eager.json").write_text(json.dumps({"results": rows}))
    run = runs / "gpu-speed-softmax"
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text(json.dumps({"top1": 0.7, "train_seconds": 24.0, "warmup_seconds": 2.0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"steady_images_per_sec": v}) + "\n" for v in (800, 950, 960)))
    cosine = runs / "gpu-speed-cosine"  # trained with CUDA graphs: compared with that benchmark only
    cosine.mkdir()
    (cosine / "metrics.jsonl").write_text(json.dumps({"steady_images_per_sec": 900, "compile": "cudagraphs"}) + "\n")
    gpu_summary.main(str(out), str(runs))
    text = capsys.readouterr().out
    assert text.startswith("## GPU check: NVIDIA H200 | torch 2.11, bf16")
    assert "| eager: standardized >= 0.9x softmax at 65 tokens | 0.95x | met |" in text
    assert "| eager: cosine >= 0.9x softmax at 65 tokens | 0.80x | NOT met |" in text
    assert "| eager: standardized >= 0.9x softmax at 257 tokens | - | unmeasured |" in text
    assert "| eager: attnzoo softmax >= 1.0x timm at 257 tokens | 0.97x | NOT met |" in text
    assert "| eager: cosine peak memory < softmax's at 257 tokens | 0.67x | met |" in text
    assert "| softmax: a training epoch >= 0.9x the bench's img/s | 0.95x | met |" in text  # median 950 / 1000
    assert "| cosine: a training epoch >= 0.9x the bench's img/s | - | unmeasured |" in text
    assert "| softmax speed run: >= 69 % test top-1 | 70.0 % | met |" in text
    assert "| softmax speed run: <= 25 s of training | 24.0 s | met |" in text
    assert "| study model: training >= 3x 7.7k img/s | - | unmeasured |" in text
    assert "### `attnzoo bench`, compiled\n\n(not measured)" in text


def test_unmeasured_targets_say_why_and_rows_of_a_cut_stage_count(tmp_path, capsys):
    """The check of gpu_check.sh: bench rows as JSON lines (the last one torn by a kill), the compiled
    bench split per size, a speed run stopped by its limit and tested from its checkpoint, and
    stages.tsv saying how each stage ended."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    eager = [bench_row("attnzoo", "softmax", 65, 1000, vs_softmax=1.0, vs_timm=1.1),
             bench_row("attnzoo", "standardized", 65, 920, vs_softmax=0.92)]
    (out / "bench-eager.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eager) + '{"impl": "attn')
    graphs = [bench_row("attnzoo", "softmax", 65, 3000, vs_softmax=1.0),
              bench_row("attnzoo", "cosine", 65, 2900, vs_softmax=0.97)]
    (out / "bench-cudagraphs-65.jsonl").write_text("".join(json.dumps(r) + "\n" for r in graphs))
    (out / "stages.tsv").write_text("bench-eager\t124\t60\t60\nspeed-softmax\t124\t70\t70\nspeed-softmax-eval\t0\t9\t40\n"
                                    "bench-cudagraphs-65\t0\t50\t75\nbench-cudagraphs-257\t1\t3\t75\n"
                                    "study-train-cudagraphs\tskipped\t0\t0\n")
    run = runs / "gpu-speed-softmax"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"steady_images_per_sec": 2850, "compile": "cudagraphs"}) + "\n")
    (out / "speed-softmax-stopped.json").write_text(json.dumps(
        {"top1": 0.61, "stopped": True, "epochs_trained": 7, "epochs_asked": 10, "train_seconds": 31.0,
         "compile_seconds": 12.0, "steady_seconds": 18.5}))
    gpu_summary.main(str(out), str(runs))
    text = capsys.readouterr().out
    assert "| eager: standardized >= 0.9x softmax at 65 tokens | 0.92x | met |" in text  # rows before the torn line
    assert ("| eager: standardized >= 0.9x softmax at 257 tokens | - | unmeasured | "
            "stage bench-eager timed out at its 60 s limit |") in text
    assert "| CUDA graphs: cosine >= 0.9x softmax at 65 tokens | 0.97x | met |" in text
    assert ("| CUDA graphs: cosine >= 1.3x softmax at 257 tokens | - | unmeasured | "
            "stage bench-cudagraphs-257 failed (exit 1; see log.txt) |") in text
    assert "| study model: training >= 3x 7.7k img/s | - | unmeasured | stage study-train-cudagraphs skipped: " \
           "the time budget was spent |" in text
    # the epoch is compared with the bench of its own compile mode: 2850 / 3000
    assert "| softmax: a training epoch >= 0.9x the bench's img/s | 0.95x | met |" in text
    assert "| softmax | 61.0 % | 7 of 10, stopped at its limit | 31.0 | 12.0 | 18.5 |" in text
    assert "| softmax speed run: >= 69 % test top-1 | 61.0 % (stopped at its limit) | NOT met |" in text
    # 18.5 s of steady training, but 3 epochs short: not met
    assert ("| softmax speed run: <= 25 s of training | 18.5 s steady + 12.0 s compile (stopped at its limit) "
            "| NOT met |") in text
    assert "| cosine: a training epoch >= 0.9x the bench's img/s | - | unmeasured | stage speed-cosine did not run |" in text


def test_the_speed_target_is_read_on_steady_training(tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    run = runs / "gpu-speed-softmax"
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text(json.dumps(
        {"top1": 0.695, "train_seconds": 41.0, "compile_seconds": 17.5, "steady_seconds": 23.5, "epochs_trained": 10}))
    gpu_summary.main(str(out), str(runs))
    text = capsys.readouterr().out
    assert "| softmax speed run: <= 25 s of training | 23.5 s steady + 17.5 s compile | met |" in text
    assert "| softmax speed run: >= 69 % test top-1 | 69.5 % | met |" in text
