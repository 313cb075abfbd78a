"""standardized attention: softmax(q'.k'^T * scale) v', x' = (x - mean(x)) / std(x) per vector.

The study divides by d (``scale: inv_d``), which bounds the logits to [-1, 1] and keeps
attention close to uniform; ``inv_sqrt_d`` and a learnable per-head temperature
(``learnable``, as in QK-norm / Swin V2) are the documented alternatives.

Two implementations of the standardization, chosen by the ``backend`` attribute (not a
recipe option: see :class:`StandardizedAttention`):

- ``triton`` (``triton_kernel.py``): one fused launch standardizes q, k and v each way,
  reading the strided views directly and writing the compute dtype. ``F.layer_norm``
  over rows of 16 features is slow on CUDA (one thread block per row, plus a copy of
  each strided view), which is what kept eager standardized attention below softmax.
- ``torch``: ``attnzoo.standardize`` (layer norm without affine parameters); runs everywhere.
- ``auto`` (default): ``triton`` on CUDA for float16, bfloat16 and float32 when triton is
  installed, ``torch`` otherwise.

The kernel is tested against the PyTorch path on the CPU under Triton's interpreter.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, AttnzooError, Option, hookimpl, standardize

MAX_LOGIT_SCALE = math.log(100.0)  # clamp as in Swin V2 so the temperature cannot explode

_kernel = None  # the triton_kernel module once loaded; a plain global, which torch.compile reads freely
_kernel_missing = False  # triton failed to import once: "auto" must not retry on every call


def _load_kernel():
    """Import the kernel module on first use (triton is slow to import); None without triton."""
    global _kernel, _kernel_missing
    if _kernel is None and not _kernel_missing:
        try:
            from . import triton_kernel
        except ImportError:
            _kernel_missing = True
            return None
        _kernel = triton_kernel
    return _kernel


class StandardizedAttention(AttentionVariant):
    # Which implementation standardizes: "auto" (the kernel in eager on CUDA; under
    # torch.compile the PyTorch ops, which inductor fuses itself), "torch" or "triton".
    # Not a recipe option: the two differ in rounding only, and a new option would make every
    # run recorded by an earlier version (whose recipe.yaml lacks it) read as a different run.
    # Tests and benchmarks set it on an instance or on the class.
    backend = "auto"

    def __init__(self, head_dim: int, num_heads: int, scale: str = "inv_d",
                 standardize_values: bool = True, eps: float = 1e-5):
        super().__init__(head_dim, num_heads)
        self.scale_mode = scale
        self.standardize_values = standardize_values
        self.eps = eps
        if scale == "learnable":
            # log of the temperature, one per head, starting at 1/sqrt(d)
            init = math.log(1.0 / math.sqrt(head_dim))
            self.log_scale = nn.Parameter(torch.full((num_heads, 1, 1), init))
        else:
            self.fixed_scale = 1.0 / head_dim if scale == "inv_d" else 1.0 / math.sqrt(head_dim)

    def _scaled_q(self, q):
        """Standardized q; a learnable per-head temperature is folded in (SDPA takes one
        scalar scale only), a fixed scale goes to SDPA itself (no extra kernel)."""
        return self._with_temperature(standardize(q, self.eps))

    def _with_temperature(self, q):
        if self.scale_mode == "learnable":
            return q * self.log_scale.clamp(max=MAX_LOGIT_SCALE).exp().to(q.dtype)
        return q

    def _sdpa_scale(self) -> float:
        return 1.0 if self.scale_mode == "learnable" else self.fixed_scale

    def values(self, v):
        return standardize(v, self.eps) if self.standardize_values else v

    def attention_weights(self, q, k):
        logits = self._scaled_q(q) @ standardize(k, self.eps).transpose(-2, -1)
        return torch.softmax(logits * self._sdpa_scale(), dim=-1)

    def forward(self, q, k, v):
        if self._use_triton(q, k, v):
            q, k, v = self._triton_standardized(q, k, v)
            return F.scaled_dot_product_attention(self._with_temperature(q), k, v, scale=self._sdpa_scale())
        return F.scaled_dot_product_attention(
            self._scaled_q(q), standardize(k, self.eps), self.values(v), scale=self._sdpa_scale()
        )

    def _use_triton(self, q, k, v) -> bool:
        if self.backend == "torch":
            return False
        dtype = _compute_dtype(q, k, v)
        if self.backend == "auto":
            return (q.device.type == "cuda" and not torch.compiler.is_compiling()
                    and _load_kernel() is not None and dtype in _kernel.FAST_DTYPES)
        if not (_load_kernel() is not None and _kernel.available(q.device) and dtype in _kernel.SUPPORTED_DTYPES):
            raise AttnzooError(
                f"standardized attention: backend 'triton' cannot run on {q.device.type} tensors of dtype "
                f"{dtype}: it needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU) of one floating "
                "dtype (float16, bfloat16, float32 or float64); set its backend to 'auto' or 'torch'."
            )
        return True

    def _triton_standardized(self, q, k, v):
        """q', k', v' from one launch, in the compute dtype (v passes through when not standardized)."""
        dtype = _compute_dtype(q, k, v)
        if len({q.dtype, k.dtype, v.dtype}) > 1:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)  # autocast mixed them: one dtype for the kernel
        if self.standardize_values:
            return _kernel.standardize_rows([q, k, v], self.eps, dtype)
        q, k = _kernel.standardize_rows([q, k], self.eps, dtype)
        return q, k, v.to(dtype)


def _compute_dtype(q, k, v) -> torch.dtype | None:
    """The dtype SDPA runs in: autocast's where it is on (it leaves float64 alone), else the
    inputs' own; None when they disagree outside autocast (the PyTorch path then reports it)."""
    dtypes = {q.dtype, k.dtype, v.dtype}
    if torch.is_autocast_enabled(q.device.type) and torch.float64 not in dtypes:
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype if len(dtypes) == 1 else None


@hookimpl
def register_attention_variants(register):
    register(
        name="standardized",
        description=("softmax of standardized q.k (zero mean, unit std per vector) scaled by 1/d, standardized v "
                     "(the CIFAR-100 ViT study attnzoo grew out of; cf. QK-LayerNorm, Dehghani et al. 2023)"),
        factory=StandardizedAttention,
        options=[
            Option("scale", str, "inv_d", ("inv_d", "inv_sqrt_d", "learnable"),
                   "logit scale: 1/d (study), 1/sqrt(d), or a learnable per-head temperature"),
            Option("standardize_values", bool, True, None, "also standardize v (as in the study)"),
            Option("eps", float, 1e-5, None, "added to the variance for stability"),
        ],
    )
