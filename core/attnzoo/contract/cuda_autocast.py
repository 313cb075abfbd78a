"""CUDA autocast's cast policy, emulated on the CPU, so CPU tests see the casts a GPU makes.

Under ``torch.autocast("cuda", bf16)`` every op falls in one of PyTorch's lists
(ATen/autocast_mode.h, ``AT_FORALL_*``):

- lower precision (matmul, linear, bmm, einsum, ``scaled_dot_product_attention``, ...):
  float32 and float16/bfloat16 inputs are cast to the autocast dtype. SDPA is one of them,
  so it casts float32 q/k/v back to bf16 itself and keeps its flash kernel.
- float32 (exp, log, log1p, expm1, pow, rsqrt, layer_norm, rms_norm, norm, logsumexp,
  softplus, cdist, ...; and softmax, log_softmax, sum, prod, cumsum, vector_norm unless
  given a dtype): low-precision inputs are cast to float32 and the op *returns float32*.
- promote (addcmul, addcdiv, atan2, cross, dot, ...): the widest input dtype.

CPU autocast has other, shorter lists: it keeps layer_norm, softmax, exp, ... in bf16,
which is why CPU tests alone never showed what a variant costs on a GPU. What it costs is
the casts: a low-precision tensor that an op of the float32 list widens and a later op (or
the variant itself) narrows again is a float32 round trip, two extra passes over memory and
a float32 intermediate, on every call.

:func:`emulate_cuda_autocast` enters CPU autocast and, on top of it, applies CUDA's lists
at the level of PyTorch's Python API (only while autocast is enabled, so a variant that
turns autocast off locally is honoured). It records every cast that changes a tensor
between float32 and a lower precision (by autocast or by the code itself, ``.float()``,
``.to(...)``), and the dtypes each ``scaled_dot_product_attention`` call runs in, after its
own cast. The lists are pinned to the installed torch by tests/test_cuda_autocast.py, which
reads them from torch's autocast_mode.h where the installation ships it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LOW_PRECISION = (torch.float16, torch.bfloat16)

# CUDA autocast's lists as ATen op names (overload names left out), as in PyTorch 2.14's
# ATen/autocast_mode.h. tests/test_cuda_autocast.py compares them with the installed header.
LOWER_PRECISION_OPS = (
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
)
FLOAT32_OPS = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "rms_norm", "group_norm",
    "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss",
    "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss",
    "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
    # and norm.Scalar / norm.ScalarOpt_dim, run in float32 through an appended dtype
    "norm",
)
FLOAT32_UNLESS_DTYPE_OPS = (  # float32 unless the call names an output dtype
    "prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm", "linalg_matrix_norm", "sum",
)
PROMOTE_OPS = (
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put", "tensordot",
    "scatter_add",
)

# Python entry points of ops that reach an ATen op of a list under another name: square is
# pow(x, 2), F.normalize divides by norm(x), torch.norm calls linalg.vector_norm, ...
_ALIASES = {
    "pow": ("square", "__pow__", "__rpow__"),
    "norm": ("normalize",),
    "linalg_vector_norm": ("vector_norm",),
    "linalg_matrix_norm": ("matrix_norm",),
    "linalg_multi_dot": ("multi_dot",),
    "linalg_vecdot": ("vecdot",),
    "exp": ("exp_",),
    "matmul": ("__matmul__", "__rmatmul__"),
    "log_softmax": ("cross_entropy",),  # cross_entropy is log_softmax and nll_loss, both float32
}
_NAMESPACES = (torch, torch.Tensor, F, torch.linalg, torch.special)


def _python_functions(aten_names) -> dict:
    """{Python callable: ATen name} for every name and alias found in torch's Python namespaces."""
    found = {}
    for aten in aten_names:
        names = {aten, aten.removeprefix("linalg_"), *_ALIASES.get(aten, ())}
        for space in _NAMESPACES:
            for name in names:
                fn = getattr(space, name, None)
                if callable(fn):
                    found[fn] = aten
    return found


@dataclass(frozen=True)
class Cast:
    """One tensor changed between float32 and a lower precision: by which op, from, to, and whether
    autocast did it or the code asked for it (``.float()``, ``.to(dtype)``)."""

    op: str
    source: torch.dtype
    target: torch.dtype
    by: str  # "autocast" or "code"
    shape: tuple[int, ...] = ()

    @property
    def widens(self) -> bool:
        return self.source in LOW_PRECISION and self.target == torch.float32

    @property
    def narrows(self) -> bool:
        return self.source == torch.float32 and self.target in LOW_PRECISION


@dataclass
class AutocastRecord:
    """What happened inside :func:`emulate_cuda_autocast`."""

    dtype: torch.dtype
    sdpa_inputs: list[tuple[torch.dtype, ...]] = field(default_factory=list)  # (q, k, v) dtypes SDPA ran in
    sdpa_handed: list[tuple[torch.dtype, ...]] = field(default_factory=list)  # ... and was handed, before its cast
    casts: list[Cast] = field(default_factory=list)

    def widened(self) -> list[Cast]:
        return [c for c in self.casts if c.widens]

    def narrowed(self) -> list[Cast]:
        return [c for c in self.casts if c.narrows]

    def float32_round_trips(self, shape: tuple[int, ...] | None = None) -> list[Cast]:
        """The casts back to low precision of float32 made from low-precision tensors: each one is a
        float32 intermediate on a GPU. Empty unless something was widened first; with `shape`,
        only round trips of tensors of that shape (the kit asks about q, k, v and the output)."""
        if not self.widened():
            return []
        return [c for c in self.narrowed() if shape is None or c.shape == tuple(shape)]

    def float32_sdpa_calls(self) -> list[tuple[torch.dtype, ...]]:
        """SDPA calls that ran in a dtype other than the compute dtype (after SDPA's own cast only
        float64 does: autocast leaves it alone)."""
        return [d for d in self.sdpa_inputs if any(x != self.dtype for x in d)]


_EXPLICIT_CASTS = {torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16,
                   torch.Tensor.type, torch.Tensor.type_as}


class _CudaCastPolicy(TorchFunctionMode):
    def __init__(self, record: AutocastRecord):
        super().__init__()
        self.record = record
        self.lower = _python_functions(LOWER_PRECISION_OPS)
        self.float32 = _python_functions(FLOAT32_OPS)
        self.float32_unless_dtype = _python_functions(FLOAT32_UNLESS_DTYPE_OPS)
        self.promote = _python_functions(PROMOTE_OPS)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        if func in _EXPLICIT_CASTS:
            out = func(*args, **kwargs)
            self._note(func.__name__, args[0], out, "code")
            return out
        if func in self.lower:
            if func is F.scaled_dot_product_attention:
                self.record.sdpa_handed.append(tuple(a.dtype for a in args[:3] if isinstance(a, torch.Tensor)))
            args, kwargs = self._cast(func, args, kwargs, self.record.dtype, (torch.float32, *LOW_PRECISION))
            if func is F.scaled_dot_product_attention:
                self.record.sdpa_inputs.append(tuple(a.dtype for a in args[:3] if isinstance(a, torch.Tensor)))
        elif func in self.float32 or (func in self.float32_unless_dtype and kwargs.get("dtype") is None):
            args, kwargs = self._cast(func, args, kwargs, torch.float32, LOW_PRECISION)
        elif func in self.promote:
            widest = _widest(args, kwargs)
            if widest is not None:
                args, kwargs = self._cast(func, args, kwargs, widest, (torch.float32, *LOW_PRECISION))
        return func(*args, **kwargs)

    def _cast(self, func, args, kwargs, target, sources):
        name = {**self.lower, **self.float32, **self.float32_unless_dtype, **self.promote}[func]  # the ATen name

        def cast(x):
            if isinstance(x, torch.Tensor) and x.dtype in sources and x.dtype != target:
                y = x.to(target)
                self._note(name, x, y, "autocast")
                return y
            if isinstance(x, (list, tuple)):
                return type(x)(cast(y) for y in x)
            return x

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def _note(self, op, before, after, by):
        if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.dtype != after.dtype:
            self.record.casts.append(Cast(op, before.dtype, after.dtype, by, tuple(before.shape)))


def _widest(args, kwargs):
    dtypes = [x.dtype for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    order = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    ranked = [d for d in dtypes if d in order]
    return max(ranked, key=order.index) if ranked else None


@contextlib.contextmanager
def emulate_cuda_autocast(dtype: torch.dtype = torch.bfloat16):
    """CPU autocast in `dtype` with CUDA's cast lists; yields an :class:`AutocastRecord`."""
    record = AutocastRecord(dtype)
    with torch.autocast("cpu", dtype=dtype), _CudaCastPolicy(record):
        yield record
