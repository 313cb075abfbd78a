"""The command line: the documented commands work, and every bad input is one clear message
with exit status 2 and no traceback."""

import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from attnzoo.cli import main
from conftest import ROOT, tiny_recipe_dict


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ATTNZOO_PLUGINS", "")  # core tests never depend on what else is installed


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name="r.yaml", **sections):
    path = tmp_path / name
    path.write_text("# attnzoo train r.yaml\n" + yaml.safe_dump(tiny_recipe_dict(tmp_path, **sections)))
    return path


def test_variants_json_lists_builtins_with_provider(capsys):
    code, out, _ = run(capsys, "variants", "--json")
    variants = {v["name"]: v for v in json.loads(out)}
    assert code == 0 and {"softmax", "cosine", "standardized"} <= set(variants)
    assert variants["cosine"]["distribution"] == "attnzoo" and variants["cosine"]["version"]
    scale = next(o for o in variants["standardized"]["options"] if o["name"] == "scale")
    assert scale == {"name": "scale", "type": "str", "default": "inv_d",
                     "choices": ["inv_d", "inv_sqrt_d", "learnable"], "help": scale["help"]}


def test_plugins_lists_status(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and plugins["softmax"]["status"] == "loaded" and plugins["softmax"]["variants"] == ["softmax"]


def test_ls_cp_validate(capsys, tmp_path):
    code, out, _ = run(capsys, "ls")
    assert code == 0 and "cifar100-seed" in out and "tiny" in out
    dest = tmp_path / "my.yaml"
    assert run(capsys, "cp", "cifar100-seed", str(dest))[0] == 0
    code, _, err = run(capsys, "cp", "cifar100-seed", str(dest))
    assert code == 2 and "already exists" in err
    code, out, _ = run(capsys, "validate", str(dest), "optim.lr=3e-4", "attention.name=cosine")
    resolved = yaml.safe_load(out)
    assert code == 0 and resolved["optim"]["lr"] == 3e-4 and resolved["attention"]["name"] == "cosine"


def test_train_command(capsys, tmp_path):
    path = write(tmp_path)
    code, out, _ = run(capsys, "train", str(path), "attention.name=standardized", "train.epochs=1")
    assert code == 0 and "test top1" in out
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["variant"] == "standardized"


def bad_inputs(tmp_path):
    """(arguments, expected message) for each kind of bad input."""
    good = write(tmp_path)
    (tmp_path / "bad.yaml").write_text("model: [\n")
    empty = tmp_path / "imgs"
    for split in ("train", "test"):
        (empty / split / "cat").mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(empty / split / "cat" / "0.png")
    (empty / "train" / "dog").mkdir()
    (empty / "test" / "dog").mkdir()
    Image.new("RGB", (16, 16)).save(empty / "test" / "dog" / "0.png")
    unreadable = tmp_path / "unreadable"
    for split in ("train", "test"):
        (unreadable / split / "cat").mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(unreadable / split / "cat" / "0.png")
    (unreadable / "train" / "cat" / "1.jpg").write_bytes(b"\x00garbage")
    return [
        (["train", str(tmp_path / "missing.yaml")], "recipe file"),
        (["train", str(tmp_path / "bad.yaml")], "is not valid YAML at line"),
        (["validate", str(good), "optim.weight_decy=1"], "unknown key (did you mean 'weight_decay'?)"),
        (["validate", str(good), "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
        (["validate", str(good), "optim.lr=-1"], "optim.lr: must be > 0"),
        (["validate", str(good), "model.patch_size=5"], "does not divide model.image_size"),
        (["validate", str(good), "model.heads=3"], "does not divide model.dim"),
        (["validate", str(good), "train.epochs=0"], "train.epochs: must be at least 1"),
        (["validate", str(good), "attention.name=sofmax"], "Unknown attention variant 'sofmax'"),
        (["validate", str(good), "attention.name=cosine", "attention.temp=2"], "has no option 'temp'"),
        (["validate", str(good), "optim.lr"], "expected key=value"),
        (["train", str(good), "data.dataset=imagefolder", f"data.root={tmp_path / 'nowhere'}"], "not found"),
        (["train", str(good), "data.dataset=imagefolder", f"data.root={empty}"], "has no images"),
        (["train", str(good), "data.dataset=imagefolder", f"data.root={unreadable}"], "cannot read image"),
        (["train", str(good), "--resume"], "holds no run to resume"),
        (["cp", "cifar100-sed", str(tmp_path / "x.yaml")], "did you mean 'cifar100-seed'"),
        (["validate", str(good), "requires_plugins=[attnzoo-nonexistent>=0.2]"], "attnzoo-nonexistent is not installed"),
    ]


def test_every_bad_input_is_one_clear_message(capsys, tmp_path):
    for argv, message in bad_inputs(tmp_path):
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and err.startswith("attnzoo: error: "), err


def test_existing_output_from_a_different_recipe(capsys, tmp_path):
    path = write(tmp_path)
    assert run(capsys, "train", str(path))[0] == 0
    code, _, err = run(capsys, "train", str(path), "model.dim=64")
    assert code == 2 and "holds a run of a different recipe" in err
    code, _, err = run(capsys, "train", str(path), "model.dim=64", "--resume")
    assert code == 2 and "model.dim: 32 in the run, 64 now" in err


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "--debug", "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "Traceback" in err


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnzoo", "validate", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr
