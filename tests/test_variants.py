"""Each built-in variant against closed-form math on small float64 tensors."""

import math

import pytest
import torch


def make(registry, name, **options):
    return registry.create(name, head_dim=4, num_heads=2, **options).double()


def qkv(seed=0, b=2, h=2, n=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def reference_softmax(q, k, v, scale):
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                logits = torch.tensor([float(q[b, h, i] @ k[b, h, j]) * scale for j in range(k.shape[2])],
                                      dtype=torch.float64)
                w = logits.exp() / logits.exp().sum()
                out[b, h, i] = (w[:, None] * v[b, h]).sum(0)
    return out


def test_softmax_matches_loop_reference(builtin_registry):
    q, k, v = qkv()
    attn = make(builtin_registry, "softmax")
    torch.testing.assert_close(attn(q, k, v), reference_softmax(q, k, v, 1 / math.sqrt(4)))
    torch.testing.assert_close(attn.attention_weights(q, k).sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))


def test_cosine_hand_computed_case(builtin_registry):
    attn = make(builtin_registry, "cosine")
    q = torch.tensor([[3.0, 0, 0, 0], [1, 1, 0, 0]]).view(1, 1, 2, 4)
    k = torch.tensor([[2.0, 0, 0, 0], [0, 5, 0, 0]]).view(1, 1, 2, 4)
    v = torch.tensor([[1.0, 2, 3, 4], [10, 20, 30, 40]]).view(1, 1, 2, 4)
    s = 1 / math.sqrt(2)
    expected_w = torch.tensor([[1.0, 0.0], [s, s]])
    torch.testing.assert_close(attn.attention_weights(q, k)[0, 0], expected_w)
    expected = torch.stack([v[0, 0, 0], s * v[0, 0, 0] + s * v[0, 0, 1]])
    torch.testing.assert_close(attn(q, k, v)[0, 0], expected)


@pytest.mark.parametrize("scale", ["none", "inv_n", "learnable"])
def test_cosine_associative_fast_path_equals_explicit(builtin_registry, scale):
    q, k, v = qkv(n=9)
    attn = make(builtin_registry, "cosine", scale=scale)
    torch.testing.assert_close(attn(q, k, v), attn.attention_weights(q, k) @ v)
    qn, kn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    explicit = qn @ kn.transpose(-2, -1)
    if scale != "none":
        explicit = explicit / 9
    torch.testing.assert_close(attn.attention_weights(q, k), explicit)


def test_cosine_weights_can_be_negative_and_unnormalised(builtin_registry):
    q, k, _ = qkv(n=7)
    w = make(builtin_registry, "cosine").attention_weights(q, k)
    assert w.min() < 0 and w.abs().max() <= 1 + 1e-12


def test_standardize_hand_computed():
    from attnzoo import standardize

    x = torch.tensor([1.0, 2.0, 3.0])
    # population std of [1,2,3] is sqrt(2/3)
    torch.testing.assert_close(standardize(x, eps=0.0), torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3))


@pytest.mark.parametrize("scale,factor", [("inv_d", 1 / 4), ("inv_sqrt_d", 1 / 2)])
def test_standardized_matches_formula(builtin_registry, scale, factor):
    q, k, v = qkv()
    attn = make(builtin_registry, "standardized", scale=scale, eps=0.0)

    def std(x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)

    w = torch.softmax(std(q) @ std(k).transpose(-2, -1) * factor, -1)
    torch.testing.assert_close(attn.attention_weights(q, k), w)
    torch.testing.assert_close(attn(q, k, v), w @ std(v))


def test_standardized_inv_d_bounds_logits(builtin_registry):
    q, k, _ = qkv(n=11)
    w = make(builtin_registry, "standardized").attention_weights(q, k)
    # logits in [-1, 1] => no weight can exceed e^2 times another in the same row
    ratio = w.max(-1).values / w.min(-1).values
    assert ratio.max() <= math.exp(2) + 1e-9


def test_standardized_without_value_standardization(builtin_registry):
    q, k, v = qkv()
    attn = make(builtin_registry, "standardized", standardize_values=False)
    torch.testing.assert_close(attn(q, k, v), attn.attention_weights(q, k) @ v)


def test_standardized_learnable_scale_gets_gradient(builtin_registry):
    q, k, v = qkv()
    attn = make(builtin_registry, "standardized", scale="learnable")
    attn(q, k, v).square().sum().backward()
    assert attn.log_scale.grad is not None and attn.log_scale.grad.abs().sum() > 0
    torch.testing.assert_close(attn(q, k, v), attn.explicit(q, k, v))


@pytest.mark.parametrize("name", ["softmax", "cosine", "standardized"])
def test_fast_path_gradients_equal_explicit(builtin_registry, name):
    q, k, v = (t.requires_grad_() for t in qkv(n=6))
    attn = make(builtin_registry, name)
    fast = torch.autograd.grad(attn(q, k, v).square().sum(), (q, k, v))
    slow = torch.autograd.grad(attn.explicit(q, k, v).square().sum(), (q, k, v))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


# What each built-in can do, as its code says (AttentionVariant.forward overridden; parameters
# for some option): the values the plugins once declared, now derived at load.
DERIVED_FLAGS = {
    "cosine": (True, True), "cottention": (True, True), "diff": (True, True), "entmax15": (False, False),
    "l2": (True, False), "linear": (True, False), "performer": (True, False), "qk_layernorm": (True, True),
    "relu": (False, False), "scaled_cosine": (True, True), "sigmoid": (False, False), "softmax": (True, False),
    "softmax1": (True, False), "sparsemax": (False, False), "ssmax": (True, True), "standardized": (True, True),
}


def test_builtin_flags_are_derived_not_declared():
    """The built-ins are the examples plugin authors copy: none declares a flag its code decides."""
    from importlib import metadata

    from attnzoo.contract.registry import load_registry
    from conftest import ROOT, BUILTINS
    from test_zoo import ZOO

    sources = sorted((ROOT / "plugins").glob("attnzoo_*/**/*.py"))
    assert len({p.relative_to(ROOT / "plugins").parts[0] for p in sources}) == len(DERIVED_FLAGS)
    declaring = [str(p) for p in sources if "fast_path=" in p.read_text() or "has_parameters=" in p.read_text()]
    assert not declaring, f"declare derived flags: {declaring}"
    entry_points = [metadata.EntryPoint(n, m, "attnzoo") for n, m in {**BUILTINS, **ZOO}.items()]
    registry = load_registry(entry_points, strict=True, only=None, disable=set(), warn=False)
    derived = {name: (v.fast_path, v.has_parameters) for name, v in registry.variants.items()}
    assert derived == DERIVED_FLAGS
