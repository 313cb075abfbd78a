"""softmax attention: softmax(q.k^T / sqrt(d)) v, the original ViT (the study's baseline)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from attnzoo import AttentionVariant, hookimpl


class SoftmaxAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)

    def attention_weights(self, q, k):
        return torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)

    def forward(self, q, k, v):
        # Flash / memory-efficient kernels; never materialises the N x N matrix.
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


@hookimpl
def register_attention_variants(register):
    register(
        name="softmax",
        description="softmax(q.k^T / sqrt(d)) v, the original attention (Vaswani et al. 2017) as in ViT (Dosovitskiy et al. 2021)",
        factory=SoftmaxAttention,
        options=[],
    )
