"""`attnzoo bench` on a tiny shape: the JSON document and its ratios (no timing asserts)."""

import json

import pytest

from attnzoo.cli import main

TINY = ["model.depth=1", "model.dim=32", "model.heads=2", "model.image_size=16", "bench.batch_size=4",
        "bench.steps=2", "bench.rounds=2", "bench.warmup_steps=1", "bench.image_sizes=[16,32]"]


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ATTNZOO_PLUGINS", "")


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
