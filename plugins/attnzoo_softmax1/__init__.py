"""softmax_1 attention: softmax with an extra zero logit, so a head may attend to nothing.

Source: Evan Miller (2023), "Attention Is Off By One" (blog post).

    w_ij = exp(s_ij) / (1 + sum_l exp(s_il)),   s_ij = q_i.k_j / sqrt(d),   out_i = sum_j w_ij v_j

A row's weights sum to less than 1: the missing mass goes to an implicit "no-op" token.

Fast path: scaled_dot_product_attention over the keys and values with one zero key and
one zero value token appended. The zero key's logit is 0 whatever the scale (exp(0) = 1
in the denominator), and its zero value adds nothing to the output. No options.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from attnzoo import AttentionVariant, hookimpl


def _append_zero_token(x):
    """(B, H, N, d) -> (B, H, N + 1, d), the new token all zeros."""
    return F.pad(x, (0, 0, 0, 1))


class Softmax1Attention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)

    def attention_weights(self, q, k):
        logits = (q @ _append_zero_token(k).transpose(-2, -1)) * self.scale  # (B, H, N, N + 1)
        return torch.softmax(logits, dim=-1)[..., :-1].to(q.dtype)  # drop the zero token's column

    def forward(self, q, k, v):
        out = F.scaled_dot_product_attention(q, _append_zero_token(k), _append_zero_token(v), scale=self.scale)
        return out.to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="softmax1",
        description="softmax with an extra zero logit (weights sum to < 1), SDPA with a zero key/value token "
                    "(Miller 2023)",
        factory=Softmax1Attention,
        options=[],
    )
