"""scaled cosine attention: softmax(cos(q, k) * tau) v, tau learnable per head and at most 100.

Paper: Ze Liu, Han Hu, Yutong Lin, Zhuliang Yao, Zhenda Xie, Yixuan Wei, Jia Ning, Yue Cao,
Zheng Zhang, Li Dong, Furu Wei, Baining Guo (2022), "Swin Transformer V2: Scaling Up
Capacity and Resolution".

    w = softmax(tau * q^.k^T),   q^ = q/|q|, k^ = k/|k|,   tau = exp(min(t, log 100))

Swin V2 writes the temperature as a divisor larger than 0.01; its code learns
t = log(tau) per head, starts it at log(10) and clamps it at log(100). Cosine logits lie
in [-1, 1], which is why a temperature is needed at all. (Swin V2's relative position
bias belongs to its windowed attention, not to the normalization, and is left out.)

Options: ``init_scale`` (float, default 10, the initial tau), ``learnable`` (bool, default
true; false keeps tau fixed). Fast path: q^ with tau folded in, then
scaled_dot_product_attention with scale 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl, l2_normalize

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
        return l2_normalize(q) * tau, l2_normalize(k)  # in q's dtype, also under GPU autocast

    def attention_weights(self, q, k):
        qs, kn = self._scaled_q_and_k(q, k)
        return torch.softmax(qs @ kn.transpose(-2, -1), dim=-1).to(q.dtype)

    def forward(self, q, k, v):
        qs, kn = self._scaled_q_and_k(q, k)
        return F.scaled_dot_product_attention(qs, kn, v.to(q.dtype), scale=1.0).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="scaled_cosine",
        description="softmax(cos(q, k) * tau) v, tau learnable per head, tau <= 100 (Swin V2, Liu et al. 2022)",
        factory=ScaledCosineAttention,
        options=[
            Option("init_scale", float, 10.0, None, "initial logit scale tau (Swin V2 uses 10)"),
            Option("learnable", bool, True, None, "learn tau per head; false keeps it at init_scale"),
        ],
    )
