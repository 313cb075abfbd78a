"""Per-call host time of a variant's forward (and forward + backward) on tensors so small that
the arithmetic costs nothing: what is left is Python, dispatch and allocation, the cost an
eager GPU step pays on the host for every layer. Variants are timed in interleaved rounds
(a slow moment of a shared machine lands on all of them) and reported as the median.

    python benchmarks/host_time.py [--rounds 30] [--calls 200]

On the CPU this times the PyTorch paths (the Triton kernels need CUDA); on a GPU add
--device cuda to time what auto picks there (the kernels for cosine and standardized)."""

import argparse
import platform
import statistics
import time

import torch
from attnzoo.contract.registry import load_registry

VARIANTS = [("softmax", {}), ("standardized", {}), ("standardized", {"scale": "learnable"}),
            ("cosine", {}), ("cosine", {"scale": "learnable"})]


def per_call_us(module, q, k, v, calls: int, backward: bool, device: str) -> float:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    for _ in range(calls):
        out = module(q, k, v)
        if backward:
            out.sum().backward()
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)  # host cost, not arithmetic: one thread, no pool wake-ups
    registry = load_registry()
    modules = {(name, str(opts)): registry.create(name, head_dim=16, num_heads=2, **opts).to(args.device)
               for name, opts in VARIANTS}
    q, k, v = (torch.randn(1, 2, 5, 16, device=args.device, requires_grad=True) for _ in range(3))
    times = {(key, bw): [] for key in modules for bw in (False, True)}
    for module in modules.values():  # warm-up: first calls import and allocate
        per_call_us(module, q, k, v, 20, True, args.device)
    for _ in range(args.rounds):
        for key, module in modules.items():
            for bw in (False, True):
                times[key, bw].append(per_call_us(module, q, k, v, args.calls, bw, args.device))
    median = {key: statistics.median(ts) for key, ts in times.items()}
    base = {bw: median[("softmax", "{}"), bw] for bw in (False, True)}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
          f"B1 H2 N5 d16, median of {args.rounds} rounds x {args.calls} calls")
    print("| variant | options | forward µs | x softmax | forward+backward µs | x softmax |")
    print("|---|---|---|---|---|---|")
    for (name, opts) in modules:
        f, fb = median[(name, opts), False], median[(name, opts), True]
        print(f"| {name} | {opts if opts != '{}' else ''} | {f:.1f} | {f / base[False]:.2f} | {fb:.1f} | "
              f"{fb / base[True]:.2f} |")


if __name__ == "__main__":
    main()
