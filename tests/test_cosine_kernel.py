"""cosine's backend choice, and the Triton kernel checks (tests/cosine_kernel_checks.py)
run in a fresh process under Triton's interpreter: Triton reads TRITON_INTERPRET when it
is imported, so setting it inside this process would not reach the kernels."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnzoo import AttnzooError

CHECKS = Path(__file__).with_name("cosine_kernel_checks.py")


def run_kernel_checks(marker: str) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, str(CHECKS)],
                          cwd=CHECKS.parents[1], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_kernel_matches_explicit_path_under_the_interpreter():
    run_kernel_checks("not slow")


@pytest.mark.slow
def test_kernel_more_shapes_and_the_conformance_kit_under_the_interpreter():
    run_kernel_checks("slow")


def make(registry, **options):
    return registry.create("cosine", head_dim=16, num_heads=2, **options)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_off_cuda_auto_and_torch_run_the_pytorch_path(builtin_registry, backend):
    import attnzoo_cosine

    module = make(builtin_registry, scale="learnable", backend=backend)
    q, k, v = (torch.randn(2, 2, 5, 16, requires_grad=True) for _ in range(3))
    before = None if attnzoo_cosine._kernel is None else dict(attnzoo_cosine._kernel.LAUNCHES)
    out = module(q, k, v)
    out.sum().backward()
    after = None if attnzoo_cosine._kernel is None else dict(attnzoo_cosine._kernel.LAUNCHES)
    if not torch.cuda.is_available():
        assert before == after
    torch.testing.assert_close(out, module.explicit(q, k, v))


def test_triton_backend_refuses_where_it_cannot_run(builtin_registry, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(AttnzooError, match=r"backend 'triton' cannot run here: (no CUDA device|the triton "
                                           r"package).*backend: auto .* or backend: torch"):
        make(builtin_registry, backend="triton")


def test_backend_option_is_validated(builtin_registry):
    with pytest.raises(Exception, match="'cuda' is not allowed; choose one of: auto, torch, triton"):
        builtin_registry.resolve_options("cosine", {"backend": "cuda"})


@pytest.mark.slow
def test_micro_benchmark_dry_run_checks_and_times_every_path():
    """benchmarks/cosine_kernel.py on the CPU with the kernel interpreted: its GPU code path, tiny."""
    pytest.importorskip("triton")
    script = CHECKS.parents[1] / "benchmarks" / "cosine_kernel.py"
    proc = subprocess.run([sys.executable, str(script), "--batch", "2", "--heads", "2", "--steps", "1",
                           "--tokens", "5", "--head-dims", "24"], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 5 | 24 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["softmax (SDPA)", "cosine torch", "cosine triton"]
    assert float(rows[2].split("|")[7]) < 3e-2  # the kernel agreed with the float32 PyTorch path
