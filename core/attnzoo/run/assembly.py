"""Putting a run together from its recipe: the accelerator, data, model, optimizer and the
model's forward pass, apart from the training loop.

Training builds everything here; evaluating a finished run (``attnzoo eval``, robustness)
builds only the data it reads and the model, never an optimizer.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from accelerate import Accelerator

from attnzoo.config.recipe import TIMM_PREFIX, TRACKER_PACKAGES, Recipe, resolve
from attnzoo.contract.registry import KernelFactory
from attnzoo.data.loader import Batching, Loader, Splits
from attnzoo.data.pipeline import make_loader
from attnzoo.errors import AttnzooError
from attnzoo.model import compile as compiling
from attnzoo.model import timm_bridge
from attnzoo.model.vit import VisionTransformer, parameter_groups
from attnzoo.run.metrics import classification_report
from attnzoo.run.rundir import write_text

INIT_REPORT = "init_report.json"  # what model.init_from loaded, resized and re-initialised


def make_accelerator(recipe: Recipe) -> Accelerator:
    """The accelerator, with the recipe's trackers that are installed (check_trackers, called before a run
    trains, refuses a missing one; evaluating a run needs none of them)."""
    log_with = [name for name in tracker_names(recipe) if tracker_installed(name)]
    return Accelerator(mixed_precision=recipe.train.mixed_precision, cpu=not torch.cuda.is_available(),
                       log_with=log_with or None, project_dir=str(recipe.run_dir))


def tracker_names(recipe: Recipe) -> list[str]:
    """train.log_with; when unset, TensorBoard if it is installed (as before train.log_with existed)."""
    if recipe.train.log_with is None:
        return ["tensorboard"] if tracker_installed("tensorboard") else []
    return list(dict.fromkeys(recipe.train.log_with))


def tracker_installed(name: str) -> bool:
    """Whether the tracker's package imports. Imported, not merely found: a broken install fails here,
    before training, instead of at the first log."""
    try:
        if name == "tensorboard":
            import tensorboard  # noqa: F401
        elif name == "wandb":
            import wandb  # noqa: F401
        elif name == "mlflow":
            import mlflow  # noqa: F401
        else:
            importlib.import_module(TRACKER_PACKAGES[name])
    except ImportError:
        return False
    return True


def check_trackers(recipe: Recipe) -> None:
    """Every tracker train.log_with names is installed, or an error naming the pip command."""
    missing = [name for name in tracker_names(recipe) if not tracker_installed(name)]
    if missing:
        packages = " ".join(TRACKER_PACKAGES[name] for name in missing)
        raise AttnzooError(f"train.log_with names {', '.join(missing)}, not installed here: pip install {packages} "
                           "(or remove it from train.log_with). Nothing was trained.")


def tracker_options(recipe: Recipe) -> dict:
    """Per-tracker init arguments: the run's name, its study and arm as tags and group, files in the run folder."""
    run_name = recipe.run_dir.name
    arm = run_name.removesuffix(f"-seed{recipe.train.seed}")
    tags = [recipe.name, arm, recipe.attention.name]
    return {"wandb": {"name": run_name, "group": recipe.name, "tags": list(dict.fromkeys(tags)),
                      "dir": str(recipe.run_dir), "job_type": arm},
            "mlflow": {"run_name": run_name, "tags": {"study": recipe.name, "arm": arm,
                                                      "variant": recipe.attention.name}}}


def apply_train_settings(recipe: Recipe) -> None:
    """Process-wide settings of the recipe, then the seed of the model's initialisation."""
    t = recipe.train
    torch.set_float32_matmul_precision(t.matmul_precision)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(t.seed)


def batching(recipe: Recipe, accelerator: Accelerator) -> Batching:
    """The recipe's global batch split over this launch's processes."""
    return Batching(recipe.train.batch_size, accelerator.num_processes, accelerator.process_index)


def loader(recipe: Recipe, splits: Splits, split: str, accelerator: Accelerator) -> Loader:
    """One split's loader ("train", "val" or "test") on this process's device."""
    return make_loader(getattr(splits, split), recipe, splits, batching=batching(recipe, accelerator),
                       device=accelerator.device)


def build_model(recipe: Recipe, num_classes: int, kernel: KernelFactory | None = None, *,
                starting_weights: bool = True) -> torch.nn.Module:
    """The recipe's ViT: the built-in one (model.arch=attnzoo) or timm's (model.arch=timm/<name>)
    with its attention swapped, starting from model.init_from's weights when the recipe names a
    checkpoint. `kernel` builds its attention kernels: the recipe's variant as resolved for the
    run (``recipes.resolve(recipe, registry).kernel``), or its explicit path (the benchmark's
    naive model); None resolves the recipe in the installed plugins.

    A model started from other weights keeps the report of what was loaded as ``init_report``
    (see :func:`write_init_report`). ``starting_weights=False`` skips model.init_from and
    model.pretrained: for a model whose own trained weights are loaded next (evaluation, cost),
    which then works even where the starting checkpoint is no longer."""
    m = recipe.model
    kernel = kernel if kernel is not None else resolve(recipe).kernel
    if m.arch == "attnzoo":
        model = VisionTransformer(image_size=m.image_size, patch_size=m.patch_size, num_classes=num_classes,
                                  dim=m.dim, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
                                  dropout=m.dropout, kernel=kernel, init=m.init, drop_path=m.drop_path)
    else:
        model = _build_timm_model(recipe, num_classes, kernel, pretrained=m.pretrained and starting_weights)
    if m.init_from is not None and starting_weights:
        state = timm_bridge.read_state_dict(m.init_from)
        model.init_report = timm_bridge.load_initial_weights(model, state, image_size=m.image_size,
                                                             source=str(m.init_from))
        print(timm_bridge.format_init_report(model.init_report), flush=True)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_timm_model(recipe: Recipe, num_classes: int, kernel: KernelFactory, *, pretrained: bool) -> torch.nn.Module:
    """timm's model of model.arch, built with timm's arguments (image size, classes, dropout), its
    attention swapped to `kernel`. Its patch size must be the recipe's: the attention analysis and
    the recipe's checks read the grid of patches from model.patch_size."""
    m = recipe.model
    name = m.arch.removeprefix(TIMM_PREFIX)
    extra = {"drop_path_rate": m.drop_path} if m.drop_path else {}  # timm's own default otherwise
    model = timm_bridge.create_timm_model(name, kernel=kernel, image_size=m.image_size, num_classes=num_classes,
                                          dropout=m.dropout, pretrained=pretrained, **extra)
    patch = timm_bridge.patch_size_of(model)
    if patch != m.patch_size:
        raise AttnzooError(f"model.patch_size: {m.arch} cuts images into {patch}-pixel patches, the recipe says "
                           f"{m.patch_size}; set model.patch_size={patch}")
    if pretrained:
        print(f"initial weights from timm's {name} (pretrained through the Hugging Face Hub; timm resized "
              "what the image size and the number of classes needed)", flush=True)
    return model


def write_init_report(model: torch.nn.Module, run_dir: Path) -> None:
    """init_report.json in the run folder: what model.init_from loaded, resized and re-initialised.
    Nothing is written for a model that started from its own initialisation."""
    report = getattr(model, "init_report", None)
    if report is not None:
        write_text(Path(run_dir) / INIT_REPORT, json.dumps(report, indent=1))


def build_optimizer(recipe: Recipe, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    o = recipe.optim
    fused = o.fused and device.type == "cuda"
    # With optim.layer_decay each group carries an lr_scale the training loop applies to the scheduled lr.
    return torch.optim.AdamW(parameter_groups(model, o.weight_decay, o.layer_decay), lr=o.lr, betas=tuple(o.betas),
                             fused=fused or None)


class Forward:
    """The prepared model's forward pass, compiled as train.compile asks (`steps`: the run's
    optimizer steps, for auto's rule). A compiled call that fails falls back to eager, with a
    warning, for good: the trainer guards its first compiling.GUARDED_STEPS steps (CUDA graphs
    record on a later call than the first), evaluation every call."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, accelerator: Accelerator, steps: int | None = None):
        self.model, self.accelerator = model, accelerator
        self.mode = compiling.effective_mode(recipe.train.compile, accelerator.device, steps)
        if self.mode != "none":
            compiling.reset()  # a study trains runs one after another: no code or graphs of the last one
        self.fn = compiling.compile_model(model, self.mode, accelerator.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiling.step_begins(self.mode)
        return self.fn(x)

    def fall_back_to_eager(self, exc: Exception) -> None:
        """Continue eagerly after `exc` from a compiled call; an error of attnzoo's own or an
        out-of-memory error is no compiler failure and is raised again."""
        if isinstance(exc, (AttnzooError, torch.cuda.OutOfMemoryError)):
            raise exc
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        self.accelerator.print(f"warning: train.compile={self.mode} failed ({type(exc).__name__}: {first_line}); "
                               "continuing without compilation. Set train.compile=none to skip it.", flush=True)
        self.fn, self.mode = self.model, "none"
        compiling.reset()

    @torch.no_grad()
    def predict(self, loader: Loader, num_classes: int, pixels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of every sample of `loader`, gathered from all processes, each sample
        once, in sample order. `pixels(uint8 batch, batch number)`, if given, changes the images
        before they are normalised (e.g. corrupts them)."""
        self.model.eval()
        acc, parts = self.accelerator, []
        for batch, (images, labels, index) in enumerate(loader.eval_batches(normalized=pixels is None)):
            if pixels is not None:
                images = loader.normalize(pixels(images, batch))
            try:
                logits = self(images).float()
            except Exception as exc:  # noqa: BLE001 - evaluation compiles its own graph
                if self.mode == "none":
                    raise
                self.fall_back_to_eager(exc)
                logits = self(images).float()
            parts.append(acc.gather(torch.cat([logits, labels[:, None].float(), index[:, None].float()], 1)))
        self.model.train()
        rows = torch.cat(parts).cpu() if parts else torch.zeros(0, num_classes + 2)
        rows = rows[rows[:, -1] >= 0]  # the padding of uneven shards
        rows = rows[rows[:, -1].argsort()]
        return rows[:, :-2], rows[:, -2].long()

    def evaluate(self, loader: Loader, classes: list[str]) -> dict:
        """The classification report (top-1/5, precision/recall/F1, ECE, confusion) of a split."""
        logits, labels = self.predict(loader, len(classes))
        return classification_report(logits, labels, classes)
