"""Forward + backward time of cosine attention's two paths against softmax (SDPA).

    python benchmarks/cosine_kernel.py                      # CUDA, bf16, the bench shape (B 256, H 12)
    python benchmarks/cosine_kernel.py --batch 4 --steps 2  # without a GPU: the PyTorch paths on the CPU
    TRITON_INTERPRET=1 python benchmarks/cosine_kernel.py --batch 2 --heads 2 --steps 1   # + the kernel, interpreted

Inputs are made as the model makes them (strided views of one qkv tensor). Before timing,
the Triton path is checked against the PyTorch path computed in float32, outputs and
gradients, and the script stops if they disagree. Ratios are softmax's time over each
path's: above 1 means faster than softmax.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from attnzoo_cosine import CosineAttention
from torch.nn import functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_qkv(batch, heads, tokens, head_dim, dtype, device):
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    return qkv, qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d), as Attention.split_heads


def paths(heads, head_dim, device, with_triton):
    found = {"softmax (SDPA)": F.scaled_dot_product_attention,
             "cosine torch": CosineAttention(head_dim, heads, scale="inv_n", backend="torch").to(device)}
    if with_triton:
        found["cosine triton"] = CosineAttention(head_dim, heads, scale="inv_n", backend="triton").to(device)
    return found


def step(fn, qkv, q, k, v, upstream):
    out = fn(q, k, v)
    qkv.grad = None
    out.backward(upstream)


def time_ms(fn, qkv, q, k, v, upstream, steps, device) -> tuple[float, float]:
    """(ms per forward + backward, peak MiB above the inputs; 0 off CUDA)."""
    for _ in range(3):
        step(fn, qkv, q, k, v, upstream)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    start = time.perf_counter()
    for _ in range(steps):
        step(fn, qkv, q, k, v, upstream)
    sync()
    elapsed = (time.perf_counter() - start) * 1000 / steps
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else 0.0
    return elapsed, peak


def check_triton(heads, head_dim, tokens, dtype, device) -> float:
    """Largest error of the Triton path (output, dq, dk, dv) relative to the largest entry of the
    float32 PyTorch answer; raises above what the dtype's rounding explains."""
    qkv, (q, k, v) = make_qkv(2, heads, tokens, head_dim, dtype, device)
    ref_qkv = qkv.detach().float().requires_grad_()
    ref_q, ref_k, ref_v = ref_qkv.permute(2, 0, 3, 1, 4).unbind(0)
    triton_path = CosineAttention(head_dim, heads, scale="inv_n", backend="triton").to(device)
    torch_path = CosineAttention(head_dim, heads, scale="inv_n", backend="torch").to(device)
    out, ref = triton_path(q, k, v), torch_path(ref_q, ref_k, ref_v)
    upstream = torch.randn_like(ref)
    out.backward(upstream.to(dtype))
    ref.backward(upstream)
    worst = 0.0
    for actual, expected in ((out, ref), (qkv.grad, ref_qkv.grad)):
        worst = max(worst, ((actual.float() - expected).abs().max() / expected.abs().max()).item())
    limit = 1e-4 if dtype == torch.float32 else 3e-2
    if not worst < limit:
        sys.exit(f"triton path disagrees with the PyTorch path at N={tokens}, d={head_dim}: {worst:.2e} > {limit}")
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, nargs="+", default=[65, 257])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    interpreted = not cuda and os.environ.get("TRITON_INTERPRET") == "1"  # a dry run of the kernel path
    with_triton = cuda or interpreted
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype]
    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{where} | torch {torch.__version__} | {args.dtype} | batch {args.batch}, {args.heads} heads, "
          f"forward + backward, {args.steps} steps")
    if interpreted:
        print("No CUDA GPU: the Triton kernel runs in Triton's interpreter; its times mean nothing.")
    elif not cuda:
        print("No CUDA GPU: the Triton kernel needs one. Timing the PyTorch paths on the CPU only.")
    print()
    print("| N | d | path | ms | vs softmax | peak MiB | max rel. err vs torch fp32 |")
    print("|---|---|---|---|---|---|---|")
    for tokens in args.tokens:
        for head_dim in args.head_dims:
            error = f"{check_triton(args.heads, head_dim, tokens, dtype, device):.1e}" if with_triton else ""
            qkv, (q, k, v) = make_qkv(args.batch, args.heads, tokens, head_dim, dtype, device)
            upstream = torch.randn(q.shape, device=device, dtype=dtype)
            softmax_ms = None
            for name, fn in paths(args.heads, head_dim, device, with_triton).items():
                ms, peak = time_ms(fn, qkv, q, k, v, upstream, args.steps, device)
                softmax_ms = softmax_ms or ms
                err = error if name == "cosine triton" else ""
                print(f"| {tokens} | {head_dim} | {name} | {ms:.3f} | {softmax_ms / ms:.2f}x | {peak:.0f} | {err} |")


if __name__ == "__main__":
    main()
