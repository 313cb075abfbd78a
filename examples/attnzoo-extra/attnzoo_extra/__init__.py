"""attnzoo-extra: an attention variant as a third-party attnzoo plugin.

* ``relu_squared``: relu(q.k^T / N + b)^2 v, the attention of the gated attention unit
  (Hua et al. 2022, "Transformer Quality in Linear Time").

Only attnzoo's public API is used: ``AttentionVariant``, ``Option`` and ``hookimpl``.
"""

from __future__ import annotations

from attnzoo import Option, hookimpl

from .relu_squared import ReluSquaredAttention

__version__ = "0.2.0"


@hookimpl
def register_attention_variants(register):
    register(
        name="relu_squared",
        description="relu(q.k^T/N + b)^2 v, squared-ReLU attention of the gated attention unit (Hua et al. 2022)",
        factory=ReluSquaredAttention,
        options=[
            Option("bias", float, 0.0, None, "constant b added to every logit before the squared ReLU"),
        ],
    )
