"""Adversarial evaluation: FGSM, PGD and Square on small models trained here, the masking checks,
attacks.json from `attnzoo eval RUN --attack`, and the report's robustness section."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from attnzoo.cli import main
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.run.attacks import AttackSettings, attack_batch, fgsm, masking_checks, pgd, square
from attnzoo.run.trainer import train
from attnzoo.study.plan import run_study
from attnzoo.study.tradeoffs import robustness_section
from conftest import tiny_recipe_dict
from test_tradeoffs import corrupted, run

EPS = [e / 255 for e in (1, 2, 4, 8)]
SIGNAL = 3  # pixel levels


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: a second thread only waits on the first (and on a busy machine, a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separable_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 3x8x8 images in [0, 1]: grey plus or minus SIGNAL/255 everywhere, plus noise.
    Every pixel carries the class, so an L-inf budget of 8/255 can erase it and 1/255 cannot."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    signal = (y.float() * 2 - 1).view(n, 1, 1, 1) * (SIGNAL / 255)
    x = 0.5 + signal + 0.02 * torch.randn(n, 3, 8, 8, generator=g)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on the CPU to ~100 % clean accuracy; a second for the held-out images."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    x, y = separable_images(2048, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        batch = slice((step * 128) % 2048, (step * 128) % 2048 + 128)
        loss = torch.nn.functional.cross_entropy(model((x[batch] - 0.5) / 0.1), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return lambda images: model((images - 0.5) / 0.1)  # its own normalisation, as a run's loader applies


def accuracy(classify, x, y) -> float:
    with torch.no_grad():
        return (classify(x).argmax(1) == y).float().mean().item()


def test_eps_zero_gives_the_clean_images_and_accuracy_exactly(trained):
    x, y = separable_images(256, 1)
    settings = AttackSettings(epsilons_255=(0, 4), pgd_steps=5, check_steps=10, square_queries=20)
    out = attack_batch(trained, x, y, settings)
    clean = out["clean"].float().mean().item()
    assert clean == accuracy(trained, x, y) > 0.95
    for name in ("fgsm", "pgd", "square"):
        assert torch.equal(out[(name, 0)], out["clean"]), name
    assert torch.equal(pgd(trained, x, y, 0.0, 5, torch.Generator()), x)


@pytest.mark.parametrize("eps", EPS)
def test_every_adversarial_image_stays_within_eps_and_in_the_unit_cube(trained, eps):
    x, y = separable_images(128, 2)
    x[:8] = 0.0  # images at the edges of [0, 1]: the ball is cut by the cube
    x[8:16] = 1.0
    for adv in (fgsm(trained, x, y, eps), pgd(trained, x, y, eps, 7, torch.Generator().manual_seed(0)),
                square(trained, x, y, eps, 50, torch.Generator().manual_seed(0))):
        assert (adv - x).abs().max().item() <= eps + 1e-6
        assert adv.min().item() >= 0 and adv.max().item() <= 1
        assert not torch.equal(adv, x)  # it did move


def test_pgd_at_8_drives_accuracy_far_below_clean_and_falls_over_the_eps_list(trained):
    x, y = separable_images(512, 3)
    settings = AttackSettings(pgd_steps=10, check_steps=20, square_queries=50)
    out = attack_batch(trained, x, y, settings)
    clean = out["clean"].float().mean().item()
    pgd_top1 = [out[("pgd", i)].float().mean().item() for i in range(4)]
    fgsm_top1 = [out[("fgsm", i)].float().mean().item() for i in range(4)]
    assert clean > 0.95 and pgd_top1[-1] < 0.1  # 8/255 erases the 3/255 signal
    assert pgd_top1[0] > 0.8  # 1/255 does not
    assert pgd_top1 == sorted(pgd_top1, reverse=True) and pgd_top1[0] > pgd_top1[-1]
    assert fgsm_top1 == sorted(fgsm_top1, reverse=True)
    assert all(p <= f for p, f in zip(pgd_top1, fgsm_top1))  # PGD, starting anywhere in the ball, is no weaker


class Quantised(torch.nn.Module):
    """8-bit input quantisation by rounding: the forward pass is almost the identity, the gradient
    is exactly zero (round has no straight-through gradient), so gradient attacks see nothing."""

    def __init__(self, classify):
        super().__init__()
        self.classify = classify

    def forward(self, x):
        return self.classify(torch.round(x * 255) / 255)


def test_square_breaks_a_model_whose_gradients_are_masked_where_pgd_fails(trained):
    masked = Quantised(trained)
    x, y = separable_images(128, 4)
    eps = 8 / 255
    assert accuracy(masked, x, y) > 0.95
    pgd_top1 = accuracy(masked, pgd(masked, x, y, eps, 10, torch.Generator().manual_seed(0)), y)
    square_top1 = accuracy(masked, square(masked, x, y, eps, 300, torch.Generator().manual_seed(0)), y)
    assert pgd_top1 > 0.8  # the random start alone, no gradient to follow
    assert square_top1 < 0.1
    # The checks name what gave it away.
    settings = AttackSettings(pgd_steps=10, check_steps=20, square_queries=300)
    out = attack_batch(masked, x, y, settings)
    result = {"samples": len(y), **{k: v.float().mean().item() for k, v in out.items()}}
    result["clean_top1"], result["zero_gradient_fraction"] = result.pop("clean"), result.pop("zero_gradient")
    checks = masking_checks(result, settings)
    assert checks["suspect"] and checks["zero_gradient_fraction"] == 1.0 and checks["flat_at_largest_eps"]
    assert checks["square_beats_pgd"][-2:] == [4, 8]
    assert any("zero input gradient" in r for r in checks["reasons"])
    # The plain model raises none of them.
    out = attack_batch(trained, x, y, settings)
    result = {"samples": len(y), **{k: v.float().mean().item() for k, v in out.items()}}
    result["clean_top1"], result["zero_gradient_fraction"] = result.pop("clean"), result.pop("zero_gradient")
    assert masking_checks(result, settings)["reasons"] == []


def test_masking_checks_catch_rising_accuracy_and_weaker_long_pgd():
    settings = AttackSettings(pgd_steps=10, check_steps=50)
    result = {"samples": 1000, "clean_top1": 0.9, "zero_gradient_fraction": 0.0,
              ("pgd", 0): 0.6, ("pgd", 1): 0.3, ("pgd", 2): 0.5, ("pgd", 3): 0.2, ("pgd_check", 3): 0.25,
              **{("square", i): v for i, v in enumerate((0.6, 0.3, 0.5, 0.2))}}
    checks = masking_checks(result, settings)
    assert checks["rises_with_eps"] == [4] and checks["more_steps_weaker"] and checks["suspect"]
    assert checks["reasons"] == ["PGD accuracy rises as eps grows (at eps 4/255)",
                                 "PGD with 50 steps is weaker than with 10"]
    result[("pgd", 2)], result[("pgd_check", 3)] = 0.31, 0.21  # within the tolerance: nothing
    assert masking_checks(result, settings)["reasons"] == []


def test_bad_budgets_are_a_clear_error():
    with pytest.raises(AttnzooError, match="pixel levels between 0 and 255"):
        AttackSettings(epsilons_255=(1, 300))
    with pytest.raises(AttnzooError, match="robustness.attack_epsilons"):
        recipes.from_dict({"robustness": {"attack_epsilons": [-1]}}, check_plugins=False)


# ---------------------------------------------------------------- a run, through the CLI


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacked")
    data = tiny_recipe_dict(tmp, data={"max_train_samples": 256, "max_eval_samples": 60},
                            train={"epochs": 2, "batch_size": 32})
    train(recipes.from_dict(data))
    return tmp / "run"


@pytest.mark.slow
def test_eval_attack_writes_attacks_json_beside_the_run(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["eval", str(run), "--attack", "--eps", "0", "2", "8"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "attacks.json").read_text())
    assert record["weights"] == "best.safetensors" and record["seed"] == 0 and record["samples"] == 60
    assert record["epsilons_255"] == [0, 2, 8] and record["epsilons"] == pytest.approx([0, 2 / 255, 8 / 255])
    assert set(record["attacks"]) == {"fgsm", "pgd", "square"}
    test = json.loads((run / "test_metrics.json").read_text())
    assert record["clean_top1"] == pytest.approx(test["top1"], abs=1e-6)  # the best epoch's weights, as tested
    for name, r in record["attacks"].items():
        assert r["top1"][0] == record["clean_top1"], name  # eps 0: the clean accuracy exactly
        assert r["top1"][-1] <= record["clean_top1"], name
    assert record["robust_top1"] == [min(r["top1"][i] for r in record["attacks"].values()) for i in range(3)]
    assert set(record["masking"]) >= {"zero_gradient_fraction", "rises_with_eps", "more_steps_weaker",
                                      "square_beats_pgd", "suspect", "reasons"}
    assert "pgd" in out and "square" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "attacks.json"} == before


@pytest.mark.slow
def test_eval_attack_without_best_weights_is_one_clear_message(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "best.safetensors").unlink()
    assert main(["eval", str(run), "--attack"]) == 2
    err = capsys.readouterr().err
    assert "has no best.safetensors" in err and "attack it" in err and "Traceback" not in err
    assert not (run / "attacks.json").exists()


# ---------------------------------------------------------------- the report


def attacked(clean: float, robust: list[float], reasons: list[str] | None = None) -> dict:
    return {"epsilons_255": [1, 2, 4, 8], "clean_top1": clean, "robust_top1": robust,
            "masking": {"reasons": reasons or []}}


def test_the_robustness_section_sets_attacks_beside_corruptions_and_flags_masking():
    arms = {"softmax": [run("softmax", 0, 0.8, corruptions=corrupted(0.8, [0.6] * 5, [0.4] * 5)),
                        run("softmax", 1, 0.6, corruptions=corrupted(0.6, [0.4] * 5, [0.2] * 5))],
            "sparsemax": [run("sparsemax", 0, 0.7, corruptions=corrupted(0.7, [0.5] * 5, [0.3] * 5))]}
    arms["softmax"][0].attacks = attacked(0.8, [0.5, 0.3, 0.1, 0.0])
    arms["softmax"][1].attacks = attacked(0.6, [0.3, 0.1, 0.1, 0.0])
    arms["sparsemax"][0].attacks = attacked(0.7, [0.7, 0.7, 0.7, 0.7], ["PGD at 8/255 leaves the accuracy where it is clean"])
    section = robustness_section(arms)
    header, _, softmax, sparsemax = section.lines[0].splitlines()
    assert header.endswith("| gaussian blur (%) | attacked ε=1/255 (%) | attacked ε=2/255 (%) | attacked ε=4/255 (%) "
                           "| attacked ε=8/255 (%) | gradient masking |")
    assert softmax.endswith("| 30.00 ± 14.14 | 40.00 ± 14.14 | 20.00 ± 14.14 | 10.00 | 0.00 | no |")
    assert sparsemax.endswith("| 30.00 | 70.00 | 70.00 | 70.00 | 70.00 | **suspected** |")
    assert ("- **sparsemax**: gradient masking suspected: PGD at 8/255 leaves the accuracy where it is clean. "
            "Its attacked accuracy may overstate its robustness.") in section.lines
    assert [p.name for p in section.figures] == ["robustness.png", "attacks.png"]
    assert "![Accuracy under attack](figures/attacks.png)" in section.lines
    assert section.columns["softmax"]["attacked_top1_eps8_mean"] == 0.0
    assert section.columns["sparsemax"]["gradient_masking_suspected"] is True
    # Attacks alone make a section too, with their own clean column.
    for runs in arms.values():
        for r in runs:
            r.corruptions = None
    header, _, softmax, _ = robustness_section(arms).lines[0].splitlines()
    assert header.startswith("| variant | seeds | clean top-1, float32 (%) | attacked ε=1/255 (%)")
    assert softmax == "| softmax | 2 | 70.00 ± 14.14 | 40.00 ± 14.14 | 20.00 ± 14.14 | 10.00 | 0.00 | no |"


@pytest.mark.slow
def test_a_two_variant_study_reports_attacks_beside_corruptions(tmp_path, builtin_registry):
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "study"), variants=["softmax", "cosine"],
                            data={"max_train_samples": 256, "max_eval_samples": 40},
                            robustness={"corruptions": True, "attacks": True, "attack_epsilons": [2, 8]})
    run_study(recipes.from_dict(data, registry=builtin_registry))
    study = tmp_path / "study"
    for arm in ("softmax", "cosine"):
        record = json.loads((study / f"{arm}-seed0" / "attacks.json").read_text())
        assert record["epsilons_255"] == [2, 8] and record["samples"] == 40 and record["variant"] == arm
    markdown = (study / "results.md").read_text()
    robustness = markdown[markdown.index("## Robustness"):]
    table = robustness.split("\n\n")[1].splitlines()  # the section's first paragraph after its title
    assert "| gaussian noise (%) |" in table[0] and table[0].endswith("| attacked ε=2/255 (%) | attacked ε=8/255 (%) "
                                                                       "| gradient masking |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| softmax", "| cosine"]
    assert "![Accuracy under attack](figures/attacks.png)" in robustness
    assert (study / "figures" / "attacks.png").is_file()
