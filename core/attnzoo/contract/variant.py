"""Base class for attention variants: the seam between projections and 'scores -> weights -> output'."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class AttentionVariant(nn.Module):
    """Subclass and implement ``attention_weights``; override ``forward`` for a fast path.

    Shapes: q, k, v are (batch, heads, tokens, head_dim); weights are
    (batch, heads, tokens, tokens).

    The explicit path is ``attention_weights(q, k) @ values(v)`` (:func:`explicit_attention`),
    and nothing else: it is what the load-time check, the conformance kit, the benchmark's
    naive implementation and the FLOP count run, and what ``forward`` does unless overridden.
    """

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement attention_weights(q, k)")

    def values(self, v: torch.Tensor) -> torch.Tensor:
        """What the weights multiply. Identity unless the variant transforms v."""
        return v

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return explicit_attention(self, q, k, v)

    # Deprecated: the explicit path is defined by attention_weights and values alone, so that the
    # weights a variant reports are the ones every check compares against. An override of this
    # method used to be ignored by every check (a trap); now registration refuses one. Calling it
    # still works for plugins whose forward does, and warns of nothing: a warning in forward
    # would print every step and break torch.compile's graph.
    def explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Deprecated alias of ``explicit_attention(self, q, k, v)``; not to be overridden."""
        return explicit_attention(self, q, k, v)


def explicit_attention(kernel: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The explicit path of the contract, ``attention_weights(q, k) @ values(v)``: builds the
    N x N weights. Every fast path must agree with it. `kernel` need not subclass
    AttentionVariant; one without ``values`` multiplies v itself."""
    return kernel.attention_weights(q, k) @ _values_of(kernel, v)


def _values_of(kernel: nn.Module, v: torch.Tensor) -> torch.Tensor:
    values = getattr(kernel, "values", None)
    return values(v) if values is not None else v


class ExplicitPath(nn.Module):
    """`kernel` forced through its explicit path (no fused kernel, no fast path): the one way
    to run a variant as its reference, used by the benchmark's naive implementation and by
    the FLOP count of a variant whose forward cannot be counted."""

    def __init__(self, kernel: nn.Module):
        super().__init__()
        self.kernel = kernel

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.kernel.attention_weights(q, k)

    def values(self, v: torch.Tensor) -> torch.Tensor:
        return _values_of(self.kernel, v)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return explicit_attention(self.kernel, q, k, v)


def standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / std over the last dimension, std the population std, in x's dtype.

    One fused kernel (layer norm without affine parameters) instead of a chain of
    elementwise ops: mean, subtract, var, sqrt and divide cost a third of a step eager.
    Autocast is off for it: CUDA autocast would run layer_norm in float32 and return
    float32, a round trip (two casts and float32 traffic) before scaled_dot_product_attention
    casts back to bf16 itself. The kernel accumulates in float32 for bf16/fp16 inputs anyway.
    """
    with _no_autocast(x):
        return nn.functional.layer_norm(x, x.shape[-1:], eps=eps)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / max(|x|, eps) over the last dimension, in x's dtype (see :func:`standardize`
    for why autocast is off: CUDA autocast returns float32 from norm)."""
    with _no_autocast(x):
        return nn.functional.normalize(x, dim=-1, eps=eps)


def _no_autocast(x: torch.Tensor):
    """Autocast off where it is on. Entering an autocast context costs ~13 us of host time
    even when it changes nothing, and a step at CIFAR sizes is host-bound: enter only if needed."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()
