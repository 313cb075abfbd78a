"""A fused Triton kernel that standardizes q, k and v in one launch, forward and backward.

    y = (x - mean(x)) * rstd,   rstd = 1 / sqrt(var(x) + eps),   per row of d features

Why a kernel: ``F.layer_norm`` over rows of 16 features runs one CUDA thread block per
row (about 790k blocks a call at 257 tokens, batch 64, 8 heads), three calls a layer
each way, plus a copy because q, k and v are strided views of one qkv tensor. Slow
LayerNorm at small feature sizes is a known PyTorch problem (pytorch/pytorch#69963).

Here one launch covers q, k and v (or q and k): each program takes ROWS rows of every
tensor, reads the strided views directly (any strides, no copy), keeps the statistics in
float32 and writes the compute dtype (autocast's, so SDPA gets bf16 without a cast).
The backward recomputes mean and rstd from the saved inputs (cheaper than storing them):

    dx = rstd * (dy - mean(dy) - y * mean(dy * y))

Wrapped in ``torch.library.custom_op`` with registered fake and autograd implementations,
so ``torch.compile`` sees one opaque op each way. On the CPU the kernels run in Triton's
interpreter (how the tests check them; TRITON_INTERPRET=1 must be set before the process
starts).

Interpreter shim: Triton's interpreter truncates float32 -> bfloat16 casts where a GPU
rounds to nearest even. Under the interpreter, stores to bfloat16 first round the float32
bits by hand (ROUND_BF16), so the CPU tests check the same numbers a GPU writes.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl

FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what backend "auto" sends here
SUPPORTED_DTYPES = FAST_DTYPES + (torch.float64,)  # float64: for exact tests, not for speed
LAUNCHES = {"forward": 0, "backward": 0}  # counted so tests can prove the kernels ran
ELEMENTS_PER_PROGRAM = 4096  # rows x padded head dim per program: enough work to hide a launch's latency


def interpreting() -> bool:
    """Triton's own test of TRITON_INTERPRET, read from os.environ so torch.compile can trace it."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def available(device: torch.device) -> bool:
    """True where the kernels can run: CUDA, or the CPU under Triton's interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _round_to_bf16_bits(x):
    """float32 -> float32 holding the nearest bfloat16 (ties to even), for the interpreter."""
    bits = x.to(tl.int32, bitcast=True)
    bias = 0x7FFF + ((bits >> 16) & 1)
    return ((bits + bias) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _row_offsets(r, ok, H, N, sb, sh, sn):
    """Offsets of rows r = (b * H + h) * N + n of a (B, H, N, d) view with strides sb, sh, sn."""
    r = tl.where(ok, r, 0).to(tl.int64)  # 64-bit offsets for large batches
    n = r % N
    bh = r // N
    return (bh // H) * sb + (bh % H) * sh + n * sn


@triton.jit
def _standardize_rows(X, Y, r, row_ok, cols, col_ok, H, N, D, eps,
                      sxb, sxh, sxn, sxd, syb, syh, syn, syd,
                      ACC: tl.constexpr, ROUND_BF16: tl.constexpr):
    ok = row_ok[:, None] & col_ok[None, :]
    x_off = _row_offsets(r, row_ok, H, N, sxb, sxh, sxn)[:, None] + cols[None, :] * sxd
    x = tl.load(X + x_off, mask=ok, other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(ok, x - mean[:, None], 0.0)  # padded columns must not count in the variance
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    y = xc * rstd[:, None]
    if ROUND_BF16:
        y = _round_to_bf16_bits(y)
    y_off = _row_offsets(r, row_ok, H, N, syb, syh, syn)[:, None] + cols[None, :] * syd
    tl.store(Y + y_off, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _standardize_fwd(Q, K, V, OQ, OK, OV,
                     sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     sob, soh, son, sod,  # strides shared by the three outputs
                     R, H, N, D, eps,
                     COUNT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                     ACC: tl.constexpr, ROUND_BF16: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < R
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    _standardize_rows(Q, OQ, r, row_ok, cols, col_ok, H, N, D, eps, sqb, sqh, sqn, sqd,
                      sob, soh, son, sod, ACC, ROUND_BF16)
    _standardize_rows(K, OK, r, row_ok, cols, col_ok, H, N, D, eps, skb, skh, skn, skd,
                      sob, soh, son, sod, ACC, ROUND_BF16)
    if COUNT == 3:
        _standardize_rows(V, OV, r, row_ok, cols, col_ok, H, N, D, eps, svb, svh, svn, svd,
                          sob, soh, son, sod, ACC, ROUND_BF16)


@triton.jit
def _standardize_rows_bwd(X, DY, DX, r, row_ok, cols, col_ok, H, N, D, eps,
                          sxb, sxh, sxn, sxd, sgb, sgh, sgn, sgd, sdb, sdh, sdn, sdd,
                          ACC: tl.constexpr, ROUND_BF16: tl.constexpr):
    ok = row_ok[:, None] & col_ok[None, :]
    x_off = _row_offsets(r, row_ok, H, N, sxb, sxh, sxn)[:, None] + cols[None, :] * sxd
    x = tl.load(X + x_off, mask=ok, other=0.0).to(ACC)
    g_off = _row_offsets(r, row_ok, H, N, sgb, sgh, sgn)[:, None] + cols[None, :] * sgd
    dy = tl.load(DY + g_off, mask=ok, other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    y = xc * rstd[:, None]
    dy_mean = tl.sum(dy, axis=1) / D
    dyy_mean = tl.sum(dy * y, axis=1) / D
    dx = (dy - dy_mean[:, None] - y * dyy_mean[:, None]) * rstd[:, None]
    if ROUND_BF16:
        dx = _round_to_bf16_bits(dx)
    d_off = _row_offsets(r, row_ok, H, N, sdb, sdh, sdn)[:, None] + cols[None, :] * sdd
    tl.store(DX + d_off, dx.to(DX.dtype.element_ty), mask=ok)


@triton.jit
def _standardize_bwd(Q, K, V, GQ, GK, GV, DQ, DK, DV,
                     sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     s1b, s1h, s1n, s1d, s2b, s2h, s2n, s2d, s3b, s3h, s3n, s3d,  # grads of the outputs
                     sdb, sdh, sdn, sdd,  # strides shared by dq, dk, dv
                     R, H, N, D, eps,
                     COUNT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                     ACC: tl.constexpr, ROUND_BF16: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < R
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    _standardize_rows_bwd(Q, GQ, DQ, r, row_ok, cols, col_ok, H, N, D, eps, sqb, sqh, sqn, sqd,
                          s1b, s1h, s1n, s1d, sdb, sdh, sdn, sdd, ACC, ROUND_BF16)
    _standardize_rows_bwd(K, GK, DK, r, row_ok, cols, col_ok, H, N, D, eps, skb, skh, skn, skd,
                          s2b, s2h, s2n, s2d, sdb, sdh, sdn, sdd, ACC, ROUND_BF16)
    if COUNT == 3:
        _standardize_rows_bwd(V, GV, DV, r, row_ok, cols, col_ok, H, N, D, eps, svb, svh, svn, svd,
                              s3b, s3h, s3n, s3d, sdb, sdh, sdn, sdd, ACC, ROUND_BF16)


# ----------------------------------------------------------------------------- launchers


def _launch_config(rows: int, d: int) -> tuple[tuple[int], dict]:
    """Grid and block sizes: ROWS rows of every tensor per program, the head dim padded to
    a power of two (masked), about ELEMENTS_PER_PROGRAM elements each."""
    block_d = triton.next_power_of_2(d)
    per_program = max(1, min(ELEMENTS_PER_PROGRAM // block_d, triton.next_power_of_2(rows)))
    return (triton.cdiv(rows, per_program),), dict(ROWS=per_program, BLOCK_D=block_d, num_warps=4)


def _numerics(x: torch.Tensor, out_dtype: torch.dtype) -> dict:
    return dict(ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                ROUND_BF16=out_dtype == torch.bfloat16 and interpreting())


def _on_device_of(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it x's (several GPUs in one process)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Three tensors for the kernel's three slots; a missing v repeats q (COUNT=2 never reads it)."""
    return list(tensors) + [tensors[0]] * (3 - len(tensors))


def _strides(tensors: list[torch.Tensor]) -> list[int]:
    return [s for x in _padded(tensors) for s in x.stride()]


@torch.library.custom_op("attnzoo_standardized::forward", mutates_args=())
def standardize_forward(xs: list[torch.Tensor], eps: float, out_dtype: torch.dtype) -> list[torch.Tensor]:
    """q, k[, v] (B, H, N, d), any strides -> their standardized rows, contiguous, in out_dtype."""
    B, H, N, d = xs[0].shape
    outs = [torch.empty(B, H, N, d, dtype=out_dtype, device=xs[0].device) for _ in xs]
    grid, blocks = _launch_config(B * H * N, d)
    with _on_device_of(xs[0]):
        _standardize_fwd[grid](*_padded(xs), *_padded(outs), *_strides(xs), *outs[0].stride(),
                               B * H * N, H, N, d, eps, COUNT=len(xs), **blocks,
                               **_numerics(xs[0], out_dtype))
    LAUNCHES["forward"] += 1
    return outs


@standardize_forward.register_fake
def _(xs, eps, out_dtype):
    return [torch.empty(x.shape, dtype=out_dtype, device=x.device) for x in xs]


@torch.library.custom_op("attnzoo_standardized::backward", mutates_args=())
def standardize_backward(grads: list[torch.Tensor], xs: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    """Gradients of the standardized rows -> gradients of q, k[, v], in the inputs' dtype."""
    B, H, N, d = xs[0].shape
    dxs = [torch.empty(B, H, N, d, dtype=xs[0].dtype, device=xs[0].device) for _ in xs]
    grid, blocks = _launch_config(B * H * N, d)
    with _on_device_of(xs[0]):
        _standardize_bwd[grid](*_padded(xs), *_padded(grads), *_padded(dxs), *_strides(xs), *_strides(grads),
                               *dxs[0].stride(), B * H * N, H, N, d, eps, COUNT=len(xs), **blocks,
                               **_numerics(xs[0], xs[0].dtype))
    LAUNCHES["backward"] += 1
    return dxs


@standardize_backward.register_fake
def _(grads, xs, eps):
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs]


def _setup_context(ctx, inputs, output):
    xs, eps, _out_dtype = inputs
    ctx.save_for_backward(*xs)
    ctx.eps = eps


def _backward(ctx, grads):
    xs = list(ctx.saved_tensors)
    # grads of unused outputs arrive as zeros; the kernel wants one dtype: the outputs'
    grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs)]
    return standardize_backward(grads, xs, ctx.eps), None, None


standardize_forward.register_autograd(_backward, setup_context=_setup_context)


def standardize_rows(xs: list[torch.Tensor], eps: float, out_dtype: torch.dtype) -> list[torch.Tensor]:
    """Standardize two or three (B, H, N, d) tensors of one shape and dtype in one launch."""
    if len(xs) not in (2, 3) or any(x.shape != xs[0].shape or x.dtype != xs[0].dtype for x in xs):
        raise ValueError("standardize_rows takes 2 or 3 tensors of one (B, H, N, d) shape and one dtype; got "
                         f"{[(tuple(x.shape), x.dtype) for x in xs]}")
    return standardize_forward(list(xs), eps, out_dtype)
