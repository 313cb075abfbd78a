"""cosine attention: (q^.k^T) v with q^ = q/|q|, k^ = k/|k|, and no softmax.

Without softmax the product is associative: q^ (k^T v) costs O(N d^2) and never builds
the N x N matrix. The weights are unnormalised cosines in [-1, 1], so the output grows
with N; ``scale: inv_n`` divides by N and ``learnable`` adds a learnable per-head
temperature on top of 1/N.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo import AttentionVariant, Option, hookimpl, l2_normalize


class CosineAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, scale: str = "none", eps: float = 1e-6):
        super().__init__(head_dim, num_heads)
        self.scale_mode = scale
        self.eps = eps
        if scale == "learnable":
            self.gain = nn.Parameter(torch.ones(num_heads, 1, 1))

    def _apply_scale(self, x, tokens: int):
        if self.scale_mode == "none":
            return x
        x = x / tokens
        return x * self.gain.to(x.dtype) if self.scale_mode == "learnable" else x

    def _normalized(self, q, k):
        return l2_normalize(q, self.eps), l2_normalize(k, self.eps)

    def attention_weights(self, q, k):
        q, k = self._normalized(q, k)
        return self._apply_scale(q @ k.transpose(-2, -1), k.shape[-2])

    def forward(self, q, k, v):
        q, k = self._normalized(q, k)
        context = k.transpose(-2, -1) @ v  # (B, H, d, d): O(N d^2)
        return self._apply_scale(q @ context, k.shape[-2])


@hookimpl
def register_attention_variants(register):
    register(
        name="cosine",
        description="cosine similarity of q and k as weights, no softmax; linear time via q^(k^T v)",
        factory=CosineAttention,
        options=[
            Option("scale", str, "none", ("none", "inv_n", "learnable"),
                   "weight scaling: none (study), 1/N, or 1/N times a learnable per-head gain"),
            Option("eps", float, 1e-6, None, "floor on the norm of q and k"),
        ],
        fast_path=True,
        has_parameters=True,
    )
