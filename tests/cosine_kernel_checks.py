"""The fused Triton kernel of cosine attention, run on the CPU by Triton's interpreter,
against the explicit N x N path: values and gradients of q, k, v and the learnable gain,
odd token counts and head dims, every scale mode, several dtypes.

Triton reads TRITON_INTERPRET when it is imported, so these tests need it set before
the process starts; tests/test_cosine_kernel.py runs this file that way:

    TRITON_INTERPRET=1 python -m pytest -q tests/cosine_kernel_checks.py

Every test checks the launch counters, so a silent fallback to the PyTorch path fails
instead of passing."""

import os

import pytest
import torch
from attnzoo.contract.kit import check_variant

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start (tests/test_cosine_kernel.py sets it)",
                allow_module_level=True)
pytest.importorskip("triton")


@pytest.fixture
def interpret():
    """Documents the requirement; the module-level check above enforces it."""
    from attnzoo_cosine import triton_kernel

    assert triton_kernel.interpreting()


@pytest.fixture
def launches():
    """Call with the expected (forward, backward) launches since the test began."""
    from attnzoo_cosine import triton_kernel

    before = dict(triton_kernel.LAUNCHES)

    def check(forward, backward):
        now = triton_kernel.LAUNCHES
        assert (now["forward"] - before["forward"], now["backward"] - before["backward"]) == (forward, backward)

    return check


def make(registry, head_dim, heads=2, **options):
    module = registry.create("cosine", head_dim=head_dim, num_heads=heads, **options)
    if "gain" in dict(module.named_parameters()):
        with torch.no_grad():  # a gain of 1 would hide a path that forgets it
            module.gain.copy_(torch.linspace(0.5, 1.5, heads).view(heads, 1, 1))
    return module


def qkv_like_the_model(batch, heads, tokens, head_dim, dtype, seed=0):
    """q, k, v as Attention.split_heads makes them: strided views of one qkv tensor."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, generator=g).to(dtype).requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    return qkv, (q, k, v)


def explicit_float64(module, q, k, v):
    """Output and the float64 module of the explicit N x N path, on float64 copies."""
    ref = make_like(module).double()
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    return ref, (q, k, v), ref.explicit(q, k, v)


def make_like(module):
    import copy

    ref = copy.deepcopy(module)
    ref.backend = "torch"
    return ref


def run_both(registry, tokens, head_dim, dtype, scale="learnable", heads=2, batch=2):
    """(kernel output, kernel grads), (reference output, reference grads): grads of q, k, v[, gain]."""
    module = make(registry, head_dim, heads, scale=scale, backend="triton")
    if dtype == torch.float64:
        module = module.double()  # the gain's gradient is in the gain's dtype
    qkv, (q, k, v) = qkv_like_the_model(batch, heads, tokens, head_dim, dtype)
    out = module(q, k, v)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [module.gain] if scale == "learnable" else []
    grads = torch.autograd.grad(out, [q, k, v, *params], upstream.to(dtype))

    ref, ref_inputs, ref_out = explicit_float64(module, q, k, v)
    ref_params = [ref.gain] if scale == "learnable" else []
    ref_grads = torch.autograd.grad(ref_out, [*ref_inputs, *ref_params], upstream.double())
    return (out, grads), (ref_out, ref_grads)


def assert_close(actual, expected, tol):
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=tol)


FAST_SHAPES = [(1, 16), (5, 24), (17, 8), (65, 64), (257, 16)]
SLOW_SHAPES = [(17, 32), (5, 4), (65, 24), (257, 32), (257, 64), (1, 64), (5, 32)]


@pytest.mark.parametrize("tokens, head_dim", FAST_SHAPES + [pytest.param(*s, marks=pytest.mark.slow) for s in SLOW_SHAPES])
def test_kernel_matches_explicit_float32(builtin_registry, interpret, launches, tokens, head_dim):
    (out, grads), (ref_out, ref_grads) = run_both(builtin_registry, tokens, head_dim, torch.float32)
    launches(1, 1)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert_close(out, ref_out, 2e-5)
    for name, grad, ref_grad in zip("q k v gain".split(), grads, ref_grads):
        assert grad.shape == ref_grad.shape, name
        assert_close(grad, ref_grad, 2e-5)


@pytest.mark.parametrize("scale", ["none", "inv_n", "learnable"])
@pytest.mark.parametrize("tokens, head_dim", [(5, 24), pytest.param(65, 16, marks=pytest.mark.slow)])
def test_kernel_matches_explicit_float64_every_scale(builtin_registry, interpret, launches, scale, tokens,
                                                     head_dim):
    (out, grads), (ref_out, ref_grads) = run_both(builtin_registry, tokens, head_dim, torch.float64, scale)
    launches(1, 1)
    assert_close(out, ref_out, 1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens, head_dim", [(17, 24), pytest.param(257, 64, marks=pytest.mark.slow)])
def test_kernel_half_precision_inputs(builtin_registry, interpret, launches, dtype, tokens, head_dim):
    """Output and gradients in the input dtype, within that dtype's rounding of the float64 answer.
    Outputs grow with N under scale none, so the tolerance is relative to the largest entry."""
    (out, grads), (ref_out, ref_grads) = run_both(builtin_registry, tokens, head_dim, dtype, "none")
    launches(1, 1)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for actual, expected in zip((out, *grads), (ref_out, *ref_grads)):
        err = (actual.double() - expected).abs().max() / expected.abs().max()
        assert err < 2e-2


def test_kernel_under_autocast_returns_the_autocast_dtype(builtin_registry, interpret, launches):
    module = make(builtin_registry, 16, scale="learnable", backend="triton")
    _, (q, k, v) = qkv_like_the_model(2, 2, 9, 16, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(q, k, v)
    out.float().sum().backward()
    launches(1, 1)
    assert out.dtype == torch.bfloat16 and module.gain.grad is not None
    torch.testing.assert_close(out.float(), module.explicit(q, k, v).detach(), atol=3e-2, rtol=3e-2)


def test_zero_vectors_follow_the_clamped_norm(builtin_registry, interpret, launches):
    """Rows of q or k below eps are divided by eps, and the norm's gradient stops there, as in F.normalize."""
    module = make(builtin_registry, 16, scale="inv_n", backend="triton").double()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 16, generator=g, dtype=torch.float64) for _ in range(3))
    q[0, 0, 2] = 0.0
    k[0, 1, 4] = 1e-9
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = module(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    launches(1, 1)
    ref_out = module.explicit(q, k, v)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), torch.ones_like(out))
    torch.testing.assert_close(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


def test_output_is_laid_out_for_the_head_merge(builtin_registry, interpret, launches):
    """(B, H, N, d) stored as (B, N, H, d): the model's transpose(1, 2).reshape is then a view."""
    module = make(builtin_registry, 16, backend="triton")
    _, (q, k, v) = qkv_like_the_model(2, 3, 5, 16, torch.float32)
    merged = module(q, k, v).transpose(1, 2)
    launches(1, 0)
    assert merged.is_contiguous()


@pytest.mark.slow
def test_compiles_as_one_op_without_graph_breaks(builtin_registry, interpret, launches):
    module = make(builtin_registry, 16, scale="learnable", backend="triton")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    _, (q, k, v) = qkv_like_the_model(2, 2, 9, 16, torch.float32)
    out = compiled(q, k, v)
    out.sum().backward()
    launches(1, 1)
    torch.testing.assert_close(out, module.explicit(q, k, v))


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["none", "learnable"])
def test_conformance_kit_passes_on_the_kernel(builtin_registry, interpret, scale):
    """The kit's float64 checks (forward, gradients, equivariance, autocast) on the kernel itself."""
    from attnzoo_cosine import triton_kernel

    before = dict(triton_kernel.LAUNCHES)
    check_variant("cosine", registry=builtin_registry, scale=scale, backend="triton").raise_if_failed()
    assert triton_kernel.LAUNCHES["forward"] > before["forward"] + 10
    assert triton_kernel.LAUNCHES["backward"] > before["backward"] + 5


def test_triton_backend_refuses_mixed_dtypes(builtin_registry, interpret, launches):
    from attnzoo import AttnzooError

    module = make(builtin_registry, 16, backend="triton")
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    with pytest.raises(AttnzooError, match="of dtype None.*one floating dtype"):
        module(q, k, v.double())
    launches(0, 0)


def test_a_vit_trains_the_same_on_the_kernel(builtin_registry, interpret, launches):
    """The kernel inside the model (strided q, k, v from the qkv split; the output merged
    back with transpose + reshape): logits and every parameter's gradient as on PyTorch's path."""
    from attnzoo.model.vit import VisionTransformer

    def vit(backend):
        torch.manual_seed(0)
        kernel = lambda head_dim, heads: builtin_registry.create(  # noqa: E731
            "cosine", head_dim=head_dim, num_heads=heads, scale="learnable", backend=backend)
        return VisionTransformer(image_size=16, patch_size=4, num_classes=3, dim=48, depth=2, heads=2,
                                 mlp_ratio=2.0, dropout=0.0, kernel=kernel)

    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("triton", "torch"):
        model = vit(backend)
        logits = model(images)
        logits.square().sum().backward()
        results.append((logits, {name: p.grad for name, p in model.named_parameters()}))
    launches(2, 2)  # two blocks, forward and backward each
    (logits, grads), (ref_logits, ref_grads) = results
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and any("gain" in name for name in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_fixed_scale_is_made_once_per_shape(builtin_registry, interpret, launches, monkeypatch):
    """No (H,) tensor allocated per call on the fast path: the same one per (heads, tokens, dtype, device)."""
    import attnzoo_cosine

    module = make(builtin_registry, 16, scale="inv_n", backend="triton")
    handed = []
    kernel_call = attnzoo_cosine._kernel.cosine_attention
    monkeypatch.setattr(attnzoo_cosine._kernel, "cosine_attention",
                        lambda q, k, v, scale, eps: handed.append(scale) or kernel_call(q, k, v, scale, eps))
    for tokens in (5, 5, 9):
        _, (q, k, v) = qkv_like_the_model(2, 2, tokens, 16, torch.float32)
        torch.testing.assert_close(module(q, k, v), module.explicit(q, k, v))
    launches(3, 0)
    assert handed[0] is handed[1] and handed[2] is not handed[0]
    torch.testing.assert_close(handed[2], torch.full((2,), 1 / 9))
