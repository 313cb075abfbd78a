"""1.5-entmax attention: sparse like sparsemax, smooth like softmax in between.

Paper: Ben Peters, Vlad Niculae, Andre F. T. Martins (2019), "Sparse Sequence-to-Sequence
Models" (alpha-entmax; 1.5-entmax in attention as in Correia et al. 2019).

    w_i = 1.5-entmax(z_i) = [z_i / 2 - tau(z_i)]_+^2,   z_ij = q_i.k_j / sqrt(d)

with tau the threshold that makes each row sum to 1. Exact, sort-based (the paper's
algorithm for alpha = 1.5): with x = z/2 sorted descending, for each k the candidate
tau_k = mean_k - sqrt((1 - k (mean of squares_k - mean_k^2)) / k) over the top k; the
support is the largest k with tau_k <= x_(k).

The support is found without gradients; tau is then recomputed from it as a
differentiable expression, which gives the exact Jacobian. The threshold is computed in
at least float32 whatever the compute dtype. No options; no fast path.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant, hookimpl


def entmax15(z: torch.Tensor) -> torch.Tensor:
    """1.5-entmax over the last dimension, in at least float32."""
    x = z.to(torch.promote_types(z.dtype, torch.float32)) / 2
    x = x - x.amax(dim=-1, keepdim=True).detach()  # entmax is shift invariant; keeps x small
    with torch.no_grad():
        ranked = x.sort(dim=-1, descending=True).values
        k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        mean, mean_sq = ranked.cumsum(dim=-1) / k, (ranked * ranked).cumsum(dim=-1) / k
        tau = mean - torch.sqrt(torch.clamp((1 - k * (mean_sq - mean * mean)) / k, min=0))
        size = (tau <= ranked).sum(dim=-1, keepdim=True)
        support = (x >= ranked.gather(-1, size - 1)).to(x.dtype)
    count = support.sum(dim=-1, keepdim=True)
    mean = (x * support).sum(dim=-1, keepdim=True) / count
    mean_sq = (x * x * support).sum(dim=-1, keepdim=True) / count
    spread = torch.clamp((1 - count * (mean_sq - mean * mean)) / count, min=1e-12)  # > 0 on the support
    r = torch.clamp(x - (mean - torch.sqrt(spread)), min=0)
    return r * r


class Entmax15Attention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int):
        super().__init__(head_dim, num_heads)
        self.scale = 1.0 / math.sqrt(head_dim)

    def attention_weights(self, q, k):
        return entmax15((q @ k.transpose(-2, -1)) * self.scale).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="entmax15",
        description="1.5-entmax(q.k^T/sqrt(d)) v, sparse attention between softmax and sparsemax "
                    "(Peters et al. 2019)",
        factory=Entmax15Attention,
        options=[],
    )
