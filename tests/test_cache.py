"""The decode cache: where it lives, its size cap, and `attnzoo cache`."""

import os

import pytest

from attnzoo.cli import main
from attnzoo.data import cache


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNZOO_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def entry(folder, name, size, age):
    path = folder / f"imagefolder-{name}.safetensors"
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(age, age))
    return path


def test_pruning_removes_the_least_recently_used_entries_down_to_the_limit(folder):
    old, middle, new = entry(folder, "a", 400, 1_000), entry(folder, "b", 400, 2_000), entry(folder, "c", 400, 3_000)
    assert cache.prune(keep=new, limit=900) == [old]
    assert sorted(p.name for p in folder.iterdir()) == [middle.name, new.name]


def test_pruning_keeps_the_entry_just_written_even_over_the_limit(folder):
    old, new = entry(folder, "a", 400, 1_000), entry(folder, "b", 800, 2_000)
    assert cache.prune(keep=new, limit=500) == [old]
    assert new.exists()


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATTNZOO_CACHE_MAX_GB", "0.5")
    assert cache.max_bytes() == 500_000_000
    monkeypatch.setenv("ATTNZOO_CACHE_MAX_GB", "lots")  # a typo never stops a run
    assert cache.max_bytes() == int(cache.DEFAULT_MAX_GB * 1e9)


def test_cache_clear_deletes_only_what_attnzoo_wrote(folder, capsys):
    entry(folder, "a", 100, 1_000)
    (folder / "imagefolder-b.tmp").write_bytes(b"y" * 10)
    mine = folder / "notes.txt"
    mine.write_text("a user's file")
    assert main(["cache"]) == 0 and "2 cached dataset(s)" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 2 cached dataset(s)" in capsys.readouterr().out
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_imagefolder_is_decoded_into_the_cache_and_read_back(folder, tmp_path):
    from PIL import Image

    from attnzoo.data.datasets import load_imagefolder

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "images" / split / label / "0.png")
    first = load_imagefolder(tmp_path / "images", 8)
    [written] = cache.entries()
    second = load_imagefolder(tmp_path / "images", 8)
    assert cache.entries() == [written]
    assert (first[0].images == second[0].images).all() and first[0].images[0, 1, 0, 0] == 200
