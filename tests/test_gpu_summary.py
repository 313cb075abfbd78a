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
