"""L2 attention: softmax of the negative squared distance between q and k.

Paper: Hyunjik Kim, George Papamakarios, Andriy Mnih (2021), "The Lipschitz Constant of
Self-Attention".

    w_ij = softmax_j(-|q_i - k_j|^2 / sqrt(d))

Unlike dot-product attention, this is Lipschitz when the query and key projections are
tied (W_Q = W_K, and the value map tied to them). Those ties live in the model's qkv
projection, outside the variant seam, so this variant is the paper's L2 kernel with
untied projections (which the paper also trains).

Fast path: |q_i - k_j|^2 = |q_i|^2 - 2 q_i.k_j + |k_j|^2, and |q_i|^2 is the same for a
whole row, so softmax drops it: scaled_dot_product_attention with scale 2/sqrt(d) and
the additive bias -|k_j|^2/sqrt(d) per key. No options.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from attnzoo import AttentionVariant, hookimpl


def _squared_norm(x):
    """|x|^2 over the last dimension, (..., N) -> (..., N), in x's dtype (a product and a
    matmul, which autocast keeps in the compute dtype; pow and sum it would not)."""
    return (x.unsqueeze(-2) @ x.unsqueeze(-1)).squeeze(-1).squeeze(-1)


class L2Attention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int):
        super().__init__(head_dim, num_heads)
        self.inv_sqrt_d = 1.0 / math.sqrt(head_dim)

    def attention_weights(self, q, k):
        # The full squared distance, |q|^2 included: the reference the fast path must match.
        dist = _squared_norm(q).unsqueeze(-1) - 2 * (q @ k.transpose(-2, -1)) + _squared_norm(k).unsqueeze(-2)
        return torch.softmax(-dist * self.inv_sqrt_d, dim=-1).to(q.dtype)

    def forward(self, q, k, v):
        key_bias = (-_squared_norm(k) * self.inv_sqrt_d).unsqueeze(-2).to(q.dtype)  # (B, H, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, scale=2 * self.inv_sqrt_d)
        return out.to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="l2",
        description="softmax(-|q - k|^2/sqrt(d)) v, L2-distance attention, SDPA with a key bias (Kim et al. 2021)",
        factory=L2Attention,
        options=[],
    )
