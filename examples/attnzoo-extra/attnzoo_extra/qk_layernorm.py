"""QK-LayerNorm attention (Dehghani et al. 2023, "Scaling Vision Transformers to 22
Billion Parameters"; Wortsman et al. 2023).

LayerNorm over the head dimension of q and k bounds the logits, which prevents the
attention-logit growth that destabilizes large models; then ordinary
softmax(q.k^T / sqrt(d)) v. The LayerNorm parameters are shared by the heads, as in
timm's ``qk_norm``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant


class QKLayerNormAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, affine: bool = True, eps: float = 1e-6):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=affine)
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=affine)

    def attention_weights(self, q, k):
        logits = (self.q_norm(q) @ self.k_norm(k).transpose(-2, -1)) * self.scale
        return torch.softmax(logits, dim=-1)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, scale=self.scale)
