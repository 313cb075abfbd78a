"""Base class for attention variants: the seam between projections and 'scores -> weights -> output'."""

from __future__ import annotations

import torch
from torch import nn


class AttentionVariant(nn.Module):
    """Subclass and implement ``attention_weights``; override ``forward`` for a fast path.

    Shapes: q, k, v are (batch, heads, tokens, head_dim); weights are
    (batch, heads, tokens, tokens).
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

    def explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The reference path: builds the N x N weights. Fast paths must agree with it."""
        return self.attention_weights(q, k) @ self.values(v)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.explicit(q, k, v)


def standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / std over the last dimension, std the population std, in x's dtype.

    One fused kernel (layer norm without affine parameters) instead of a chain of
    elementwise ops: mean, subtract, var, sqrt and divide cost a third of a step eager.
    Autocast is off for it: CUDA autocast would run layer_norm in float32 and return
    float32, and scaled_dot_product_attention would then leave its flash kernel. The
    kernel accumulates in float32 for bf16/fp16 inputs anyway.
    """
    with _no_autocast(x):
        return nn.functional.layer_norm(x, x.shape[-1:], eps=eps)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / max(|x|, eps) over the last dimension, in x's dtype (see :func:`standardize`
    for why autocast is off: CUDA autocast returns float32 from norm)."""
    with _no_autocast(x):
        return nn.functional.normalize(x, dim=-1, eps=eps)


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)
