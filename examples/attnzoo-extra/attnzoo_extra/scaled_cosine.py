"""Scaled cosine attention (Liu et al. 2022, Swin Transformer V2).

softmax(cos(q, k) * tau) v, with tau = exp(logit_scale) a learnable per-head
temperature, clamped at 100 so it cannot blow up. Cosine logits lie in [-1, 1], which
is why a temperature is needed at all; Swin V2 starts it at 10.

Fast path: q is normalized with tau folded in, so scaled_dot_product_attention (Flash /
memory-efficient kernels) does the rest with scale=1.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant

MAX_LOGIT_SCALE = math.log(100.0)


class ScaledCosineAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, init_scale: float = 10.0, learnable: bool = True):
        super().__init__(head_dim, num_heads)
        if init_scale <= 0:
            raise ValueError(f"scaled_cosine: init_scale must be positive, got {init_scale}")
        logit_scale = torch.full((num_heads, 1, 1), math.log(init_scale))
        if learnable:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)  # follows .to(device/dtype), not trained

    def _scaled_q_and_k(self, q, k):
        tau = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().to(q.dtype)  # (H, 1, 1)
        return F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1)

    def attention_weights(self, q, k):
        q, k = self._scaled_q_and_k(q, k)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1)

    def forward(self, q, k, v):
        q, k = self._scaled_q_and_k(q, k)
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
