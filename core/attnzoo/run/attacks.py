"""Accuracy of a run's best checkpoint under adversarial attacks, written to attacks.json.

Three L-infinity attacks at a list of budgets eps, given in pixel units (4/255: each pixel of
each channel moves by at most 4 of its 255 levels):

- FGSM: one signed gradient step of size eps.
- PGD with a random start in the eps-ball, `pgd_steps` signed steps of 2.5 * eps / steps,
  each followed by the projection back into the ball and into [0, 1]. An input counts as
  broken when any iterate is misclassified.
- Square (Andriushchenko et al., 2020, "Square Attack: a query-efficient black-box adversarial
  attack via random search"): random search over square patches set to +-eps, which needs no
  gradient at all.

Attacks run in [0, 1] pixel space, on the uint8 test images the loader hands over unnormalised,
and go through the model's own normalisation (Loader.scale), so eps means the same for every
run whatever its mean and std. The model runs in float32 (the mixed-precision wrapper taken
off): half-precision gradients round small slopes to zero, which would look like robustness.

Sparsemax, entmax and ReLU attention pass zero gradient outside their support, so a gradient
attack can overstate their robustness. The masking checks look for the usual signs: inputs with
an exactly zero input gradient, accuracy that does not fall as eps grows, PGD with more steps
weaker than with fewer, and a gradient-free attack (Square) that beats the gradient one.

Random starts and Square's search are drawn from (seed, attack, eps, batch, process), so a
result is reproducible for a seed, a batch size and a number of processes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from attnzoo.data.loader import step_seed
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir

ATTACKS = "attacks.json"  # in the run folder, beside corruptions.json
WEIGHTS = rundir.BEST_WEIGHTS  # evaluated: the weights of the best validation epoch, as for corruptions
DEFAULT_EPSILONS_255 = (1, 2, 4, 8)  # in pixel levels; eps = level / 255
NAMES = ("fgsm", "pgd", "square")

# Masking checks: a difference counts when it is larger than this share of the test images (and
# than one image), so one image flipping back and forth is not called masking.
TOLERANCE = 0.02
ZERO_GRADIENT_LIMIT = 0.1  # more inputs than this with an exactly zero gradient: suspect


@dataclass(frozen=True)
class AttackSettings:
    """What is attacked and how hard; recorded in attacks.json."""

    epsilons_255: tuple[float, ...] = DEFAULT_EPSILONS_255
    pgd_steps: int = 10
    check_steps: int = 50  # the stronger PGD of the masking check, at the largest eps only
    square_queries: int = 300  # model evaluations per image (fewer when it is broken sooner)
    square_p_init: float = 0.05  # the first square covers this share of the image (the paper's L-inf value)
    seed: int | None = None  # None: the run's train.seed
    epsilons: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        bad = [e for e in self.epsilons_255 if not (isinstance(e, (int, float)) and 0 <= e <= 255)]
        if bad or not self.epsilons_255:
            raise AttnzooError(f"attack epsilons {list(self.epsilons_255)!r}: give one or more budgets in pixel "
                               "levels between 0 and 255, e.g. 1 2 4 8 (for 1/255 ... 8/255)")
        if self.pgd_steps < 1 or self.check_steps < 1 or self.square_queries < 1:
            raise AttnzooError("attack steps and queries must be at least 1")
        object.__setattr__(self, "epsilons_255", tuple(sorted(self.epsilons_255)))
        object.__setattr__(self, "epsilons", tuple(e / 255 for e in self.epsilons_255))


# ---------------------------------------------------------------- the attacks, on one batch
#
# `classify` maps images in [0, 1] (B, 3, H, W) to logits; `x` holds such images, `y` the labels.


def project(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """`adv` moved back into the L-inf ball of radius eps around `x`, and into [0, 1]."""
    return torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)


def input_gradient(classify, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, gradient of the summed cross-entropy with respect to `x`); summed, not averaged,
    so an image's gradient does not shrink with the batch it is in."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classify(x).float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return logits.detach(), grad


def fgsm(classify, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    if eps == 0:
        return x.clone()
    _, grad = input_gradient(classify, x, y)
    return project(x + eps * grad.sign(), x, eps)


def pgd(classify, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD with a random start; per image the first misclassified iterate, else the last."""
    if eps == 0:
        return x.clone()
    step_size = 2.5 * eps / steps  # reaches the ball's edge from anywhere in it, with room to move along it
    start = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    adv = project(x + eps * start, x, eps)
    found, broken = adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        logits, grad = input_gradient(classify, adv, y)
        broken = _keep_broken(found, broken, adv, logits, y)
        adv = project(adv + step_size * grad.sign(), x, eps)
    with torch.no_grad():
        broken = _keep_broken(found, broken, adv, classify(adv).float(), y)
    found[~broken] = adv[~broken]
    return found


def _keep_broken(found, broken, adv, logits, y) -> torch.Tensor:
    """Copy into `found` the images of `adv` misclassified for the first time; the new `broken`."""
    new = (logits.argmax(1) != y) & ~broken
    found[new] = adv[new]
    return broken | new


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true class's logit minus the best other one: below zero means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def square_side(p_init: float, query: int, queries: int, height: int, width: int) -> int:
    """The side of the square Square tries at `query`: its share of the image halves on the paper's
    schedule (queries rescaled to 10,000), at least one pixel, less than the image."""
    it = int(query / queries * 10_000)
    halvings = sum(it > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    p = p_init / 2 ** halvings
    return min(max(int(round(math.sqrt(p * height * width))), 1), min(height, width) - 1)


@torch.no_grad()
def square(classify, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, generator: torch.Generator,
           p_init: float = 0.05) -> torch.Tensor:
    """The L-inf Square attack: start at a vertical-stripe perturbation of +-eps, then per query set a
    random square (the same place for the batch, a random sign per image and channel) to +-eps and
    keep it where it lowers the margin. Stops on an image once it is misclassified."""
    if eps == 0:
        return x.clone()
    n, c, h, w = x.shape

    def signs(*shape):
        return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1

    adv = project(x + eps * signs(n, c, 1, w), x, eps)
    best = margin(classify(adv).float(), y)
    for query in range(1, queries):
        active = (best > 0).nonzero().squeeze(1)
        if not len(active):
            break
        side = square_side(p_init, query, queries, h, w)
        top, left = (int(torch.randint(0, size - side + 1, (1,), generator=generator, device=x.device))
                     for size in (h, w))
        base = x[active]
        delta = adv[active] - base
        delta[:, :, top:top + side, left:left + side] = eps * signs(len(active), c, 1, 1)
        candidate = project(base + delta, base, eps)
        tried = margin(classify(candidate).float(), y[active])
        better = tried < best[active]
        adv[active[better]] = candidate[better]
        best[active[better]] = tried[better]
    return adv


# ---------------------------------------------------------------- a loader's test images


def _generator(device, settings: AttackSettings, code: int, batch: int, rank: int) -> torch.Generator:
    seed = settings.seed if settings.seed is not None else 0  # a run fills in its own; a bare batch: 0
    return torch.Generator(device=device).manual_seed(step_seed(seed, code, batch, rank))


def attack_batch(classify, x: torch.Tensor, y: torch.Tensor, settings: AttackSettings, batch: int = 0,
                 rank: int = 0) -> dict:
    """Every attack at every eps on one batch: {"clean", "zero_gradient", (name, i): correct per image}."""
    logits, grad = input_gradient(classify, x, y)
    out = {"clean": logits.argmax(1) == y, "zero_gradient": grad.flatten(1).abs().amax(1) == 0}
    last = len(settings.epsilons) - 1
    for i, eps in enumerate(settings.epsilons):
        gen = lambda code: _generator(x.device, settings, 10 * i + code, batch, rank)  # noqa: E731
        attacks = {"fgsm": lambda: fgsm(classify, x, y, eps),
                   "pgd": lambda: pgd(classify, x, y, eps, settings.pgd_steps, gen(1)),
                   "square": lambda: square(classify, x, y, eps, settings.square_queries, gen(2),
                                            settings.square_p_init)}
        if i == last:
            attacks["pgd_check"] = lambda: pgd(classify, x, y, eps, settings.check_steps, gen(3))
        for name, attack in attacks.items():
            adv = attack()
            with torch.no_grad():
                out[(name, i)] = classify(adv).float().argmax(1) == y
    return out


def float32_classifier(model: torch.nn.Module, loader, accelerator):
    """images in [0, 1] -> logits of the eager model in float32, normalised as in training."""
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False).float().eval()
    return lambda x: model(loader.scale(x))


def attack_loader(classify, loader, settings: AttackSettings, accelerator, progress: bool = True) -> dict:
    """Top-1 over every test image once (gathered from all processes): {"samples", "clean_top1",
    "zero_gradient_fraction", (name, eps index): top-1}."""
    rank, keys, parts = accelerator.process_index, None, []
    batches = loader.eval_batches(normalized=False)
    bar = tqdm(batches, desc="attacks", leave=False, disable=not (progress and accelerator.is_main_process))
    for batch, (pixels, labels, index) in enumerate(bar):
        out = attack_batch(classify, loader.to_unit(pixels), labels, settings, batch, rank)
        keys = list(out)
        columns = torch.stack([out[k].float() for k in keys] + [index.float()], 1)
        parts.append(accelerator.gather(columns))
    if not parts:
        raise AttnzooError("the run's test split is empty; there is nothing to attack.")
    rows = torch.cat(parts).cpu()
    rows = rows[rows[:, -1] >= 0]  # the padding of uneven shards
    means = rows[:, :-1].mean(0).tolist()
    result = {"samples": len(rows)}
    for key, value in zip(keys, means):
        result[{"clean": "clean_top1", "zero_gradient": "zero_gradient_fraction"}.get(key, key)] = value
    return result


# ---------------------------------------------------------------- the record and its checks


def masking_checks(result: dict, settings: AttackSettings) -> dict:
    """Signs that the gradient attacks overstate robustness, each with its numbers; `suspect` if any."""
    n_eps = len(settings.epsilons)
    tol = max(TOLERANCE, 1 / result["samples"])
    pgd = [result[("pgd", i)] for i in range(n_eps)]
    square = [result[("square", i)] for i in range(n_eps)]
    check = result[("pgd_check", n_eps - 1)]
    rises = [settings.epsilons_255[i] for i in range(1, n_eps) if pgd[i] > min(pgd[:i]) + tol]
    square_wins = [settings.epsilons_255[i] for i in range(n_eps) if square[i] < pgd[i] - tol]
    flat = settings.epsilons[-1] > 0 and result["clean_top1"] > 0 and pgd[-1] >= result["clean_top1"] - tol
    reasons = []
    if result["zero_gradient_fraction"] > ZERO_GRADIENT_LIMIT:
        reasons.append(f"{100 * result['zero_gradient_fraction']:.0f} % of the test images have an exactly "
                       "zero input gradient")
    if rises:
        reasons.append("PGD accuracy rises as eps grows (at eps " + ", ".join(f"{e:g}/255" for e in rises) + ")")
    if flat:
        reasons.append(f"PGD at {settings.epsilons_255[-1]:g}/255 leaves the accuracy where it is clean")
    if check > pgd[-1] + tol:
        reasons.append(f"PGD with {settings.check_steps} steps is weaker than with {settings.pgd_steps}")
    if square_wins:
        reasons.append("the gradient-free Square attack beats PGD (at eps "
                       + ", ".join(f"{e:g}/255" for e in square_wins) + ")")
    return {"zero_gradient_fraction": result["zero_gradient_fraction"], "rises_with_eps": rises,
            "flat_at_largest_eps": flat,
            "pgd_more_steps": {"steps": settings.check_steps, "eps": settings.epsilons[-1], "top1": check},
            "more_steps_weaker": check > pgd[-1] + tol, "square_beats_pgd": square_wins,
            "tolerance": tol, "suspect": bool(reasons), "reasons": reasons}


def build_record(result: dict, settings: AttackSettings, variant: str, device: str, world_size: int,
                 seconds: float) -> dict:
    """attacks.json: what was attacked how, the clean accuracy, top-1 per attack and eps, the
    worst case over attacks (robust_top1) and the masking checks."""
    n_eps = len(settings.epsilons)
    attacks = {name: {"top1": [result[(name, i)] for i in range(n_eps)]} for name in NAMES}
    attacks["pgd"].update(steps=settings.pgd_steps, step_size="2.5 * eps / steps", random_start=True)
    attacks["square"].update(queries=settings.square_queries, p_init=settings.square_p_init)
    robust = [min(attacks[name]["top1"][i] for name in NAMES) for i in range(n_eps)]
    return {
        "weights": WEIGHTS, "variant": variant, "seed": settings.seed, "samples": result["samples"],
        "norm": "linf", "epsilons_255": list(settings.epsilons_255), "epsilons": list(settings.epsilons),
        "clean_top1": result["clean_top1"], "attacks": attacks, "robust_top1": robust,
        "masking": masking_checks(result, settings),
        "settings": {k: v for k, v in asdict(settings).items() if k != "epsilons"},
        "precision": "float32", "device": device, "world_size": world_size, "seconds": seconds,
    }


def evaluate_attacks(run_dir: Path, *, settings: AttackSettings | None = None, accelerator=None, splits=None,
                     registry=None) -> dict:
    """Adversarial accuracy of the run's best weights; written to <run_dir>/attacks.json and printed.
    Without `settings`: the default budgets; without a seed: the run's train.seed."""
    run_dir = Path(run_dir)
    from attnzoo.run.evaluate import load_best_run

    run = load_best_run(run_dir, accelerator=accelerator, splits=splits, registry=registry, then="attack it")
    settings = settings or AttackSettings()
    if settings.seed is None:
        settings = replace(settings, seed=run.recipe.train.seed)
    started = time.perf_counter()
    classify = float32_classifier(run.model, run.test_loader, run.accelerator)
    result = attack_loader(classify, run.test_loader, settings, run.accelerator)
    record = build_record(result, settings, run.recipe.attention.name, str(run.accelerator.device),
                          run.accelerator.num_processes, time.perf_counter() - started)
    if run.accelerator.is_main_process:
        rundir.write_text(run_dir / ATTACKS, json.dumps(record, indent=1))
        print(summary(record, run_dir), flush=True)
    return record


def summary(record: dict, run_dir: Path) -> str:
    lines = [f"{run_dir}: {record['variant']} ({record['weights']}) on {record['samples']} test images, "
             f"clean top1 {record['clean_top1']:.4f} (float32)",
             f"{'attack':<10}" + "".join(f"{f'{e:g}/255':>10}" for e in record["epsilons_255"])]
    for name, r in record["attacks"].items():
        lines.append(f"{name:<10}" + "".join(f"{v:>10.4f}" for v in r["top1"]))
    lines.append(f"{'worst':<10}" + "".join(f"{v:>10.4f}" for v in record["robust_top1"]))
    masking = record["masking"]
    if masking["suspect"]:
        lines.append("gradient masking suspected: " + "; ".join(masking["reasons"]))
    lines.append(f"{record['seconds']:.1f}s -> {Path(run_dir) / ATTACKS}")
    return "\n".join(lines)


def _needs_attacks(run_dir: Path, settings: AttackSettings) -> bool:
    """A finished run without attacks.json, or with one made with another seed or other budgets."""
    run = rundir.RunDir(run_dir)
    if not run.is_finished() or not run.best_weights.is_file():
        return False
    path = Path(run_dir) / ATTACKS
    if not path.is_file():
        return True
    try:
        wanted = settings.seed if settings.seed is not None else run.read_test_metrics()["seed"]
        record = json.loads(path.read_text())
        return record["seed"] != wanted or record["epsilons_255"] != list(settings.epsilons_255)
    except (ValueError, KeyError):
        return True  # unreadable: attack again


def attack_study_runs(run_dirs: list[Path], recipe, accelerator, splits=None) -> None:
    """For a study with `robustness.attacks: true`: attack every finished run not yet attacked."""
    import gc

    from attnzoo.data.pipeline import load_data

    seed = recipe.robustness.seed
    settings = AttackSettings(epsilons_255=tuple(recipe.robustness.attack_epsilons), seed=seed)
    todo = [d for d in run_dirs if _needs_attacks(d, settings)]
    accelerator.wait_for_everyone()  # every process has its list before the main one writes
    for i, run_dir in enumerate(todo, 1):
        accelerator.print(f"[{i}/{len(todo)}] {run_dir.name}: evaluating under adversarial attacks", flush=True)
        splits = splits or load_data(recipe)  # the same data for every run: loaded once
        evaluate_attacks(run_dir, settings=settings, accelerator=accelerator, splits=splits)
        accelerator.free_memory()  # the shared Accelerator holds every model it prepared
        gc.collect()
