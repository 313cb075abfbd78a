"""CIFAR without internet: `attnzoo export-cifar10` writes the image-folder JPEG copy, and a
failed download names the folder it expected and the offline route."""

import numpy as np
import pytest
from attnzoo.cli import main
from attnzoo.data.datasets import load_cifar, load_imagefolder
from attnzoo.errors import AttnzooError
from conftest import write_cifar10_fixture
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_export_cifar10_writes_the_image_folder_layout(tmp_path, capsys):
    root = write_cifar10_fixture(tmp_path / "cifar", per_batch=20, test=30)
    dest = tmp_path / "cifar10-jpg"
    assert main(["export-cifar10", str(dest), "--cifar-root", str(root), "--no-download"]) == 0
    assert "wrote 100 train and 30 test JPEGs" in capsys.readouterr().out
    train, test = load_cifar("cifar10", root, download=False)
    for split, original in (("train", train), ("test", test)):
        assert sorted(p.name for p in (dest / split).iterdir()) == CLASSES
        for label, name in enumerate(CLASSES):
            index = (original.labels == label).nonzero().flatten()
            files = sorted((dest / split / name).iterdir())
            # numbered per class, 0000.jpg upwards, in the order of the official files
            assert [f.name for f in files] == [f"{i:04d}.jpg" for i in range(len(index))]
            pixels = original.images.numpy().astype(np.int16)
            for f, i in zip(files, index.tolist()):
                decoded = np.asarray(Image.open(f).convert("RGB"), dtype=np.int16).transpose(2, 0, 1)
                # JPEG is lossy (very much so on the fixture's random pixels): each file is
                # nearest to its own original among all images of the split
                distance = np.abs(pixels - decoded).mean(axis=(1, 2, 3))
                assert distance.argmin() == i
    exported_train, exported_test = load_imagefolder(dest, 32)
    assert len(exported_train) == 100 and len(exported_test) == 30 and exported_train.classes == CLASSES
    assert sorted(exported_train.labels.tolist()) == sorted(train.labels.tolist())


def test_export_refuses_a_folder_with_images(tmp_path, capsys):
    root = write_cifar10_fixture(tmp_path / "cifar", per_batch=2, test=2)
    (tmp_path / "out" / "train" / "cat").mkdir(parents=True)
    assert main(["export-cifar10", str(tmp_path / "out"), "--cifar-root", str(root), "--no-download"]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_export_without_the_dataset_names_the_folder(tmp_path, capsys):
    assert main(["export-cifar10", str(tmp_path / "out"), "--cifar-root", str(tmp_path), "--no-download"]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err


@pytest.mark.parametrize("name, folder", [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")])
def test_failed_download_names_the_folder_and_the_offline_route(tmp_path, monkeypatch, name, folder):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(AttnzooError) as info:
        load_cifar(name, tmp_path / "data", download=True)
    message = str(info.value)
    assert "name resolution" in message and repr(str(tmp_path / "data" / folder)) in message
    assert "attnzoo export-cifar10 DIR" in message and "attnzoo study cifar10-study" in message
    assert "data.dataset=imagefolder" in message


@pytest.mark.slow  # a pytest subprocess
def test_real_data_tests_say_how_to_enable_them(tmp_path):
    """Without the tarball the real-data tests skip, and the summary names the variable to set."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, ATTNZOO_CIFAR10_TAR=str(tmp_path / "missing.tar.gz"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_real_data.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "3 skipped" in proc.stdout, proc.stdout
    assert f"not found at {tmp_path / 'missing.tar.gz'}; to run them, set ATTNZOO_CIFAR10_TAR=" in proc.stdout
