"""Scalable-Softmax (SSMax): softmax with the logits multiplied by s * log N.

Paper: Ken M. Nakanishi (2025), "Scalable-Softmax Is Superior for Attention".

    w_ij = softmax_j(s * log(N) * q_i.k_j / sqrt(d)) = N^(s z_ij) / sum_l N^(s z_il)

Plain softmax flattens as N grows (its largest weight tends to 0, "attention fading");
the log N factor keeps the peak. s is a learnable scalar per head; the paper's variant
with a bias uses (s log N + b) instead.

Options: ``init_s`` (float, default 0.43, the value of the paper's Figure 1),
``learnable`` (bool, default true: learn s per head), ``bias`` (bool, default false:
add a learnable b per head, starting at 0).
Fast path: the factor is folded into q, then scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl


class ScalableSoftmaxAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, init_s: float = 0.43, learnable: bool = True,
                 bias: bool = False):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        s = torch.full((num_heads, 1, 1), float(init_s))
        if learnable:
            self.s = nn.Parameter(s)
        else:
            self.register_buffer("s", s)
        self.b = nn.Parameter(torch.zeros(num_heads, 1, 1)) if bias else None

    def _scaled_q(self, q, tokens: int):
        factor = self.s * math.log(tokens)  # (H, 1, 1)
        if self.b is not None:
            factor = factor + self.b
        return q * factor.to(q.dtype)

    def attention_weights(self, q, k):
        logits = (self._scaled_q(q, k.shape[-2]) @ k.transpose(-2, -1)) * self.scale
        return torch.softmax(logits, dim=-1).to(q.dtype)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(self._scaled_q(q, k.shape[-2]), k, v, scale=self.scale).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="ssmax",
        description="softmax(s log N * q.k^T/sqrt(d)) v, s learned per head: Scalable-Softmax (Nakanishi 2025)",
        factory=ScalableSoftmaxAttention,
        options=[
            Option("init_s", float, 0.43, None, "initial s (the paper's Figure 1 uses 0.43)"),
            Option("learnable", bool, True, None, "learn s per head; false keeps it at init_s"),
            Option("bias", bool, False, None, "use (s log N + b) with a learnable b per head, as the paper's "
                                                "variant with bias"),
        ],
    )
