"""The command line: the documented commands work, and every bad input is one clear message
with exit status 2 and no traceback."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from attnzoo.cli import main
from conftest import ROOT, tiny_recipe_dict
from PIL import Image


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


@pytest.mark.slow
def test_train_command(capsys, tmp_path):
    path = write(tmp_path)
    code, out, _ = run(capsys, "train", str(path), "attention.name=standardized", "train.epochs=1")
    assert code == 0 and "test top1" in out
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["variant"] == "standardized"


@pytest.mark.slow
def test_eval_runs_each_check_asked_for_and_says_what_it_leaves_out(capsys, tmp_path):
    path = write(tmp_path, data={"max_train_samples": 64, "max_eval_samples": 16})
    assert run(capsys, "train", str(path))[0] == 0
    folder = tmp_path / "run"
    tested, cost = (json.loads((folder / name).read_text()) for name in ("test_metrics.json", "cost.json"))
    (folder / "cost.json").unlink()

    code, out, err = run(capsys, "eval", str(folder), "--cost")
    assert code == 0 and "--cost only; the test metrics are not re-evaluated (add --test for that too)" in err
    assert json.loads((folder / "cost.json").read_text()) == cost and not (folder / "eval.json").exists()

    code, out, err = run(capsys, "eval", str(folder), "--test", "--cost")
    assert code == 0 and "not re-evaluated" not in err and "GFLOPs per training image" in out
    assert json.loads((folder / "eval.json").read_text())["top1"] == tested["top1"]

    (folder / "eval.json").unlink()
    code, out, err = run(capsys, "eval", str(folder))  # no flag: the test metrics only
    assert code == 0 and f"top1 {tested['top1']:.4f}" in out and "GFLOPs" not in out and err == ""
    assert (folder / "eval.json").is_file()


@pytest.fixture
def files(tmp_path):
    """A good recipe, a broken YAML file, and two image folders with one fault each."""
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
    return SimpleNamespace(tmp=tmp_path, good=str(good), empty=empty, unreadable=unreadable)


def damaged_run(files, name: str, damage: dict[str, str]):
    """A finished run folder (as attnzoo writes it) with some of its files replaced by `damage`."""
    from attnzoo.run.rundir import RunDir

    folder = files.tmp / name / "run-seed0"
    folder.mkdir(parents=True)
    run = RunDir(folder)
    run.write_marker()
    (folder / "recipe.yaml").write_text("name: t\n")
    (folder / "test_metrics.json").write_text('{"top1": 0.5, "variant": "softmax", "seed": 0}')
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    for file, text in damage.items():
        (folder / file).write_text(text)
    return folder


# (id, arguments given the files above, expected message) for each kind of bad input
BAD_INPUTS = [
    ("damaged_metrics_on_report", lambda f: ["report", str(damaged_run(f, "s1", {"metrics.jsonl": '{"epoch": 1\n'}).parent)],
     "metrics.jsonl' line 1 is not a JSON row"),
    ("damaged_recipe_on_resume", lambda f: ["train", f.good, f"output_dir={damaged_run(f, 's2', {'recipe.yaml': 'a: [1,'})}",
                                            "--resume"], "recipe.yaml' is not valid YAML"),
    ("missing_recipe", lambda f: ["train", str(f.tmp / "missing.yaml")], "recipe file"),
    ("bad_yaml", lambda f: ["train", str(f.tmp / "bad.yaml")], "is not valid YAML at line"),
    ("misspelled_key", lambda f: ["validate", f.good, "optim.weight_decy=1"],
     "unknown key (did you mean 'weight_decay'?)"),
    ("not_an_integer", lambda f: ["validate", f.good, "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    ("negative_lr", lambda f: ["validate", f.good, "optim.lr=-1"], "optim.lr: must be > 0"),
    ("patch_size", lambda f: ["validate", f.good, "model.patch_size=5"], "does not divide model.image_size"),
    ("heads", lambda f: ["validate", f.good, "model.heads=3"], "does not divide model.dim"),
    ("zero_epochs", lambda f: ["validate", f.good, "train.epochs=0"], "train.epochs: must be at least 1"),
    ("unknown_variant", lambda f: ["validate", f.good, "attention.name=sofmax"], "Unknown attention variant 'sofmax'"),
    ("unknown_option", lambda f: ["validate", f.good, "attention.name=cosine", "attention.temp=2"],
     "has no option 'temp'"),
    ("override_without_value", lambda f: ["validate", f.good, "optim.lr"], "expected key=value"),
    ("missing_folder", lambda f: ["train", f.good, "data.dataset=imagefolder", f"data.root={f.tmp / 'nowhere'}"],
     "not found"),
    ("empty_class", lambda f: ["train", f.good, "data.dataset=imagefolder", f"data.root={f.empty}"], "has no images"),
    ("unreadable_image", lambda f: ["train", f.good, "data.dataset=imagefolder", f"data.root={f.unreadable}"],
     "cannot read image"),
    ("nothing_to_resume", lambda f: ["train", f.good, "--resume"], "holds no run to resume"),
    ("misspelled_bundled_recipe", lambda f: ["cp", "cifar100-sed", str(f.tmp / "x.yaml")],
     "did you mean 'cifar100-seed'"),
    ("missing_plugin", lambda f: ["validate", f.good, "requires_plugins=[attnzoo-nonexistent>=0.2]"],
     "attnzoo-nonexistent is not installed"),
    # a bundled recipe is named as the user gave it, not by its installed path
    ("bundled_recipe_typo", lambda f: ["validate", "tiny", "train.epoch=1"],
     "recipe 'tiny' has 1 problem(s):\n  - train.epoch: unknown key"),
    ("bundled_bench_typo", lambda f: ["bench", "bench.stepz=1"], "recipe 'bench' has 1 problem(s)"),
    ("eval_a_study", lambda f: ["eval", str(study_folder(f.tmp))],
     "is a study; evaluate one of its runs:\n  attnzoo eval "),
    ("eval_seed_without_corruptions", lambda f: ["eval", str(f.tmp / "run"), "--seed", "3"],
     "does nothing without --corruptions. Add --corruptions: attnzoo eval "),
    # values out of range or not finite: each refused at validation naming its key and range
    ("betas_above_one", lambda f: ["validate", f.good, "optim.betas=[0.9,1.5]"],
     "optim.betas: each must be in [0, 1) (e.g. [0.9, 0.999]), got [0.9, 1.5]"),
    ("huge_seed", lambda f: ["validate", f.good, "train.seed=1e30"], "train.seed: must be between 0 and 4294967295"),
    ("huge_batch", lambda f: ["train", f.good, "train.batch_size=1e9"],
     "train.batch_size: must be between 1 and 1048576, got 1000000000"),
    ("infinite_weight_decay", lambda f: ["validate", f.good, "optim.weight_decay=.inf"],
     "optim.weight_decay: must be a finite number, got inf"),
    ("nan_warmup", lambda f: ["validate", f.good, "optim.warmup_epochs=.nan"],
     "optim.warmup_epochs: must be a finite number, got nan"),
    ("nan_min_lr", lambda f: ["validate", f.good, "optim.min_lr=.nan"], "optim.min_lr: must be a finite number, got nan"),
    ("infinite_rotation", lambda f: ["validate", f.good, "data.augment.rotation=.inf"],
     "data.augment.rotation: must be a finite number >= 0 (0 = off), got inf"),
    ("negative_crop_padding", lambda f: ["validate", f.good, "data.augment.crop_padding=-4"],
     "data.augment.crop_padding: must be >= 0 pixels (set data.augment.crop=false to turn the crop off), got -4"),
    ("zero_bench_rounds", lambda f: ["bench", "tiny", "bench.rounds=0"], "bench.rounds: must be at least 1, got 0"),
    ("zero_bench_batch", lambda f: ["bench", "tiny", "bench.batch_size=0"], "bench.batch_size: must be at least 1, got 0"),
    ("zero_bench_steps", lambda f: ["bench", "tiny", "bench.steps=0"], "bench.steps: must be at least 1, got 0"),
    ("huge_image_size", lambda f: ["train", f.good, "data.dataset=imagefolder", f"data.root={f.unreadable}",
                                   "model.image_size=1e6"], "model.image_size: must be between 1 and 4096, got 1000000"),
    ("output_dir_is_a_file", lambda f: ["train", f.good, f"output_dir={f.tmp / 'bad.yaml'}"],
     f"is an existing file, not a folder; set output_dir=... to a folder"),
    ("duplicate_seeds", lambda f: ["validate", f.good, "seeds=[0,1,0]"], "seeds: [0] listed twice in [0, 1, 0]"),
    ("duplicate_grid_values", lambda f: ["validate", f.good, "grid={model.depth: [1, 2, 1]}"],
     "grid.model.depth: a value is listed twice in [1, 2, 1]"),
    ("archive_as_data_root", lambda f: ["train", f.good, "data.dataset=imagefolder", f"data.root={f.tmp / 'imgs.tar.gz'}"],
     "is an archive; extract it first (mkdir -p "),
    ("alias_bomb", lambda f: ["validate", str(alias_bomb_file(f.tmp))], "is too large to be a recipe"),
]


def alias_bomb_file(tmp_path):
    """A 10**9-value alias bomb in 9 lines."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["name: *a8"]) + "\n")
    return tmp_path / "bomb.yaml"


def study_folder(tmp_path):
    study = tmp_path / "study"
    for run in ("softmax-seed0", "cosine-seed0"):
        (study / run).mkdir(parents=True)
        (study / run / "recipe.yaml").write_text("name: t\n")
    (study / "study.yaml").write_text("name: t\n")
    return study


@pytest.mark.parametrize("argv,message", [pytest.param(a, m, id=i) for i, a, m in BAD_INPUTS])
def test_every_bad_input_is_one_clear_message(capsys, files, argv, message):
    code, _, err = run(capsys, *argv(files))
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and err.startswith("attnzoo: error: "), err
    assert "core/attnzoo/recipes" not in err, err


@pytest.mark.slow
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


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnzoo", "validate", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr


@pytest.mark.parametrize("argv, code, stream, expected, unexpected", [
    (["--version"], 0, "out", "attnzoo 0.1.0\n", None),
    (["train", "--help"], 0, "out", "exit status: 0 done; 2 a user error", None),
    (["--help"], 0, "out", "75 a run", None),
    (["train"], 2, "err", "the following arguments are required: recipe\n", "recipe, key=value"),
    (["study"], 2, "err", "the following arguments are required: recipe\n", "recipe, key=value"),
])
def test_argument_messages(capsys, argv, code, stream, expected, unexpected):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    text = out if stream == "out" else err
    assert info.value.code == code and expected in text, text
    assert unexpected is None or unexpected not in text, text


@pytest.mark.parametrize("argv, expected", [
    (["train", "my recipes/r.yaml", "train.epochs=4", "description=a b"],
     "attnzoo train 'my recipes/r.yaml' train.epochs=4 'description=a b' --resume"),
    (["train", "r.yaml", "--resume", "runs/x/checkpoints/epoch-0001-step-000003"], "attnzoo train r.yaml --resume"),
    (["--debug", "train", "r.yaml", "--auto-resume"], "attnzoo --debug train r.yaml --auto-resume"),
    (["study", "recipes/s.yaml", "variants=[softmax, cosine]"], "attnzoo study recipes/s.yaml 'variants=[softmax, cosine]'"),
])
def test_continue_command_is_the_command_as_typed(argv, expected, monkeypatch):
    from attnzoo.cli import build_parser, continue_command

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert continue_command(build_parser().parse_args(argv)) == expected


@pytest.mark.parametrize("argv,resume,overrides", [
    (["train", "r.yaml", "--resume"], True, []),
    (["train", "r.yaml", "--resume", "a=1", "b=2"], True, ["a=1", "b=2"]),
    (["train", "r.yaml", "--resume", "ckpt", "a=1"], "ckpt", ["a=1"]),
    (["train", "r.yaml", "x=0", "--resume", "ckpt"], "ckpt", ["x=0"]),
    (["train", "r.yaml", "x=0", "--resume", "a=1", "x=2"], True, ["x=0", "a=1", "x=2"]),  # typed order: last wins
    (["study", "s.yaml", "a=1"], None, ["a=1"]),
])
def test_overrides_are_taken_before_and_after_flags(argv, resume, overrides):
    from attnzoo.cli import parse_command_line

    args = parse_command_line(argv)
    assert args.overrides == overrides
    assert getattr(args, "resume", None) == resume


def test_a_stray_word_after_the_overrides_is_an_error(capsys):
    from attnzoo.cli import parse_command_line

    with pytest.raises(SystemExit) as stop:
        parse_command_line(["train", "r.yaml", "--resume", "a=1", "stray"])
    assert stop.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


@pytest.mark.parametrize("argv,recipe,overrides", [
    (["bench"], "bench", []),
    (["bench", "bench.variants=[softmax]"], "bench", ["bench.variants=[softmax]"]),
    (["bench", "tiny", "train.batch_size=8"], "tiny", ["train.batch_size=8"]),
])
def test_bench_takes_an_optional_recipe_then_overrides(argv, recipe, overrides, monkeypatch):
    from attnzoo import cli

    seen = {}
    monkeypatch.setattr(cli.recipes, "load", lambda path, words, name, registry: seen.update(name=name, words=words))
    monkeypatch.setattr("attnzoo.run.bench.run_bench", lambda recipe, as_json, **where: None)
    assert cli.main(argv) == 0
    assert seen == {"name": recipe, "words": overrides}


def test_strict_plugins_is_an_argument_not_the_environment(monkeypatch):
    import os
    from types import SimpleNamespace

    from attnzoo import cli

    monkeypatch.delenv("ATTNZOO_STRICT_PLUGINS", raising=False)
    asked = []
    monkeypatch.setattr("attnzoo.contract.registry.default_registry", lambda strict=None: asked.append(strict) or SimpleNamespace(plugins=[]))
    assert cli.main(["--strict-plugins", "plugins"]) == 0 and cli.main(["plugins"]) == 0
    assert asked == [True, None]  # None: the environment decides, as for any other caller
    assert "ATTNZOO_STRICT_PLUGINS" not in os.environ
