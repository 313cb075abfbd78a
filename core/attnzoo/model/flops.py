"""Training FLOPs per image of a VisionTransformer, its attention part apart.

FLOPs are counted with PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode``,
over one forward and backward pass (cross-entropy loss included) of the run's model at its
image size, on the CPU, so the number does not depend on the device the run used. One
multiply-add is two FLOPs. What the counter sees and what it does not:

- It counts matrix products and convolutions (mm, addmm, bmm, convolution and their
  backward) and the fused attention kernels it has formulas for. Element-wise work
  (softmax, normalisation of q/k/v, layer norm, GELU, dropout) and the optimizer step are
  not counted; at CIFAR sizes they are a few per cent of the products.
- Torch 2.14 has no formula for the CPU kernel of ``scaled_dot_product_attention``
  (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward): it counts them
  as zero. :data:`SDPA_FORMULAS` adds them, with the products QKᵀ and AV forward and their
  four gradient products backward (twice the forward). Torch's formulas for the GPU kernels
  also count the recomputation of QKᵀ in the backward pass (2.5 times the forward); this
  module uses the algorithm's count for every SDPA kernel, so the count of SDPA equals the
  count of the same attention written as explicit matrix products.
- An operator the counter cannot look into (a custom operator, e.g. a Triton kernel behind
  ``torch.library``) counts as zero. When a variant's forward uses one, its kernel shows no
  FLOPs at all, or its forward cannot run on the CPU, the variant is counted through its
  explicit (reference) path instead, and the count says so (``attention_path: explicit``,
  ``explicit_because``, ``opaque_ops``). For a variant whose fast path avoids the N x N
  matrix (cosine's q̂(k̂ᵀv)) the explicit count is an upper bound. A Triton kernel
  launched outside the dispatcher would be invisible even to that check; such a kernel does
  not run on the CPU, where the count is made, so the variant's CPU path is what is counted.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.contract.variant import ExplicitPath

COUNT_BATCH = 2  # images in the counted step; FLOPs per image do not depend on it
KNOWN_NAMESPACES = {"aten", "prims", "prim"}

NOT_COUNTED = ("element-wise operations (softmax, normalisation, layer norm, GELU, dropout) and the optimizer "
               "step; operators the counter cannot look into (see attention_path and opaque_ops)")


# ---------------------------------------------------------------- SDPA formulas


def _bmm(b: int, m: int, k: int, n: int) -> int:
    return 2 * b * m * k * n


def sdpa_forward_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """QKᵀ and AV: 2·B·H·Nq·Nk·(d + dv)."""
    b, h, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return _bmm(b * h, nq, d, nk) + _bmm(b * h, nq, nk, dv)


def sdpa_backward_flops(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """dV = Aᵀ dO, dA = dO Vᵀ, dQ = dS K, dK = dSᵀ Q: twice the forward (no recomputation counted)."""
    return 2 * sdpa_forward_flops(q_shape, k_shape, v_shape)


def _sdpa_formulas() -> dict:
    aten = torch.ops.aten
    forward = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"]
    backward = [name + "_backward" for name in forward]
    formulas = {}
    for names, formula in ((forward, sdpa_forward_flops), (backward, sdpa_backward_flops)):
        for name in names:
            if hasattr(aten, name):  # the set of kernels differs between torch versions
                formulas[getattr(aten, name)] = formula
    return formulas


SDPA_FORMULAS = _sdpa_formulas()


def flop_counter() -> FlopCounterMode:
    """PyTorch's counter with the SDPA formulas above."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)


class _OpNamespaces(TorchDispatchMode):
    """Records the operators outside aten/prims (custom operators the counter sees as zero)."""

    def __init__(self):
        super().__init__()
        self.opaque: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace not in KNOWN_NAMESPACES:
            self.opaque.add(str(func))
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- counting


def count_step(fn) -> tuple[int, set[str]]:
    """FLOPs of running fn() (forward and backward inside), and the opaque operators it used."""
    ops = _OpNamespaces()
    with flop_counter() as counter, ops:
        fn()
    return counter.get_total_flops(), ops.opaque


def attention_flops(kernel: torch.nn.Module, batch: int, heads: int, tokens: int, head_dim: int, *,
                    backward: bool = True) -> tuple[int, set[str]]:
    """FLOPs of one attention kernel on (batch, heads, tokens, head_dim) q, k, v, forward (+ backward)."""
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, requires_grad=backward) for _ in range(3))

    def step():
        out = kernel(q, k, v)
        if backward:
            out.sum().backward()

    return count_step(step)


@contextlib.contextmanager
def _explicit_kernels(blocks: list[torch.nn.Module]):
    """Route every block's kernel through its explicit (reference) path while counting, with
    the wrapper bench's naive model uses: the one way a kernel is forced through it."""
    kernels = [block.attn.kernel for block in blocks]
    for block, kernel in zip(blocks, kernels):
        block.attn.kernel = ExplicitPath(kernel)
    try:
        yield
    finally:
        for block, kernel in zip(blocks, kernels):
            block.attn.kernel = kernel


def _count_model(model: torch.nn.Module, image_size: int, batch: int, path: str) -> dict:
    """One count of `model` (a CPU float32 copy) as its kernels run now; `path` names how they run."""
    kernels = [block.attn.kernel for block in model.blocks]
    tokens, heads = model.pos_embed.shape[1], model.blocks[0].attn.heads
    head_dim = model.pos_embed.shape[2] // heads
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.zeros(batch, dtype=torch.long)

    def train_step():
        F.cross_entropy(model(images), labels).backward()

    def forward():
        with torch.no_grad():
            model(images)

    train, opaque = count_step(train_step)
    fwd, _ = count_step(forward)
    attn = [attention_flops(k, batch, heads, tokens, head_dim) for k in kernels]
    attn_fwd = sum(attention_flops(k, batch, heads, tokens, head_dim, backward=False)[0] for k in kernels)
    opaque |= set().union(*(o for _, o in attn))
    model.zero_grad(set_to_none=True)  # the next count, and the caller, start without gradients
    return {"flops_per_image": train // batch, "forward_flops_per_image": fwd // batch,
            "attention_flops_per_image": sum(f for f, _ in attn) // batch,
            "attention_forward_flops_per_image": attn_fwd // batch,
            "attention_path": path, "opaque_ops": sorted(opaque)}


def _why_not_trusted(count: dict) -> str | None:
    """Why a count through the forward path cannot be trusted, or None when it can."""
    if count["opaque_ops"]:
        return f"custom operators {count['opaque_ops']}"
    if count["attention_flops_per_image"] == 0:
        return "the attention kernel showed no FLOPs"
    return None


def model_flops(model: torch.nn.Module, image_size: int, batch: int = COUNT_BATCH) -> dict:
    """Training and forward FLOPs per image of a VisionTransformer, attention part apart.

    Counted on a CPU float32 copy in train mode (dropout does no products), through the
    kernels' forward path, or through their explicit path when the forward count cannot be
    trusted (the result says why: ``explicit_because``)."""
    model = copy.deepcopy(model).float().cpu().train()
    try:
        result = _count_model(model, image_size, batch, "forward")
        reason = _why_not_trusted(result)
    except Exception as exc:  # noqa: BLE001 - e.g. a kernel that only runs on the GPU, asked for explicitly
        model.zero_grad(set_to_none=True)
        result, reason = {"opaque_ops": []}, f"the forward path failed on the CPU ({type(exc).__name__}: {exc})"
    if reason is None:
        return result
    with _explicit_kernels(list(model.blocks)):
        explicit = _count_model(model, image_size, batch, "explicit")
    explicit.update(opaque_ops=result["opaque_ops"], explicit_because=reason)
    return explicit


def counter_record(batch: int = COUNT_BATCH) -> dict:
    """How the counts of :func:`model_flops` were made, to keep beside them."""
    return {"tool": "torch.utils.flop_counter.FlopCounterMode", "torch": torch.__version__,
            "counted_on": "cpu, float32", "batch": batch,
            "convention": "2 FLOPs per multiply-add; train = forward + backward (loss included)",
            "not_counted": NOT_COUNTED}
