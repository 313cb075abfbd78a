"""torch.compile modes for training and benchmarks (``train.compile``).

- ``none``: eager.
- ``default``: inductor-fused kernels (torch.compile's default mode).
- ``cudagraphs``: the same kernels replayed as CUDA graphs (mode "reduce-overhead"): at
  CIFAR sizes a step is a few milliseconds and kernel launches decide the speed.
  On a machine without CUDA it is ``default`` (there is nothing to capture).
- ``max-autotune``: inductor tries kernel configurations (slow to compile), no graphs.
- ``auto`` (the default): ``cudagraphs`` on CUDA, ``none`` elsewhere, and ``none`` on CUDA
  too for a run shorter than AUTO_EAGER_BELOW_STEPS optimizer steps: there a cold compile
  costs more than it saves. That threshold is a rule from estimates, not a measurement: a
  cold inductor + CUDA-graph compile of a CIFAR ViT takes about 25-40 s, and graphs save a few
  milliseconds of launch overhead per step of ~10-15 ms, so compile pays after roughly
  5,000-10,000 steps (the 10-epoch speed recipe has about 2,000). The trainer falls back to
  eager, with a warning, if compilation fails on any of its first GUARDED_STEPS steps.

Compile cache: inductor's FX graph cache (on by default in recent torch) keeps compiled
kernels in a folder on disk, so a second run of the same model on the same machine compiles
in seconds; cache_info() names it, and a run records it in environment.json
("compile_cache"). Point TORCHINDUCTOR_CACHE_DIR at a persistent folder to keep it across
machines' restarts.

Shapes are static (``dynamic=False``): a run sees a handful of batch shapes, each
compiled once, and symbolic shapes once crashed inside an inductor backward when one
process compiled several image sizes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODES = ("auto", "none", "default", "cudagraphs", "max-autotune")
_TORCH_MODE = {"default": None, "cudagraphs": "reduce-overhead", "max-autotune": "max-autotune-no-cudagraphs"}
RECOMPILE_LIMIT = 64  # a benchmark compiles many models and sizes in one process
AUTO_EAGER_BELOW_STEPS = 5_000  # auto: eager for shorter runs (a rule, see the module docstring)
# Compiled steps the trainer guards: dynamo compiles on the first call, but CUDA-graph trees
# warm up first and record (capture) on a later call, and a backward may compile late, so a
# compiler failure can surface on any of the first few steps, not only the first.
GUARDED_STEPS = 3


def effective_mode(mode: str, device: torch.device, steps: int | None = None) -> str:
    """The mode that actually runs on `device`: CUDA graphs need CUDA. `steps`: the optimizer
    steps of the run, when known, for ``auto``'s rule (eager when compile cannot pay)."""
    if mode == "auto":
        if device.type != "cuda" or (steps is not None and steps < AUTO_EAGER_BELOW_STEPS):
            return "none"
        return "cudagraphs"
    return "default" if mode == "cudagraphs" and device.type != "cuda" else mode


def compile_model(model: nn.Module, mode: str, device: torch.device) -> Callable:
    """`model` itself for ``none``, else its compiled forward. `mode` is resolved already
    (effective_mode); ``auto`` here gets the rule without a step count."""
    mode = effective_mode(mode, device)
    if mode == "none":
        return model
    _raise_recompile_limit()
    return torch.compile(model, mode=_TORCH_MODE[mode], dynamic=False)


def step_begins(mode: str) -> None:
    """Tell the CUDA-graph tree a new step starts, so outputs of the previous replay may be
    overwritten (without it, training steps keep every replay's outputs alive)."""
    if mode == "cudagraphs" and torch.cuda.is_available():
        torch.compiler.cudagraph_mark_step_begin()


def reset() -> None:
    """Forget compiled code: models of another image size start from a clean slate."""
    torch._dynamo.reset()


def cache_info() -> dict:
    """Where inductor keeps compiled code (its FX graph cache), for a run's environment.json."""
    info = {"fx_graph_cache": None, "dir": None}
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        info.update(fx_graph_cache=bool(inductor_config.fx_graph_cache), dir=cache_dir())
    except (ImportError, AttributeError):  # an older torch: nothing to name
        pass
    return info


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
