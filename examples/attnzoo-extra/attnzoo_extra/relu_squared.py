"""Squared-ReLU attention (Hua et al. 2022, "Transformer Quality in Linear Time").

The gated attention unit (GAU) of that paper weights the values with

    w_ij = relu(q_i.k_j / N + b)^2

where N is the number of tokens (its pseudo-code: ``square(relu(qk / seq_len + bias))``).
The paper's b is a relative position bias; attention over image patches that must be
permutation equivariant leaves it out, so ``bias`` here is one constant added to every
logit (0 by default, i.e. no bias).
"""

from __future__ import annotations

import torch

from attnzoo import AttentionVariant


class ReluSquaredAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, bias: float = 0.0):
        super().__init__(head_dim, num_heads)
        self.bias = bias

    def attention_weights(self, q, k):
        logits = (q @ k.transpose(-2, -1)) / k.shape[-2]  # (B, H, N, N)
        # relu(x) * relu(x) rather than pow: CUDA autocast would return pow in float32.
        r = torch.relu(logits + self.bias)
        return (r * r).to(q.dtype)

    # No fast path: relu(q.k^T)^2 does not factorize, so forward() is the base class's
    # explicit attention_weights(q, k) @ v.
