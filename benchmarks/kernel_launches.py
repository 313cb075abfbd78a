"""Kernels launched per attention call and per training step, for every built-in variant.

At CIFAR sizes a GPU step takes a few milliseconds and launches, not FLOPs, set the pace
(``DESIGN.md`` §4). Launches can be counted anywhere: every ATen op that is not a view
is one kernel on a GPU (a custom op such as the cosine Triton kernel counts once), so
this runs on the CPU and its counts hold for CUDA eager mode.

    python benchmarks/kernel_launches.py                      # PyTorch paths
    TRITON_INTERPRET=1 python benchmarks/kernel_launches.py   # with the cosine Triton kernel
"""

from __future__ import annotations

import os

import torch
from attnzoo.contract.registry import default_registry
from torch.utils._python_dispatch import TorchDispatchMode

HEAD_DIM, HEADS, TOKENS, BATCH = 16, 12, 65, 4


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket not in (torch.ops.aten.detach, torch.ops.aten.t):
            self.ops.append(str(func.overloadpacket).removeprefix("aten."))
        return func(*args, **(kwargs or {}))


def count(fn) -> LaunchCounter:
    counter = LaunchCounter()
    with counter:
        fn()
    return counter


def attention_call(kernel, dtype=torch.bfloat16):
    q, k, v = (torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(3))

    def run():
        out = kernel(q, k, v)
        out.backward(torch.ones_like(out))
    return run


def variants() -> list[tuple[str, dict]]:
    cases = [("softmax", {}), ("standardized", {}), ("standardized", {"scale": "learnable"}),
             ("cosine", {"backend": "torch"})]
    if os.environ.get("TRITON_INTERPRET") == "1":
        cases.append(("cosine", {"backend": "triton"}))
    return cases


def main() -> None:
    registry = default_registry()
    print(f"ATen kernels per attention call, forward + backward (B={BATCH}, H={HEADS}, N={TOKENS}, d={HEAD_DIM}, bf16)")
    print("\n| variant | options | forward | forward + backward | ops (forward) |\n|---|---|---|---|---|")
    for name, options in variants():
        kernel = registry.create(name, head_dim=HEAD_DIM, num_heads=HEADS, **options)
        q, k, v = (torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM, dtype=torch.bfloat16) for _ in range(3))
        with torch.no_grad():
            forward = count(lambda: kernel(q, k, v))
        both = count(attention_call(kernel))
        print(f"| {name} | {options or ''} | {len(forward.ops)} | {len(both.ops)} | {' '.join(forward.ops)} |")


if __name__ == "__main__":
    main()
