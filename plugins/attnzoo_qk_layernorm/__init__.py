"""QK-LayerNorm attention: LayerNorm on q and k, then softmax(q.k / sqrt(d)) v.

Paper: Mostafa Dehghani, Josip Djolonga, Basil Mustafa, et al. (2023), "Scaling Vision
Transformers to 22 Billion Parameters" (ViT-22B); studied further by Wortsman et al.
(2023), "Small-scale proxies for large-scale Transformer training instabilities".

    w = softmax(LN(q) . LN(k)^T / sqrt(d)),   LN over the d features of each vector

Normalizing q and k bounds the logits and prevents the attention-logit growth that
destabilizes large models. The LayerNorm parameters are shared by the heads (as in
timm's ``qk_norm``).

Options: ``affine`` (bool, default true: learnable LayerNorm gain and bias), ``eps``
(float, default 1e-6). Fast path: scaled_dot_product_attention on the normalized q, k.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in x's dtype, its gain and bias cast to it. Autocast off where it is on: CUDA
    autocast runs layer_norm in float32 and returns float32, a round trip before SDPA casts back
    to bf16 itself; the kernel accumulates in float32 for bf16 inputs anyway."""
    weight = None if norm.weight is None else norm.weight.to(x.dtype)
    bias = None if norm.bias is None else norm.bias.to(x.dtype)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


class QKLayerNormAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, affine: bool = True, eps: float = 1e-6):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=affine)
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=affine)

    def _normalized(self, q, k):
        return _layer_norm(self.q_norm, q), _layer_norm(self.k_norm, k)

    def attention_weights(self, q, k):
        qn, kn = self._normalized(q, k)
        return torch.softmax((qn @ kn.transpose(-2, -1)) * self.scale, dim=-1).to(q.dtype)

    def forward(self, q, k, v):
        qn, kn = self._normalized(q, k)
        return F.scaled_dot_product_attention(qn, kn, v.to(q.dtype), scale=self.scale).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="qk_layernorm",
        description="softmax(LN(q).LN(k)^T/sqrt(d)) v, LayerNorm on q and k (ViT-22B, Dehghani et al. 2023)",
        factory=QKLayerNormAttention,
        options=[
            Option("affine", bool, True, None, "learnable LayerNorm gain and bias, shared by the heads"),
            Option("eps", float, 1e-6, None, "added to the variance inside LayerNorm"),
        ],
    )
