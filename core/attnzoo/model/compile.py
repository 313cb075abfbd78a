"""torch.compile modes for training and benchmarks (``train.compile``).

- ``none``: eager.
- ``default``: inductor-fused kernels (torch.compile's default mode).
- ``cudagraphs``: the same kernels replayed as CUDA graphs (mode "reduce-overhead"): at
  CIFAR sizes a step is a few milliseconds and kernel launches decide the speed.
  On a machine without CUDA it is ``default`` (there is nothing to capture).
- ``max-autotune``: inductor tries kernel configurations (slow to compile), no graphs.
- ``auto`` (the default): ``cudagraphs`` on CUDA, ``none`` elsewhere. The trainer falls
  back to eager, with a warning, if compilation fails.

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


def effective_mode(mode: str, device: torch.device) -> str:
    """The mode that actually runs on `device`: CUDA graphs need CUDA."""
    if mode == "auto":
        return "cudagraphs" if device.type == "cuda" else "none"
    return "default" if mode == "cudagraphs" and device.type != "cuda" else mode


def compile_model(model: nn.Module, mode: str, device: torch.device) -> Callable:
    """`model` itself for ``none``, else its compiled forward."""
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


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
