"""differential attention: the difference of two softmax maps cancels common-mode noise.

Paper: Tianzhu Ye, Li Dong, Yuqing Xia, Yutao Sun, Yi Zhu, Gao Huang, Furu Wei (2024),
"Differential Transformer".

    [q1, q2] = q, [k1, k2] = k   (each head's d features split in two halves of d/2)
    A = softmax(q1.k1^T / sqrt(d/2)) - lambda * softmax(q2.k2^T / sqrt(d/2)),   out = A v
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init

This is the paper's DiffAttn (its Eq. 1). lq1, lk1, lq2, lk2 are learned vectors of size
d/2 (initialized from N(0, 0.1^2) as in the authors' code), shared by the heads of a
layer. The paper halves the number of heads so that each head's q and k halves have the
size of an ordinary head; here a head of size d is split, so use a head_dim twice the
usual one to match. The paper sets lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) by layer l;
a variant does not know its layer, so lambda_init is an option (0.8, the paper's
deep-layer value; its ablation shows a constant 0.8 performs about the same).

Left out: the paper's multi-head layer then applies a headwise RMSNorm to A v and
multiplies by (1 - lambda_init). That normalizes the layer's output, not the attention,
and the plugin contract requires forward to equal attention_weights(q, k) @ v, which a
norm of the output would break.

Fast path: the two maps as two scaled_dot_product_attention calls.
Options: ``lambda_init`` (float, default 0.8).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl


class DifferentialAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, lambda_init: float = 0.8):
        super().__init__(head_dim, num_heads)
        if head_dim % 2:
            raise ValueError(f"diff: head_dim must be even (split into two halves), got {head_dim}")
        half = head_dim // 2
        self.scale = 1.0 / math.sqrt(half)
        self.lambda_init = lambda_init
        # Drawn from torch's default generator, which the model seeds per layer and run seed while it
        # builds the layer (attnzoo.contract.hookspecs, "Randomness"): the ViT's shared weights are untouched.
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(half) * 0.1) for _ in range(4))

    def _lambda(self, dtype):
        lam = (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
               - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)
        return lam.to(dtype)

    def _halves(self, x):
        return x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]

    def attention_weights(self, q, k):
        (q1, q2), (k1, k2) = self._halves(q), self._halves(k)
        a1 = torch.softmax((q1 @ k1.transpose(-2, -1)) * self.scale, dim=-1)
        a2 = torch.softmax((q2 @ k2.transpose(-2, -1)) * self.scale, dim=-1)
        return (a1 - self._lambda(a2.dtype) * a2).to(q.dtype)

    def forward(self, q, k, v):
        (q1, q2), (k1, k2) = self._halves(q), self._halves(k)
        out1 = F.scaled_dot_product_attention(q1, k1, v, scale=self.scale)
        out2 = F.scaled_dot_product_attention(q2, k2, v, scale=self.scale)
        return (out1 - self._lambda(q.dtype) * out2).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="diff",
        description="(softmax(q1.k1^T) - lambda softmax(q2.k2^T)) v over the halves of q and k, lambda "
                    "learned: differential attention (Ye et al. 2024)",
        factory=DifferentialAttention,
        options=[
            Option("lambda_init", float, 0.8, None, "lambda's constant part; the paper uses 0.8 - 0.6 exp(-0.3 (l - 1))"),
        ],
    )
