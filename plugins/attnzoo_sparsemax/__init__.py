"""sparsemax attention: the Euclidean projection of the logits onto the simplex; exact zeros.

Paper: Andre F. T. Martins, Ramon F. Astudillo (2016), "From Softmax to Sparsemax: A
Sparse Model of Attention and Multi-Label Classification".

    w_i = sparsemax(z_i) = [z_i - tau(z_i)]_+,   z_ij = q_i.k_j / sqrt(d)

with tau the threshold that makes each row sum to 1. Exact, sort-based (the paper's
Algorithm 1): sort z descending, the support size is the largest k with
1 + k z_(k) > sum_{j<=k} z_(j), and tau = (sum of the support - 1) / k.

The support is found without gradients; tau is then recomputed from the support as a
differentiable expression, which gives the exact Jacobian of sparsemax (the support is
locally constant). The threshold is computed in at least float32 whatever the compute
dtype: a bf16 cumulative sum would misplace it. No options; no fast path (no fused
kernel exists), so forward is the explicit N x N product.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant, hookimpl


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """sparsemax over the last dimension, in at least float32."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    with torch.no_grad():
        ranked = z.sort(dim=-1, descending=True).values
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        size = (1 + k * ranked > ranked.cumsum(dim=-1)).sum(dim=-1, keepdim=True)
        support = (z >= ranked.gather(-1, size - 1)).to(z.dtype)
    tau = ((z * support).sum(dim=-1, keepdim=True) - 1) / support.sum(dim=-1, keepdim=True)
    return torch.clamp(z - tau, min=0)


class SparsemaxAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)

    def attention_weights(self, q, k):
        return sparsemax((q @ k.transpose(-2, -1)) * self.scale).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="sparsemax",
        description="sparsemax(q.k^T/sqrt(d)) v, projection onto the simplex with exact zeros "
                    "(Martins & Astudillo 2016)",
        factory=SparsemaxAttention,
        options=[],
    )
