"""sigmoid attention: each weight is sigmoid(q.k / sqrt(d) + b), b = -log(N), no normalization across keys.

Paper: Jason Ramapuram, Federico Danieli, Eeshan Dhekane, Floris Weers, Dan Busbridge,
Pierre Ablin, Tatiana Likhomanenko, Jagrit Digani, Zijin Gu, Amitis Shidani, Russ Webb
(2024), "Theory, Analysis, and Best Practices for Sigmoid Self-Attention".

    w_ij = sigmoid(q_i.k_j / sqrt(d) + b),    out_i = sum_j w_ij v_j

The bias b = -log(N) keeps a row's weights summing to about 1 at initialization, as
softmax's normalization would; without it the output grows with N.

Options: ``bias`` (float; unset means -log N, the paper's choice).
No fast path: torch has no fused sigmoid-attention kernel (the paper's FlashSigmoid is a
separate CUDA library), so forward is the explicit N x N product.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant, Option, hookimpl


class SigmoidAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, bias: float | None = None):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.bias = bias

    def attention_weights(self, q, k):
        bias = -math.log(k.shape[-2]) if self.bias is None else self.bias
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        return torch.sigmoid(logits + bias).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="sigmoid",
        description="sigmoid(q.k^T/sqrt(d) - log N) v, no normalization across keys (Ramapuram et al. 2024)",
        factory=SigmoidAttention,
        options=[Option("bias", float, None, None, "the bias b added to every logit; unset means -log(N)")],
    )
