"""attnzoo-extra: attention variants from recent work, as an attnzoo plugin.

* ``sigmoid``: sigmoid(q.k^T / sqrt(d) + b) v with b = -log(N) (Ramapuram et al. 2024);
* ``scaled_cosine``: softmax of cosine similarity times a learnable per-head logit
  scale clamped at log(100) (Swin Transformer V2, Liu et al. 2022);
* ``qk_layernorm``: LayerNorm on q and k, then softmax attention (ViT-22B,
  Dehghani et al. 2023).

Only attnzoo's public API is used: ``AttentionVariant``, ``Option`` and ``hookimpl``.
"""

from __future__ import annotations

from attnzoo import Option, hookimpl

from .qk_layernorm import QKLayerNormAttention
from .scaled_cosine import ScaledCosineAttention
from .sigmoid import SigmoidAttention

__version__ = "0.1.0"


@hookimpl
def register_attention_variants(register):
    register(
        name="sigmoid",
        description="sigmoid(q.k^T/sqrt(d) + b) v, b = -log(N) by default (Ramapuram et al. 2024)",
        factory=SigmoidAttention,
        options=[
            Option("bias", float, None, None, "the bias b added to every logit; unset means -log(N)"),
        ],
        fast_path=False,
    )
    register(
        name="scaled_cosine",
        description="softmax(cos(q, k) * tau) v with a learnable per-head tau <= 100 (Swin V2)",
        factory=ScaledCosineAttention,
        options=[
            Option("init_scale", float, 10.0, None, "initial logit scale tau (Swin V2 uses 10)"),
            Option("learnable", bool, True, None, "learn tau per head; false keeps it at init_scale"),
        ],
        fast_path=True,
        has_parameters=True,
    )
    register(
        name="qk_layernorm",
        description="softmax(LN(q).LN(k)^T/sqrt(d)) v, LayerNorm on q and k (ViT-22B)",
        factory=QKLayerNormAttention,
        options=[
            Option("affine", bool, True, None, "learnable LayerNorm gain and bias, shared by the heads"),
            Option("eps", float, 1e-6, None, "added to the variance inside LayerNorm"),
        ],
        fast_path=True,
        has_parameters=True,
    )
