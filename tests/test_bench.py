"""`attnzoo bench` on a tiny shape: the JSON document and its ratios (no timing asserts)."""

import json

import pytest
from attnzoo.cli import main

TINY = ["model.depth=1", "model.dim=32", "model.heads=2", "model.image_size=16", "bench.batch_size=4",
        "bench.steps=2", "bench.rounds=2", "bench.warmup_steps=1", "bench.image_sizes=[16,32]"]


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ATTNZOO_PLUGINS", "")


@pytest.mark.slow
def test_bench_json(capsys):
    assert main(["bench", "recipes/bench.yaml", *TINY, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["results"]
    assert doc["device"].startswith("CPU")
    keys = {"impl", "variant", "image_size", "tokens", "batch_size", "images_per_sec", "peak_memory_mib"}
    assert all(keys <= set(r) for r in rows)
    impls = {(r["impl"], r["variant"], r["tokens"]) for r in rows}
    for tokens in (17, 65):
        for variant in ("softmax", "cosine", "standardized"):
            assert ("attnzoo", variant, tokens) in impls and ("naive", variant, tokens) in impls
    assert ("attnzoo+data", "softmax", 17) in impls  # the data pipeline runs at the recipe's image size
    for r in rows:
        assert r["images_per_sec"] > 0 and r["peak_memory_mib"] is None  # no CUDA here
        if r["impl"] == "attnzoo":
            softmax = next(x for x in rows if (x["impl"], x["variant"], x["tokens"]) == ("attnzoo", "softmax", r["tokens"]))
            assert r["vs_softmax"] == pytest.approx(r["images_per_sec"] / softmax["images_per_sec"])


def test_bench_rejects_unknown_variant(capsys):
    assert main(["bench", *TINY, "bench.variants=[softmax,cosin]"]) == 2
    assert "Unknown attention variant 'cosin'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_reports_compile_time_and_settings(capsys):
    assert main(["bench", "recipes/bench.yaml", *TINY, "bench.image_sizes=[16]", "bench.compare_timm=false"]) == 0
    out = capsys.readouterr().out
    # recipes/bench.yaml asks for bf16: the table says what ran on this CPU
    assert "precision fp32 (the recipe's bf16 runs in fp32 on cpu), compile none" in out and "| compile s |" in out


@pytest.mark.slow
def test_compiled_bench_over_several_image_sizes(capsys):
    # Compiling models of several image sizes in one process once crashed inside an inductor
    # backward (symbolic shapes after a recompile); static shapes and a reset per size fix it.
    args = [*TINY, "bench.variants=[softmax,cosine]", "bench.compare_naive=false", "bench.compare_timm=false",
            "bench.data_pipeline=false", "train.compile=default", "--json"]
    assert main(["bench", "recipes/bench.yaml", *args]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert {(r["variant"], r["tokens"]) for r in rows} == {(v, t) for v in ("softmax", "cosine") for t in (17, 65)}
    assert all(r["compile"] == "default" and r["compile_seconds"] >= 0 for r in rows)


@pytest.mark.parametrize("ran, asked, device, expected", [
    ("no", "bf16", "cpu", "fp32 (the recipe's bf16 runs in fp32 on cpu)"),
    ("no", "no", "cpu", "fp32"),
    ("bf16", "bf16", "cuda", "bf16"),
])
def test_table_names_the_precision_it_ran_in(ran, asked, device, expected):
    import torch
    from attnzoo.run.bench import format_table, precision_note

    note = precision_note(ran, asked, torch.device(device))
    assert note == expected
    row = {"impl": "attnzoo", "variant": "softmax", "image_size": 32, "tokens": 65, "batch_size": 8, "precision": ran,
           "compile": "none", "images_per_sec": 1.0, "step_ms": 8.0, "peak_memory_mib": None, "vs_softmax": 1.0,
           "vs_timm": None, "vs_naive": None}
    assert format_table([row], "CPU", note).splitlines()[0].endswith(f", precision {expected}, compile none")


def test_bench_builds_its_models_as_training_does(builtin_registry, tmp_path):
    """The same construction as a run (assembly.build_model, the recipe's init included), at each
    benchmarked image size, with the stated benchmark head width; naive is the explicit path."""
    import dataclasses

    import torch
    from attnzoo.config import recipe as recipes
    from attnzoo.contract.variant import ExplicitPath
    from attnzoo.run.assembly import build_model
    from attnzoo.run.bench import BENCH_CLASSES, build
    from conftest import tiny_recipe_dict

    recipe = recipes.from_dict(tiny_recipe_dict(tmp_path, model={"init": "torch_default"}), registry=builtin_registry)
    kernel = recipes.resolve(recipe, builtin_registry).kernel
    torch.manual_seed(0)
    fast = build("attnzoo", kernel, recipe, 32)
    torch.manual_seed(0)
    naive = build("naive", kernel, recipe, 32)
    torch.manual_seed(0)
    sized = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, image_size=32))
    trained = build_model(sized, BENCH_CLASSES, kernel)
    assert recipe.model.image_size == 16  # the recipe itself is left as it was
    assert fast.head.out_features == BENCH_CLASSES and fast.pos_embed.shape[1] == (32 // 4) ** 2 + 1
    for model in (fast, naive):
        expected = trained.state_dict()
        assert model.state_dict().keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert all(isinstance(block.attn.kernel, ExplicitPath) for block in naive.blocks)
    assert not any(isinstance(block.attn.kernel, ExplicitPath) for block in fast.blocks)


@pytest.mark.slow
def test_bench_rows_survive_a_kill_in_the_middle(tmp_path):
    """`attnzoo bench --out F` killed after its first image size: F holds that size's rows, each
    complete, with their ratios; the size in progress is lost, nothing else."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rows_file = tmp_path / "rows.jsonl"
    args = [*TINY, "bench.image_sizes=[16,128]", "bench.compare_timm=false", "bench.data_pipeline=false",
            "bench.variants=[softmax,cosine]"]
    proc = subprocess.Popen([sys.executable, "-m", "attnzoo", "bench", "recipes/bench.yaml", *args, "--json",
                             "--out", str(rows_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "ATTNZOO_PLUGINS": ""})
    try:
        deadline = time.monotonic() + 240
        while not (rows_file.exists() and rows_file.read_text().count("\n") >= 4) and proc.poll() is None:
            assert time.monotonic() < deadline, "no rows after 240 s"
            time.sleep(0.05)
        assert proc.poll() is None, f"the bench ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    lines = rows_file.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is a whole row
    assert [(r["impl"], r["variant"], r["tokens"]) for r in rows] == [
        ("attnzoo", "softmax", 17), ("attnzoo", "cosine", 17), ("naive", "softmax", 17), ("naive", "cosine", 17)]
    assert rows[0]["vs_softmax"] == 1.0 and rows[1]["vs_softmax"] == pytest.approx(
        rows[1]["images_per_sec"] / rows[0]["images_per_sec"])


def test_bench_out_keeps_an_existing_file_and_reads_back_whole_rows(tmp_path):
    from attnzoo.errors import AttnzooError
    from attnzoo.run.bench import RowFile, read_rows

    kept = tmp_path / "rows.jsonl"
    kept.write_text('{"impl": "attnzoo"}\n')
    with pytest.raises(AttnzooError, match="holds rows already; nothing is written over"):
        RowFile(kept)
    assert kept.read_text() == '{"impl": "attnzoo"}\n'
    with pytest.raises(AttnzooError, match="does not exist; create it first"):
        RowFile(tmp_path / "missing" / "rows.jsonl")
    out = RowFile(tmp_path / "new.jsonl")
    out.write({"impl": "attnzoo", "images_per_sec": 1.5})
    out.close()
    # a kill during a write leaves a torn last line: the rows before it are read, the torn one is not
    (tmp_path / "new.jsonl").write_text((tmp_path / "new.jsonl").read_text() + '{"impl": "na')
    assert read_rows(tmp_path / "new.jsonl") == [{"impl": "attnzoo", "images_per_sec": 1.5}]
