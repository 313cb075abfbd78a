"""The released CIFAR-10-C / CIFAR-100-C arrays: read from a fixture in the official on-disk layout,
clear errors for folders that are not one, and `attnzoo eval RUN --corruptions --cifar-c DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from attnzoo.cli import main
from attnzoo.config import recipe as recipes
from attnzoo.data import cifar_c
from attnzoo.errors import AttnzooError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict, write_cifar10_fixture

CLASSES = [f"class{i}" for i in range(10)]


def write_cifar_c(root: Path, n: int = 12, names=("gaussian_noise", "fog"), classes: int = 10) -> Path:
    """The release's layout: labels.npy (5n,) and <name>.npy (5n, 32, 32, 3) uint8 per corruption,
    severities 1-5 stacked. Pixel (0, 0, 0) of image i at severity s is 10 * s + i % 10, to check the rows."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(n) % classes, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for name in names:
        images = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        for s in range(5):
            images[s * n:(s + 1) * n, 0, 0, 0] = 10 * (s + 1) + np.arange(n) % 10
        np.save(root / f"{name}.npy", images)
    return root


def test_the_reader_takes_one_severity_of_one_corruption_in_the_run_layout(tmp_path):
    root = write_cifar_c(tmp_path / "CIFAR-10-C")
    assert cifar_c.corruption_names(root) == ["fog", "gaussian_noise"]
    raw = np.load(root / "fog.npy")
    for severity in (1, 3, 5):
        s = cifar_c.load_severity(root, "fog", severity, CLASSES)
        assert s.images.shape == (12, 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.images[:, 0, 0, 0].tolist() == [10 * severity + i % 10 for i in range(12)]
        rows = raw[(severity - 1) * 12:severity * 12]
        assert torch.equal(s.images, torch.from_numpy(rows).permute(0, 3, 1, 2))  # HWC -> CHW, nothing else
        assert s.labels.dtype == torch.int64 and s.labels.tolist() == [i % 10 for i in range(12)]


def test_folders_that_are_not_a_release_are_clear_errors(tmp_path):
    with pytest.raises(AttnzooError, match="not found"):
        cifar_c.corruption_names(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnzooError, match="has no labels.npy"):
        cifar_c.corruption_names(tmp_path / "empty")
    root = write_cifar_c(tmp_path / "c100", classes=100, n=120)
    with pytest.raises(AttnzooError, match="labels up to 99, but the run has 10 classes"):
        cifar_c.load_severity(root, "fog", 1, CLASSES)
    np.save(root / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(AttnzooError, match="600 images but labels.npy 7 labels"):
        cifar_c.load_severity(root, "fog", 1, CLASSES)
    with pytest.raises(AttnzooError, match="severities 1 to 5"):
        cifar_c.load_severity(root, "fog", 6, CLASSES)


def test_cifar_c_without_corruptions_is_an_error_naming_the_command(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--cifar-c", str(tmp_path / "c")]) == 2
    assert "Add --corruptions" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_corruptions_cifar_c_writes_cifar_c_json(tmp_path, capsys):
    cifar = write_cifar10_fixture(tmp_path / "cifar", per_batch=20, test=30)
    data = tiny_recipe_dict(tmp_path, model={"image_size": 32, "patch_size": 8},
                            data={"dataset": "cifar10", "root": str(cifar), "download": False},
                            train={"epochs": 1, "batch_size": 16})
    train(recipes.from_dict(data))
    run = tmp_path / "run"
    root = write_cifar_c(tmp_path / "CIFAR-10-C")
    assert main(["eval", str(run), "--corruptions", "--cifar-c", str(root)]) == 0
    record = json.loads((run / "cifar_c.json").read_text())
    assert not (run / "corruptions.json").exists()  # the on-device corruptions are left alone
    assert set(record["corruptions"]) == {"fog", "gaussian_noise"} and record["samples"] == 12
    for r in record["corruptions"].values():
        assert len(r["top1"]) == len(r["top5"]) == len(r["loss"]) == 5
        assert all(0 <= a <= b <= 1 for a, b in zip(r["top1"], r["top5"]))
    values = [v for r in record["corruptions"].values() for v in r["top1"]]
    assert record["mean_corruption_top1"] == pytest.approx(sum(values) / 10)
    test = json.loads((run / "test_metrics.json").read_text())
    assert record["clean_top1"] == pytest.approx(test["top1"])
    # The study report reads it beside the run's other files, and gives it a section of its own.
    from attnzoo.study.runs import load_run
    from attnzoo.study.tradeoffs import cifar_c_section

    loaded = load_run(run)
    assert loaded.cifar_c == record
    section = cifar_c_section({loaded.label: [loaded]})
    assert section is not None and section.title == "Robustness on CIFAR-C"
