"""Sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for
Sigmoid Self-Attention"): each weight is sigmoid(q.k / sqrt(d) + b), with no
normalization across keys.

The bias b = -log(N) keeps the sum of a row's weights near 1 at initialization, the
way softmax's normalization would; without it the output grows with N. The paper also
recommends LayerScale and QK normalization for stable training of large models.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant


class SigmoidAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, bias: float | None = None):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.bias = bias

    def _bias(self, tokens: int) -> float:
        return -math.log(tokens) if self.bias is None else self.bias

    def attention_weights(self, q, k):
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        return torch.sigmoid(logits + self._bias(k.shape[-2]))

    # No fast path: torch has no fused sigmoid-attention kernel, so forward() is the
    # base class's explicit attention_weights(q, k) @ v.
