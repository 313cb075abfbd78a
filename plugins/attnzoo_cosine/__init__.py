"""cosine attention: (q^.k^T) v with q^ = q/|q|, k^ = k/|k|, and no softmax.

Without softmax the product is associative: q^ (k^T v) costs O(N d^2) and never builds
the N x N matrix. The weights are unnormalised cosines in [-1, 1], so the output grows
with N; ``scale: inv_n`` divides by N and ``learnable`` adds a learnable per-head
temperature on top of 1/N.

Two implementations of the fast path, chosen by ``backend``:

- ``triton`` (``triton_kernel.py``): one fused kernel forward and one backward, each a
  single launch per layer (PyTorch's path is about ten small kernels each way). Used on
  CUDA for float16, bfloat16 and float32 inputs; ``torch.compile`` sees it as one opaque
  op. Asking for it where it cannot run (no CUDA, no triton) is an error.
- ``torch``: the same math in PyTorch ops; runs everywhere.
- ``auto`` (default): ``triton`` where it can run, ``torch`` otherwise.

Both are tested against the explicit N x N path (``attention_weights(q, k) @ v``),
the kernel on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo import AttentionVariant, AttnzooError, Option, hookimpl, l2_normalize


_kernel = None  # the triton_kernel module once loaded; a plain global, which torch.compile reads freely


def _load_kernel():
    """Import the kernel module on first use (triton is slow to import); None without triton."""
    global _kernel
    if _kernel is None:
        try:
            from . import triton_kernel
        except ImportError:
            return None
        _kernel = triton_kernel
    return _kernel


class CosineAttention(AttentionVariant):
    def __init__(self, head_dim: int, num_heads: int, scale: str = "none", eps: float = 1e-6,
                 backend: str = "auto"):
        super().__init__(head_dim, num_heads)
        self.scale_mode = scale
        self.eps = eps
        self.backend = backend
        self._scale_cache: dict[tuple, torch.Tensor] = {}  # saved for backward, never written: safe to share
        if scale == "learnable":
            self.gain = nn.Parameter(torch.ones(num_heads, 1, 1))
        wanted = backend == "triton" or (backend == "auto" and torch.cuda.is_available())
        kernel = _load_kernel() if wanted else None
        if backend == "triton":
            if kernel is None or not (torch.cuda.is_available() or kernel.interpreting()):
                why = "the triton package is not installed" if kernel is None else "no CUDA device is available"
                raise AttnzooError(
                    f"cosine attention: backend 'triton' cannot run here: {why}. It needs a CUDA GPU "
                    "with triton (or TRITON_INTERPRET=1 to run the kernel slowly on the CPU); use "
                    "backend: auto (triton where possible) or backend: torch."
                )

    def _apply_scale(self, x, tokens: int):
        if self.scale_mode == "none":
            return x
        x = x / tokens
        return x * self.gain.to(x.dtype) if self.scale_mode == "learnable" else x

    def _normalized(self, q, k):
        return l2_normalize(q, self.eps), l2_normalize(k, self.eps)

    def attention_weights(self, q, k):
        q, k = self._normalized(q, k)
        return self._apply_scale(q @ k.transpose(-2, -1), k.shape[-2])

    def forward(self, q, k, v):
        if self._use_triton(q, k, v):
            return self._triton_forward(q, k, v)
        q, k = self._normalized(q, k)
        context = k.transpose(-2, -1) @ v  # (B, H, d, d): O(N d^2)
        return self._apply_scale(q @ context, k.shape[-2])

    def _use_triton(self, q, k, v) -> bool:
        if self.backend == "torch":
            return False
        dtype = _compute_dtype(q, k, v)
        if self.backend == "auto":
            return q.device.type == "cuda" and _kernel is not None and dtype in _kernel.FAST_DTYPES
        if not (_kernel is not None and _kernel.available(q.device) and dtype in _kernel.SUPPORTED_DTYPES):
            raise AttnzooError(
                f"cosine attention: backend 'triton' cannot run on {q.device.type} tensors of dtype "
                f"{dtype}: it needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU) of one floating "
                "dtype (float16, bfloat16, float32 or float64); use backend: auto or backend: torch."
            )
        return True

    def _triton_forward(self, q, k, v):
        dtype = _compute_dtype(q, k, v)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)  # no-ops unless autocast mixed them
        tokens, heads = k.shape[-2], q.shape[1]
        if self.scale_mode == "learnable":
            scale = self.gain.reshape(heads).to(_scale_dtype(dtype)) / tokens
        else:
            scale = self._fixed_scale(heads, tokens, _scale_dtype(dtype), q.device)
        return _kernel.cosine_attention(q, k, v, scale, self.eps)

    def _fixed_scale(self, heads: int, tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The (H,) scale of scale none / inv_n, made once per (heads, tokens, dtype, device):
        a torch.full per layer and call was host time on an eager step that waits on the host.
        Under torch.compile it is made in the graph instead (a constant there, and no cache
        mutation for dynamo to guard on)."""
        value = 1.0 if self.scale_mode == "none" else 1.0 / tokens
        if torch.compiler.is_compiling():
            return torch.full((heads,), value, device=device, dtype=dtype)
        key = (heads, tokens, dtype, device)
        scale = self._scale_cache.get(key)
        if scale is None:
            scale = self._scale_cache[key] = torch.full((heads,), value, device=device, dtype=dtype)
        return scale


def _compute_dtype(q, k, v) -> torch.dtype | None:
    """The dtype the products run in: autocast's where it is on (as for a matmul, which
    leaves float64 alone), else the inputs' own; None when they disagree outside autocast
    (the PyTorch path then reports it)."""
    dtypes = {q.dtype, k.dtype, v.dtype}
    if torch.is_autocast_enabled(q.device.type) and torch.float64 not in dtypes:
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype if len(dtypes) == 1 else None


def _scale_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@hookimpl
def register_attention_variants(register):
    register(
        name="cosine",
        description=("cosine similarity of q and k as weights, no softmax; linear time via q^(k^T v) "
                     "(the CIFAR-100 ViT study attnzoo grew out of; cf. Cottention, Mongaras et al. 2024)"),
        factory=CosineAttention,
        options=[
            Option("scale", str, "none", ("none", "inv_n", "learnable"),
                   "weight scaling: none (study), 1/N, or 1/N times a learnable per-head gain"),
            Option("eps", float, 1e-6, None, "floor on the norm of q and k"),
            Option("backend", str, "auto", ("auto", "torch", "triton"),
                   "fast path: fused Triton kernel (CUDA), PyTorch ops, or auto (triton where it runs)"),
        ],
    )
