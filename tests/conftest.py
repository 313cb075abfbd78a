"""Shared fixtures: the built-in plugins loaded explicitly (never 'whatever is installed'),
tiny recipes, and CIFAR fixtures written in the official on-disk layout."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The CIFAR-10 JPEG tarball for the real-data tests (see README, "Your own data").
CIFAR10_TAR_VAR = "ATTNZOO_CIFAR10_TAR"
DEFAULT_CIFAR10_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def cifar10_tarball() -> Path:
    return Path(os.environ.get(CIFAR10_TAR_VAR) or DEFAULT_CIFAR10_TAR)
BUILTINS = {"softmax": "attnzoo_softmax", "cosine": "attnzoo_cosine", "standardized": "attnzoo_standardized"}


def builtin_entry_points():
    return [metadata.EntryPoint(name, module, "attnzoo") for name, module in BUILTINS.items()]


@pytest.fixture(scope="session")
def builtin_registry():
    from attnzoo.contract.registry import load_registry

    return load_registry(builtin_entry_points(), strict=True, only=None, disable=set())


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """Tests never see the user's plugin settings or write to the user's cache."""
    for var in ("ATTNZOO_PLUGINS", "ATTNZOO_DISABLE_PLUGINS", "ATTNZOO_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ATTNZOO_CACHE_DIR", str(tmp_path / "cache"))


def tiny_recipe_dict(tmp_path: Path, **sections) -> dict:
    data = {
        "name": "t",
        "output_dir": str(tmp_path / "run"),
        "model": {"image_size": 16, "patch_size": 4, "dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 2.0,
                  "dropout": 0.0},
        "attention": {"name": "softmax"},
        "data": {"dataset": "synthetic", "val_fraction": 0.1},
        "optim": {"lr": 3e-3, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


def write_cifar100_fixture(root: Path, train: int = 60, test: int = 20, seed: int = 0) -> Path:
    """CIFAR-100 'python version' layout: cifar-100-python/{train,test,meta} pickles."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", train), ("test", test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(i % 100) for i in range(n)],
                 b"coarse_labels": [int(i % 20) for i in range(n)],
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_cifar10_fixture(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> Path:
    """CIFAR-10 'python version' layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]
    for name, n in files:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, n)],
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {b"label_names": [c.encode() for c in names], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture(scope="session")
def cifar10_jpg(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG copy, a subset extracted once per session (image-folder layout)."""
    tarball = cifar10_tarball()
    if not tarball.is_file():
        pytest.skip(f"real-data tests need the CIFAR-10 JPEG tarball, not found at {tarball}; to run them, "
                    f"set {CIFAR10_TAR_VAR}=/path/to/cifar10-jpg.tar.gz (made with `attnzoo export-cifar10 DIR` "
                    "and `tar czf cifar10-jpg.tar.gz -C DIR train test`)")
    out = tmp_path_factory.mktemp("cifar10-jpg")
    keep = {"train": 600, "test": 200}  # images per class
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and int(Path(parts[2]).stem) < keep[parts[0]]:
                target = out / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return out
