"""Fused Triton kernels for cosine attention, forward and backward.

    out = s_h * q^ (k^T v),   x^ = x / max(|x|, eps) per row,   s_h one float per head

One program per (batch, head) walks the tokens in blocks of BLOCK_N, twice:

    forward   pass 1: ctx  = sum_n k^_n^T v_n                  (d, d), float32
              pass 2: out_n = s * q^_n ctx
    backward  pass 1: dq^_n = s * dout_n ctx^T,  dctx = sum_n q^_n^T dout_n   (d, d); ds = <dctx, ctx>
              pass 2: dk^_n = s * v_n dctx^T,   dv_n = s * k^_n dctx
              and dq, dk back through the normalisation:
                      dx = (dx^ - [|x| >= eps] x^ (x^ . dx^)) / max(|x|, eps)

Each reads q, k, v (and dout) once: memory traffic is what bounds these kernels.

Only (d, d) matrices stay on chip; nothing N x N exists. The head dim is padded to a
power of two >= 16 (what ``tl.dot`` needs) and masked, as is the last token block, so
any N >= 1 and any d work. Products accumulate in float32; operands of ``tl.dot`` are
cast to the input dtype (bf16/fp16 run on tensor cores, float32 uses exact "ieee" dots
to match PyTorch's default float32 matmul).

The kernels are wrapped in ``torch.library.custom_op`` with registered autograd and fake
implementations, so ``torch.compile`` sees one opaque op each way without graph breaks.
On the CPU the kernels run in Triton's interpreter (how the tests check them). Triton
reads ``TRITON_INTERPRET=1`` when it is imported, so set it before the process starts.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl

FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what backend "auto" sends here
SUPPORTED_DTYPES = FAST_DTYPES + (torch.float64,)  # float64: for exact tests, not for speed
LAUNCHES = {"forward": 0, "backward": 0}  # counted so tests can prove the kernels ran


def interpreting() -> bool:
    """Triton's own test of TRITON_INTERPRET, read from os.environ so torch.compile can trace it."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def available(device: torch.device) -> bool:
    """True where the kernels can run: CUDA, or the CPU under Triton's interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _cosine_fwd(Q, K, V, S, O, CTX,
                sqb, sqh, sqn, sqd, skb, skh, skn, skd,
                svb, svh, svn, svd, sob, soh, son, sod,
                H, N, D, eps,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # one program per (batch, head)
    b, h = (pid // H).to(tl.int64), (pid % H).to(tl.int64)  # 64-bit offsets for large batches
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    q_ptr = Q + b * sqb + h * sqh
    k_ptr = K + b * skb + h * skh
    v_ptr = V + b * svb + h * svh
    o_ptr = O + b * sob + h * soh
    s = tl.load(S + h).to(ACC)

    # pass 1: ctx = k^T v, (BLOCK_D, BLOCK_D)
    ctx = tl.zeros((BLOCK_D, BLOCK_D), dtype=ACC)
    for start in range(0, N, BLOCK_N):
        n = start + rows
        ok = (n < N)[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + n[:, None] * skn + cols[None, :] * skd, mask=ok, other=0.0).to(ACC)
        v = tl.load(v_ptr + n[:, None] * svn + cols[None, :] * svd, mask=ok, other=0.0)  # (BLOCK_N, BLOCK_D)
        k_hat = k / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), eps)[:, None]
        ctx += tl.dot(tl.trans(k_hat.to(DOT)), v.to(DOT), input_precision=PRECISION)
    ctx_ok = col_ok[:, None] & col_ok[None, :]
    tl.store(CTX + pid * D * D + cols[:, None] * D + cols[None, :], ctx, mask=ctx_ok)

    # pass 2: out = s * q^ ctx, (BLOCK_N, BLOCK_D) per block
    ctx_lo = ctx.to(DOT)
    for start in range(0, N, BLOCK_N):
        n = start + rows
        ok = (n < N)[:, None] & col_ok[None, :]
        q = tl.load(q_ptr + n[:, None] * sqn + cols[None, :] * sqd, mask=ok, other=0.0).to(ACC)
        q_hat = q / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), eps)[:, None]
        out = tl.dot(q_hat.to(DOT), ctx_lo, input_precision=PRECISION) * s
        tl.store(o_ptr + n[:, None] * son + cols[None, :] * sod, out.to(O.dtype.element_ty), mask=ok)


@triton.jit
def _cosine_bwd(Q, K, V, S, CTX, DO, DQ, DK, DV, DS,
                sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                sdob, sdoh, sdon, sdod, sgb, sgh, sgn, sgd,  # sg*: strides shared by dq, dk, dv
                H, N, D, eps,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    b, h = (pid // H).to(tl.int64), (pid % H).to(tl.int64)  # 64-bit offsets for large batches
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    q_ptr = Q + b * sqb + h * sqh
    k_ptr = K + b * skb + h * skh
    v_ptr = V + b * svb + h * svh
    do_ptr = DO + b * sdob + h * sdoh
    g_off = b * sgb + h * sgh
    s = tl.load(S + h).to(ACC)
    ctx_ok = col_ok[:, None] & col_ok[None, :]
    ctx = tl.load(CTX + pid * D * D + cols[:, None] * D + cols[None, :], mask=ctx_ok, other=0.0)

    # pass 1, per block of q: dq from ctx; accumulate dctx = q^T dout (unscaled), (BLOCK_D, BLOCK_D)
    ctx_t = tl.trans(ctx * s).to(DOT)
    dctx = tl.zeros((BLOCK_D, BLOCK_D), dtype=ACC)
    for start in range(0, N, BLOCK_N):
        n = start + rows
        ok = (n < N)[:, None] & col_ok[None, :]
        q = tl.load(q_ptr + n[:, None] * sqn + cols[None, :] * sqd, mask=ok, other=0.0).to(ACC)
        do = tl.load(do_ptr + n[:, None] * sdon + cols[None, :] * sdod, mask=ok, other=0.0).to(DOT)
        q_norm = tl.sqrt(tl.sum(q * q, axis=1))
        q_hat = q / tl.maximum(q_norm, eps)[:, None]
        dctx += tl.dot(tl.trans(q_hat.to(DOT)), do, input_precision=PRECISION)
        dq_hat = tl.dot(do, ctx_t, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
        # through x^ = x / max(|x|, eps): the radial part only flows where the norm was not clamped
        q_along = tl.where(q_norm >= eps, tl.sum(q_hat * dq_hat, axis=1), 0.0)
        dq = (dq_hat - q_hat * q_along[:, None]) / tl.maximum(q_norm, eps)[:, None]
        tl.store(DQ + g_off + n[:, None] * sgn + cols[None, :] * sgd, dq.to(DQ.dtype.element_ty), mask=ok)
    tl.store(DS + pid, tl.sum(tl.sum(dctx * ctx, axis=1), axis=0))  # d loss / d s = <dctx, ctx>

    # pass 2, per block of k and v: dk and dv from dctx
    dctx_s = dctx * s
    dctx_t = tl.trans(dctx_s).to(DOT)
    dctx_lo = dctx_s.to(DOT)
    for start in range(0, N, BLOCK_N):
        n = start + rows
        ok = (n < N)[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + n[:, None] * skn + cols[None, :] * skd, mask=ok, other=0.0).to(ACC)
        v = tl.load(v_ptr + n[:, None] * svn + cols[None, :] * svd, mask=ok, other=0.0).to(DOT)
        k_norm = tl.sqrt(tl.sum(k * k, axis=1))
        k_hat = k / tl.maximum(k_norm, eps)[:, None]
        dk_hat = tl.dot(v, dctx_t, input_precision=PRECISION)
        dv = tl.dot(k_hat.to(DOT), dctx_lo, input_precision=PRECISION)
        k_along = tl.where(k_norm >= eps, tl.sum(k_hat * dk_hat, axis=1), 0.0)
        dk = (dk_hat - k_hat * k_along[:, None]) / tl.maximum(k_norm, eps)[:, None]
        g = g_off + n[:, None] * sgn + cols[None, :] * sgd
        tl.store(DK + g, dk.to(DQ.dtype.element_ty), mask=ok)
        tl.store(DV + g, dv.to(DQ.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- launchers


# BLOCK_D -> (BLOCK_N, num_warps), for both kernels. Chosen from ptxas's register counts
# for sm_90 with Triton 3.6 and 3.8 (bf16: no spills, about 100-210 registers a thread,
# so several programs share an SM), not yet from timings. Exact float32 dots run on FMA
# units and need more registers: fewer rows in the backward.
BLOCKS = {16: (64, 4), 32: (32, 4), 64: (32, 8)}
BACKWARD_BLOCKS_FP32 = {16: (32, 4), 32: (32, 8), 64: (16, 8)}


def _launch_config(d: int, blocks: dict) -> dict:
    block_d = max(16, triton.next_power_of_2(d))  # tl.dot needs every dimension >= 16
    block_n, warps = blocks.get(block_d, (16, 8))
    return dict(BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps)


def _dtype_config(dtype: torch.dtype) -> dict:
    """ACC: accumulators and the normalisation (float32, float64 for float64 inputs).
    DOT: operands of tl.dot, the input dtype: tensor cores for bf16/fp16, exact "ieee"
    products for float32 as PyTorch's default matmul. Under the interpreter a bf16 dot
    runs in float32, because the interpreter's bf16 dot is wrong (numpy has no bf16)."""
    if dtype == torch.float64:
        return dict(ACC=tl.float64, DOT=tl.float64, PRECISION="ieee")
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting()):
        return dict(ACC=tl.float32, DOT=tl.float32, PRECISION="ieee")
    return dict(ACC=tl.float32, DOT=tl.float16 if dtype == torch.float16 else tl.bfloat16, PRECISION="tf32")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _on_device_of(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it x's (several GPUs in one process)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _bnhd_like(q: torch.Tensor) -> torch.Tensor:
    """An empty (B, H, N, d) tensor laid out as (B, N, H, d): the caller's transpose(1, 2)
    and reshape to (B, N, H*d) then cost nothing."""
    B, H, N, d = q.shape
    return q.new_empty(B, N, H, d).transpose(1, 2)


@torch.library.custom_op("attnzoo_cosine::forward", mutates_args=())
def cosine_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, N, d), scale (H,) -> out (B, H, N, d), ctx (B, H, d, d) float32 (float64)."""
    B, H, N, d = q.shape
    out = _bnhd_like(q)
    ctx = q.new_empty(B, H, d, d, dtype=_acc_dtype(q.dtype))
    with _on_device_of(q):
        _cosine_fwd[(B * H,)](q, k, v, scale, out, ctx, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                      H, N, d, eps, **_dtype_config(q.dtype), **_launch_config(d, BLOCKS))
    LAUNCHES["forward"] += 1
    return out, ctx


@cosine_forward.register_fake
def _(q, k, v, scale, eps):
    B, H, N, d = q.shape
    return _bnhd_like(q), q.new_empty(B, H, d, d, dtype=_acc_dtype(q.dtype))


@torch.library.custom_op("attnzoo_cosine::backward", mutates_args=())
def cosine_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: torch.Tensor, ctx: torch.Tensor, eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv (B, H, N, d) and d loss / d scale (H,) in scale's dtype."""
    B, H, N, d = q.shape
    dq, dk, dv = _bnhd_like(q), _bnhd_like(q), _bnhd_like(q)
    dscale = ctx.new_empty(B, H)
    blocks = BLOCKS if q.element_size() == 2 else BACKWARD_BLOCKS_FP32
    with _on_device_of(q):
        _cosine_bwd[(B * H,)](q, k, v, scale, ctx, grad_out, dq, dk, dv, dscale,
                      *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(),
                      H, N, d, eps, **_dtype_config(q.dtype), **_launch_config(d, blocks))
    LAUNCHES["backward"] += 1
    return dq, dk, dv, dscale.sum(0).to(scale.dtype)


@cosine_backward.register_fake
def _(grad_out, q, k, v, scale, ctx, eps):
    return _bnhd_like(q), _bnhd_like(q), _bnhd_like(q), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, eps = inputs
    ctx.mark_non_differentiable(output[1])  # ctx is returned only to be saved
    ctx.save_for_backward(q, k, v, scale, output[1])
    ctx.eps = eps


def _backward(ctx, grad_out, _grad_ctx):
    q, k, v, scale, context = ctx.saved_tensors
    dq, dk, dv, dscale = cosine_backward(grad_out, q, k, v, scale, context, ctx.eps)
    return dq, dk, dv, dscale, None


cosine_forward.register_autograd(_backward, setup_context=_setup_context)


def cosine_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """s_h * q^ (k^ ^T v) for q, k, v (B, H, N, d) of one dtype and scale (H,), any float dtype."""
    if scale.shape != (q.shape[1],):
        raise ValueError(f"scale must have one entry per head, shape ({q.shape[1]},); got {tuple(scale.shape)}")
    return cosine_forward(q, k, v, scale.contiguous(), eps)[0]
