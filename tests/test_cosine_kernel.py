"""cosine's backend choice, and the Triton kernel checks (tests/cosine_kernel_checks.py)
run in a fresh process under Triton's interpreter: Triton reads TRITON_INTERPRET when it
is imported, so setting it inside this process would not reach the kernels."""

import os
import re
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


@pytest.mark.slow
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
    assert before == after  # CPU tensors: no launch, on any machine
    torch.testing.assert_close(out, module.explicit(q, k, v))


def test_triton_backend_refuses_where_it_cannot_run(builtin_registry, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(AttnzooError, match=r"backend 'triton' cannot run here: (no CUDA device|the triton "
                                           r"package).*backend: auto .* or backend: torch"):
        make(builtin_registry, backend="triton")


def test_train_with_the_triton_backend_off_cuda_is_one_clear_error(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernel")
    import yaml
    from attnzoo.cli import main
    from conftest import tiny_recipe_dict

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path, attention={"name": "cosine", "backend": "triton"})))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "backend 'triton' cannot run here" in err and "Traceback" not in err


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


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [16, 24, 64])
def test_kernels_compile_for_an_h100_without_spills(head_dim, tmp_path):
    """What the interpreter cannot show: Triton lowers both kernels for sm_90 (H100/H200)
    and, in bf16, ptxas keeps every value in registers. No GPU needed."""
    triton = pytest.importorskip("triton")
    from attnzoo_cosine import triton_kernel as tk
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if tk.interpreting():
        pytest.skip("TRITON_INTERPRET is set: the kernels were made for the interpreter")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip("this triton has no bundled ptxas")
    for kernel in (tk._cosine_fwd, tk._cosine_bwd):
        config = tk._launch_config(head_dim, tk.BLOCKS)
        warps = config.pop("num_warps")
        constants = dict(config, **tk._dtype_config(torch.bfloat16))
        signature = {name: "constexpr" if name in constants else
                     "*bf16" if name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV") else
                     "*fp32" if name in ("S", "CTX", "DS") else "fp32" if name == "eps" else "i32"
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        ptx = tmp_path / f"{kernel.__name__}.ptx"
        ptx.write_text(compiled.asm["ptx"])
        report = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", str(ptx), "-o", os.devnull],
                                capture_output=True, text=True)
        assert report.returncode == 0, report.stderr
        assert re.search(r"[^0-9]0 bytes spill stores", report.stderr), report.stderr
