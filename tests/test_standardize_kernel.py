"""standardized's backend choice, and its fused Triton standardization against the PyTorch
path (values and gradients, odd row counts, head dims 4..64, float32/bf16/fp16).

The kernel checks run in a fresh process under Triton's interpreter: Triton reads
TRITON_INTERPRET when it is imported, so ``test_kernel_checks_under_the_interpreter``
runs this file again with it set; the checks skip in a process without it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attnzoo import AttnzooError, standardize
from torch.nn import functional as F

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs under TRITON_INTERPRET=1 (see the slow test)")


@pytest.mark.slow
def test_kernel_checks_under_the_interpreter():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("already the interpreter's process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           "-k", "not cannot_run", __file__], cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def make(registry, head_dim=16, heads=2, backend="auto", **options):
    module = registry.create("standardized", head_dim=head_dim, num_heads=heads, **options)
    module.backend = backend  # an attribute, not a recipe option (see StandardizedAttention)
    if "log_scale" in dict(module.named_parameters()):
        with torch.no_grad():  # one temperature for every head would hide a path that mixes them up
            module.log_scale.copy_(torch.linspace(-1.5, -0.5, heads).view(heads, 1, 1))
    return module


# ----------------------------------------------------------------------------- without the interpreter


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_off_cuda_auto_and_torch_run_the_pytorch_path(builtin_registry, backend):
    import attnzoo_standardized

    module = make(builtin_registry, backend=backend)
    q, k, v = (torch.randn(2, 2, 5, 16, requires_grad=True) for _ in range(3))
    before = None if attnzoo_standardized._kernel is None else dict(attnzoo_standardized._kernel.LAUNCHES)
    out = module(q, k, v)
    out.sum().backward()
    after = None if attnzoo_standardized._kernel is None else dict(attnzoo_standardized._kernel.LAUNCHES)
    if not INTERPRETED:
        assert before == after  # CPU tensors: no launch, on any machine
    torch.testing.assert_close(out, module.explicit(q, k, v))


@pytest.mark.skipif(INTERPRETED, reason="would import the kernels with TRITON_INTERPRET unset, for the whole process")
def test_triton_backend_refuses_where_it_cannot_run(builtin_registry, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = make(builtin_registry, backend="triton")
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(AttnzooError, match=r"standardized attention: backend 'triton' cannot run on cpu tensors "
                                           r"of dtype torch.float32: it needs CUDA.*'auto' or 'torch'"):
        module(q, q, q)


def test_backend_is_no_recipe_option(builtin_registry):
    """Runs recorded before the kernel existed have no such key: adding one would make them other runs."""
    from attnzoo.config import recipe

    r = recipe.from_dict({"attention": {"name": "standardized"}}, registry=builtin_registry)
    assert r.to_dict()["attention"] == {"name": "standardized", "scale": "inv_d", "standardize_values": True,
                                        "eps": 1e-5}


# ----------------------------------------------------------------------------- under the interpreter


@pytest.fixture
def kernel():
    from attnzoo_standardized import triton_kernel

    assert triton_kernel.interpreting()
    return triton_kernel


@pytest.fixture
def launches(kernel):
    """Call with the expected (forward, backward) launches since the test began."""
    before = dict(kernel.LAUNCHES)

    def check(forward, backward):
        now = kernel.LAUNCHES
        assert (now["forward"] - before["forward"], now["backward"] - before["backward"]) == (forward, backward)

    return check


def qkv_like_the_model(batch, heads, tokens, head_dim, dtype, seed=0):
    """q, k, v as Attention.split_heads makes them: strided views of one qkv tensor."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(batch, tokens, 3, heads, head_dim, generator=g) * 3 + 1).to(dtype).requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert q.numel() == head_dim or not q.is_contiguous()  # one row is contiguous in any layout
    return qkv, (q, k, v)


def float64_reference(xs, upstream, eps=1e-5):
    """Standardized float64 copies and their gradients for the upstream gradients."""
    xs = [x.detach().double().requires_grad_() for x in xs]
    ys = [F.layer_norm(x, x.shape[-1:], eps=eps) for x in xs]
    grads = torch.autograd.grad(ys, xs, [u.double() for u in upstream])
    return ys, grads


# (batch, heads, tokens): odd row counts, one row, and more rows than one program takes
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 2, 65), (2, 2, 257)]
HEAD_DIMS = [4, 8, 16, 24, 32, 64]


@needs_interpreter
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_values_and_gradients_match_pytorch(kernel, launches, shape, head_dim):
    _, xs = qkv_like_the_model(*shape, head_dim, torch.float32)
    ys = kernel.standardize_rows(list(xs), 1e-5, torch.float32)
    upstream = [torch.randn(y.shape, generator=torch.Generator().manual_seed(i)) for i, y in enumerate(ys)]
    grads = torch.autograd.grad(ys, xs, upstream)
    launches(1, 1)
    ref_ys, ref_grads = float64_reference(xs, upstream)
    for y, ref in zip((*ys, *grads), (*ref_ys, *ref_grads)):
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), ref, atol=2e-5, rtol=2e-5)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [4, 24, 64])
def test_half_precision_rounds_the_float32_answer(kernel, launches, dtype, head_dim):
    """Statistics in float32, one rounding at the store: the output is the float32 answer rounded
    to nearest (at most one unit in the last place away, almost always equal), and the
    gradients are within that dtype's rounding of float64."""
    _, xs = qkv_like_the_model(3, 2, 33, head_dim, dtype)
    ys = kernel.standardize_rows(list(xs), 1e-5, dtype)
    upstream = [torch.randn(y.shape, generator=torch.Generator().manual_seed(i)).to(dtype) for i, y in enumerate(ys)]
    grads = torch.autograd.grad(ys, xs, upstream)
    launches(1, 1)
    ref_ys, ref_grads = float64_reference(xs, upstream)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10  # relative spacing just above 1
    for y, ref in zip(ys, ref_ys):
        assert y.dtype == dtype
        rounded = ref.float().to(dtype)
        assert (y == rounded).double().mean() > 0.99
        assert ((y.double() - rounded.double()).abs() <= ulp * rounded.double().abs().clamp(min=1.0)).all()
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == dtype
        assert ((grad.double() - ref).abs().max() / ref.abs().max()) < 4 * ulp


@needs_interpreter
def test_bf16_stores_round_to_nearest_as_a_gpu_does(kernel, launches):
    """The interpreter shim: the interpreter alone truncates float32 -> bf16; the kernel rounds
    by hand under it, so its bf16 output is exactly the float32 output rounded by PyTorch."""
    _, xs = qkv_like_the_model(2, 2, 65, 16, torch.float32)
    wide = kernel.standardize_rows(list(xs), 1e-5, torch.float32)
    narrow = kernel.standardize_rows(list(xs), 1e-5, torch.bfloat16)
    launches(2, 0)
    for w, n in zip(wide, narrow):
        assert n.dtype == torch.bfloat16
        torch.testing.assert_close(n, w.to(torch.bfloat16), atol=0, rtol=0)


@needs_interpreter
def test_bad_inputs_are_refused(kernel):
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="2 or 3 tensors of one"):
        kernel.standardize_rows([q, q.double()], 1e-5, torch.float32)
    with pytest.raises(ValueError, match="2 or 3 tensors of one"):
        kernel.standardize_rows([q], 1e-5, torch.float32)


@needs_interpreter
@pytest.mark.parametrize("options", [{}, {"scale": "learnable"}, {"standardize_values": False},
                                     {"scale": "inv_sqrt_d", "eps": 1e-3}], ids=str)
def test_the_variant_on_the_kernel_matches_the_pytorch_path(builtin_registry, launches, options):
    fast, ref = make(builtin_registry, 24, 3, backend="triton", **options), make(builtin_registry, 24, 3, **options)
    _, xs = qkv_like_the_model(2, 3, 17, 24, torch.float32)
    out = fast(*xs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # ones would cancel in the temperature
    grads = torch.autograd.grad(out, [*xs, *fast.parameters()], upstream)
    launches(1, 1)
    ref_out = ref(*xs)
    ref_grads = torch.autograd.grad(ref_out, [*xs, *ref.parameters()], upstream)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


@needs_interpreter
def test_under_gpu_autocast_sdpa_gets_the_compute_dtype_with_no_float32_detour(builtin_registry, launches):
    """float32 inputs under (emulated CUDA) bf16 autocast: the kernel reads float32 and writes
    bf16, so SDPA is handed bf16 and the output is bf16, close to the float32 answer."""
    from attnzoo.contract.cuda_autocast import emulate_cuda_autocast

    module = make(builtin_registry, 16, 2, scale="learnable", backend="triton")
    _, xs = qkv_like_the_model(2, 2, 9, 16, torch.float32)
    with emulate_cuda_autocast() as record:
        out = module(*xs)
    out.float().sum().backward()
    launches(1, 1)
    assert out.dtype == torch.bfloat16 and module.log_scale.grad is not None
    assert record.float32_sdpa_calls() == []
    torch.testing.assert_close(out.float(), module.explicit(*xs).detach(), atol=3e-2, rtol=3e-2)


@needs_interpreter
def test_compiles_as_one_op_without_graph_breaks(builtin_registry, launches):
    module = make(builtin_registry, 16, 2, scale="learnable", backend="triton")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    _, xs = qkv_like_the_model(2, 2, 9, 16, torch.float32)
    out = compiled(*xs)
    out.sum().backward()
    launches(1, 1)
    torch.testing.assert_close(out, module.explicit(*xs), atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_conformance_kit_passes_on_the_kernel(builtin_registry, kernel, monkeypatch):
    from attnzoo.contract.kit import check_variant

    from attnzoo_standardized import StandardizedAttention

    before = dict(kernel.LAUNCHES)
    monkeypatch.setattr(StandardizedAttention, "backend", "triton")
    check_variant("standardized", registry=builtin_registry).raise_if_failed()
    assert kernel.LAUNCHES["forward"] > before["forward"] + 5
    assert kernel.LAUNCHES["backward"] > before["backward"] + 2


def test_pytorch_path_is_plain_layer_norm():
    """The fallback the kernel is checked against is layer norm without affine parameters."""
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(standardize(x, 1e-5), F.layer_norm(x, (7,), eps=1e-5), atol=0, rtol=0)
