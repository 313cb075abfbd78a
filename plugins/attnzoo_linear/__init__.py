"""linear attention: kernel feature map phi(x) = elu(x) + 1 in place of exp(q.k), O(N).

Paper: Angelos Katharopoulos, Apoorv Vyas, Nikolaos Pappas, Francois Fleuret (2020),
"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention".

    w_ij = phi(q_i).phi(k_j) / (sum_l phi(q_i).phi(k_l) + eps)

Fast path, by associativity: out_i = phi(q_i) (sum_j phi(k_j) v_j^T) / (phi(q_i) .
sum_j phi(k_j) + eps), O(N d^2) time and no N x N matrix.

Options: ``eps`` (float, default 1e-6, as in the authors' implementation).
"""

from __future__ import annotations

from torch.nn import functional as F

from attnzoo import AttentionVariant, Option, hookimpl


def _phi(x):
    return F.elu(x) + 1


class LinearAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__(head_dim, num_heads)
        self.eps = eps

    def attention_weights(self, q, k):
        similarity = _phi(q) @ _phi(k).transpose(-2, -1)  # (B, H, N, N)
        # the row sum as a matmul with a ones column: GPU autocast would return sum() in float32
        row_sum = similarity @ similarity.new_ones(similarity.shape[-1], 1)
        return (similarity / (row_sum + self.eps)).to(q.dtype)

    def forward(self, q, k, v):
        phi_q, phi_k = _phi(q), _phi(k)
        context = phi_k.transpose(-2, -1) @ v  # (B, H, d, d)
        k_total = phi_k.transpose(-2, -1) @ phi_k.new_ones(phi_k.shape[-2], 1)  # (B, H, d, 1)
        return ((phi_q @ context) / (phi_q @ k_total + self.eps)).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="linear",
        description="phi(q).phi(k) normalized over keys, phi = elu + 1; linear time (Katharopoulos et al. 2020)",
        factory=LinearAttention,
        options=[Option("eps", float, 1e-6, None, "added to the normalizer")],
    )
