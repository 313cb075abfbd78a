"""Cottention: cosine-similarity weights, no softmax, divided by N^sigmoid(m); O(N).

Paper: Gabriel Mongaras, Trevor Dohm, Eric C. Larson (2024), "Cottention: Linear
Transformers With Cosine Attention".

    w_ij = (q^_i . k^_j) / N^sigmoid(m),   q^ = q/|q|, k^ = k/|k|

m is a learned scalar per head, initialized at 0.5 as in the authors' code: the
stabilization that lets the unnormalized cosine weights train (the built-in ``cosine``
variant is the same kernel without it).

Fast path, by associativity: q^ (k^T v) / N^sigmoid(m), O(N d^2) time.
Options: ``init`` (float, default 0.5, the initial m).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo import AttentionVariant, Option, hookimpl, l2_normalize


class Cottention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, init: float = 0.5):
        super().__init__(head_dim, num_heads)
        self.m = nn.Parameter(torch.full((num_heads, 1, 1), float(init)))

    def _length_scale(self, tokens: int, dtype):
        """1 / N^sigmoid(m) per head, (H, 1, 1) in the compute dtype."""
        return torch.exp(-torch.sigmoid(self.m) * math.log(tokens)).to(dtype)

    def attention_weights(self, q, k):
        return (l2_normalize(q) @ l2_normalize(k).transpose(-2, -1)) * self._length_scale(k.shape[-2], q.dtype)

    def forward(self, q, k, v):
        context = l2_normalize(k).transpose(-2, -1) @ v  # (B, H, d, d): O(N d^2)
        return (l2_normalize(q) @ context) * self._length_scale(k.shape[-2], q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="cottention",
        description="cos(q, k) / N^sigmoid(m), m learned per head, no softmax; linear time (Mongaras et al. 2024)",
        factory=Cottention,
        options=[Option("init", float, 0.5, None, "initial value of m (the exponent of N is sigmoid(m))")],
    )
