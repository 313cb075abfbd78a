"""Performer attention (FAVOR+): positive orthogonal random features approximate softmax; O(N).

Paper: Krzysztof Choromanski, Valerii Likhosherstov, David Dohan, Xingyou Song, Andreea
Gane, Tamas Sarlos, Peter Hawkins, Jared Davis, Afroz Mohiuddin, Lukasz Kaiser, David
Belanger, Lucy Colwell, Adrian Weller (2021), "Rethinking Attention with Performers".

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   x = q / d^(1/4) or k / d^(1/4)
    w_ij = phi(q_i).phi(k_j) / sum_l phi(q_i).phi(k_l)

W (m x d) stacks blocks of orthogonal rows, each row rescaled to the norm of a Gaussian
vector, so E[phi(q).phi(k)] = exp(q.k / sqrt(d)): softmax attention in expectation.
As in the authors' implementation, the largest exponent is subtracted before exp() (per
query row, and over all keys of a sequence) and a small ``stabilizer`` is added to every
feature, so no normalizer underflows to zero.

The random features are drawn once, when the layer is built, and kept in a buffer: a
checkpoint carries them. By default they are drawn from the stream the model gives each
layer (seeded from the run seed and the layer index; see attnzoo.contract.hookspecs), so
every layer has its own features and a study's seed-to-seed spread includes the feature
draw. ``seed`` fixes them instead: the same features in every layer and every run. (The
paper also redraws them during training on some tasks; here they are fixed for a run.)

Fast path, by associativity: phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j)), O(N m d).
Options: ``features`` (int m; unset means round(d ln d), the paper's m = Theta(d log d)),
``seed`` (int; unset means per layer and run seed), ``stabilizer`` (float, default 1e-6, as in the
authors' code). Runs made before ``seed`` defaulted to unset recorded ``seed: 0``, and resume with it.
"""

from __future__ import annotations

import math

import torch

from attnzoo import AttentionVariant, Option, hookimpl


def orthogonal_gaussian_features(m: int, d: int, seed: int | None) -> torch.Tensor:
    """(m, d): blocks of d orthonormal rows (QR of a Gaussian matrix), each row scaled to the
    norm of an independent d-dimensional Gaussian vector, so that every row on its own is
    distributed as N(0, I_d) while rows of a block stay orthogonal. Drawn from a generator of
    their own seeded with `seed`, or, with None, from torch's default generator (which the model
    seeds per layer and run seed while it builds the layer)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    gaussian = torch.randn(math.ceil(m / d), d, d, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # one batched QR for all blocks
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # sign fix: Haar-distributed rows
    rows = q.transpose(-2, -1).reshape(-1, d)[:m]
    norms = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (rows * norms).float()


class PerformerAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, features: int | None = None, seed: int | None = None,
                 stabilizer: float = 1e-6):
        super().__init__(head_dim, num_heads)
        m = features if features is not None else max(1, round(head_dim * math.log(head_dim)))
        if m < 1:
            raise ValueError(f"performer: features must be at least 1, got {m}")
        self.num_features = m
        self.stabilizer = stabilizer
        self.register_buffer("projection", orthogonal_gaussian_features(m, head_dim, seed))  # (m, d)

    def _phi(self, x, over_keys: bool):
        """(B, H, N, d) -> (B, H, N, m) positive features, in x's dtype."""
        x = x * self.head_dim ** -0.25
        exponent = x @ self.projection.to(x.dtype).T  # (B, H, N, m)
        half_sq_norm = (x * x) @ x.new_full((x.shape[-1], 1), 0.5)  # |x|^2 / 2 as a matmul, (B, H, N, 1)
        # Subtracting the largest exponent cancels in the normalization; keys use one value per sequence.
        dims = (-2, -1) if over_keys else (-1,)
        shift = exponent.amax(dim=dims, keepdim=True).detach()
        features = torch.exp(exponent - half_sq_norm - shift) + self.stabilizer
        return (features * self.num_features ** -0.5).to(x.dtype)

    def attention_weights(self, q, k):
        similarity = self._phi(q, False) @ self._phi(k, True).transpose(-2, -1)  # (B, H, N, N)
        row_sum = similarity @ similarity.new_ones(similarity.shape[-1], 1)
        return (similarity / row_sum).to(q.dtype)

    def forward(self, q, k, v):
        phi_q, phi_k = self._phi(q, False), self._phi(k, True)
        context = phi_k.transpose(-2, -1) @ v.to(phi_k.dtype)  # (B, H, m, d)
        k_total = phi_k.transpose(-2, -1) @ phi_k.new_ones(phi_k.shape[-2], 1)  # (B, H, m, 1)
        return ((phi_q @ context) / (phi_q @ k_total)).to(q.dtype)


@hookimpl
def register_attention_variants(register):
    register(
        name="performer",
        description="softmax attention approximated by positive orthogonal random features (FAVOR+); "
                    "linear time (Choromanski et al. 2021)",
        factory=PerformerAttention,
        options=[
            Option("features", int, None, None, "number of random features m; unset means round(d ln d)"),
            Option("seed", int, None, None, "seed of the random features, the same in every layer and run; unset "
                   "means drawn per layer and run seed (saved with the model either way)"),
            Option("stabilizer", float, 1e-6, None, "added to every feature so no normalizer underflows"),
        ],
    )
