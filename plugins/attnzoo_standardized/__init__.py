"""standardized attention: softmax(q'.k'^T * scale) v', x' = (x - mean(x)) / std(x) per vector.

The study divides by d (``scale: inv_d``), which bounds the logits to [-1, 1] and keeps
attention close to uniform; ``inv_sqrt_d`` and a learnable per-head temperature
(``learnable``, as in QK-norm / Swin V2) are the documented alternatives.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl, standardize

MAX_LOGIT_SCALE = math.log(100.0)  # clamp as in Swin V2 so the temperature cannot explode


class StandardizedAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, scale: str = "inv_d",
                 standardize_values: bool = True, eps: float = 1e-5):
        super().__init__(head_dim, num_heads)
        self.scale_mode = scale
        self.standardize_values = standardize_values
        self.eps = eps
        if scale == "learnable":
            # log of the temperature, one per head, starting at 1/sqrt(d)
            init = math.log(1.0 / math.sqrt(head_dim))
            self.log_scale = nn.Parameter(torch.full((num_heads, 1, 1), init))
        else:
            self.fixed_scale = 1.0 / head_dim if scale == "inv_d" else 1.0 / math.sqrt(head_dim)

    def _scaled_q(self, q):
        """Standardized q; a learnable per-head temperature is folded in (SDPA takes one
        scalar scale only), a fixed scale goes to SDPA itself (no extra kernel)."""
        q = standardize(q, self.eps)
        if self.scale_mode == "learnable":
            return q * self.log_scale.clamp(max=MAX_LOGIT_SCALE).exp().to(q.dtype)
        return q

    def _sdpa_scale(self) -> float:
        return 1.0 if self.scale_mode == "learnable" else self.fixed_scale

    def values(self, v):
        return standardize(v, self.eps) if self.standardize_values else v

    def attention_weights(self, q, k):
        logits = self._scaled_q(q) @ standardize(k, self.eps).transpose(-2, -1)
        return torch.softmax(logits * self._sdpa_scale(), dim=-1)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(
            self._scaled_q(q), standardize(k, self.eps), self.values(v), scale=self._sdpa_scale()
        )


@hookimpl
def register_attention_variants(register):
    register(
        name="standardized",
        description=("softmax of standardized q.k (zero mean, unit std per vector) scaled by 1/d, standardized v "
                     "(the CIFAR-100 ViT study attnzoo grew out of; cf. QK-LayerNorm, Dehghani et al. 2023)"),
        factory=StandardizedAttention,
        options=[
            Option("scale", str, "inv_d", ("inv_d", "inv_sqrt_d", "learnable"),
                   "logit scale: 1/d (study), 1/sqrt(d), or a learnable per-head temperature"),
            Option("standardize_values", bool, True, None, "also standardize v (as in the study)"),
            Option("eps", float, 1e-5, None, "added to the variance for stability"),
        ],
    )
