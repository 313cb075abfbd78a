"""CUDA autocast's float32 policy, emulated on the CPU, so CPU tests see what GPUs do.

Under ``torch.autocast("cuda", bf16)`` a family of ops (layer_norm, norm, softmax, exp,
sum, pow, ...) runs in float32 and *returns float32*; CPU autocast keeps them in bf16.
A variant that standardizes or normalizes q/k/v therefore hands float32 tensors to its
kernel on a GPU only, and ``scaled_dot_product_attention`` silently leaves the flash
kernel for a float32 one (measured on an H200: standardized attention at 0.35x softmax).

:func:`emulate_cuda_autocast` enters CPU autocast and, on top of it, makes those ops
upcast their low-precision inputs and return float32, exactly where CUDA autocast would
(only while autocast is enabled, so a variant that disables it locally is honoured).
It also records the dtypes every ``scaled_dot_product_attention`` call was handed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _float32_ops() -> set:
    """The ops of CUDA autocast's float32 list that attention code reaches for."""
    T = torch.Tensor
    ops = {
        F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm, F.normalize,
        torch.norm, T.norm, torch.linalg.vector_norm, torch.linalg.norm, F.cosine_similarity,
        torch.softmax, T.softmax, F.softmax, torch.log_softmax, T.log_softmax, F.log_softmax,
        torch.exp, T.exp, torch.log, T.log, torch.pow, T.pow, T.__pow__, torch.rsqrt, T.rsqrt,
        torch.reciprocal, T.reciprocal, torch.sum, T.sum, torch.cumsum, T.cumsum, torch.prod, T.prod,
        F.softplus, torch.cdist,
    }
    return {op for op in ops if op is not None}


@dataclass
class AutocastRecord:
    """What happened inside :func:`emulate_cuda_autocast`."""

    dtype: torch.dtype
    sdpa_inputs: list[tuple[torch.dtype, ...]] = field(default_factory=list)  # (q, k, v) dtypes per call

    def float32_sdpa_calls(self) -> list[tuple[torch.dtype, ...]]:
        """SDPA calls handed a dtype other than the compute dtype: no flash kernel on a GPU."""
        return [d for d in self.sdpa_inputs if any(x != self.dtype for x in d)]


class _CudaFloat32Policy(TorchFunctionMode):
    def __init__(self, record: AutocastRecord):
        super().__init__()
        self.record, self.ops = record, _float32_ops()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.record.sdpa_inputs.append(tuple(a.dtype for a in args[:3] if isinstance(a, torch.Tensor)))
        elif func in self.ops and torch.is_autocast_enabled("cpu"):
            args = tuple(_upcast(a) for a in args)
            kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _upcast(x):
    if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION:
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_upcast(y) for y in x)
    return x


@contextlib.contextmanager
def emulate_cuda_autocast(dtype: torch.dtype = torch.bfloat16):
    """CPU autocast in `dtype` with CUDA's float32 policy; yields an :class:`AutocastRecord`."""
    record = AutocastRecord(dtype)
    with torch.autocast("cpu", dtype=dtype), _CudaFloat32Policy(record):
        yield record
