"""ReLU attention: weights relu(q.k / sqrt(d)) / N^alpha, no softmax.

Paper: Mitchell Wortsman, Jaehoon Lee, Justin Gilmer, Simon Kornblith (2023),
"Replacing softmax with ReLU in Vision Transformers".

    w_ij = relu(q_i.k_j / sqrt(d)) / N^alpha,    out_i = sum_j w_ij v_j

Dividing by the sequence length N (alpha = 1) is what lets ReLU match softmax's scaling
behaviour in the paper; it also studies other powers of N, hence ``alpha``. The paper's
models additionally use QK-LayerNorm, which is the separate ``qk_layernorm`` variant's job.

Options: ``alpha`` (float, default 1.0: divide by N).
No fast path: relu(q.k^T) does not factorize, so forward is the explicit N x N product.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant, Option, hookimpl


class ReluAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, alpha: float = 1.0):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.alpha = alpha

    def attention_weights(self, q, k):
        length_scale = k.shape[-2] ** -self.alpha  # a Python float: no float32 tensor under autocast
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        return (torch.relu(logits) * length_scale).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="relu",
        description="relu(q.k^T/sqrt(d)) / N, ReLU in place of softmax (Wortsman et al. 2023)",
        factory=ReluAttention,
        options=[Option("alpha", float, 1.0, None, "weights are divided by N^alpha (the paper's default: 1)")],
    )
