"""The literature zoo: each variant against its paper's formula, written out here
independently of the plugin (loops and plain tensor ops on small float64 tensors), and
the conformance kit on every one.

The registry is built from the zoo's own entry points, never from whatever happens to
be installed, so these tests do not change when a third-party plugin is present.
"""

import datetime
import math
from importlib import metadata

import pytest
import torch
from attnzoo.contract.kit import check_variant
from attnzoo.contract.registry import load_registry

ZOO = {
    "sigmoid": "attnzoo_sigmoid",
    "relu": "attnzoo_relu",
    "softmax1": "attnzoo_softmax1",
    "qk_layernorm": "attnzoo_qk_layernorm",
    "scaled_cosine": "attnzoo_scaled_cosine",
    "l2": "attnzoo_l2",
    "linear": "attnzoo_linear",
    "cottention": "attnzoo_cottention",
    "ssmax": "attnzoo_ssmax",
    "performer": "attnzoo_performer",
    "sparsemax": "attnzoo_sparsemax",
    "entmax15": "attnzoo_entmax15",
    "diff": "attnzoo_diff",
}


@pytest.fixture(scope="module")
def zoo():
    entry_points = [metadata.EntryPoint(name, module, "attnzoo") for name, module in ZOO.items()]
    return load_registry(entry_points, strict=True, only=None, disable=set(), warn=False)


def make(registry, name, head_dim=4, num_heads=2, **options):
    return registry.create(name, head_dim=head_dim, num_heads=num_heads, **options).double()


def qkv(seed=0, b=2, h=2, n=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def rows(q, k, weight_of_row):
    """(B, H, N, N) weights from a function of one query row's list of logits-inputs:
    weight_of_row(q_i, K) -> weights over the keys, looped so nothing is vectorised."""
    B, H, N, _ = q.shape
    out = torch.zeros(B, H, N, k.shape[-2], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                out[b, h, i] = weight_of_row(q[b, h, i], k[b, h])
    return out


def dots(qi, K):
    return torch.tensor([float(qi @ kj) for kj in K], dtype=torch.float64)


def check_weights_and_output(attn, q, k, v, expected_weights, values=None):
    torch.testing.assert_close(attn.attention_weights(q, k), expected_weights)
    torch.testing.assert_close(attn(q, k, v), expected_weights @ (v if values is None else values))


# --------------------------------------------------------------------------- every variant


def test_the_distribution_declares_every_zoo_variant_as_its_own_entry_point():
    declared = {ep.name: ep.value for ep in metadata.entry_points(group="attnzoo")}
    missing = {name: module for name, module in ZOO.items() if declared.get(name) != module}
    assert not missing, f"not in [project.entry-points.attnzoo] of pyproject.toml (re-run pip install -e .): {missing}"


def test_every_variant_names_its_paper(zoo):
    for name in ZOO:
        description = zoo.get(name).description
        # Attention papers from the Transformer's era up to this year: the zoo grows with new papers.
        years = range(2016, datetime.date.today().year + 1)
        assert any(str(year) in description for year in years), (name, description)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_conformance_kit(zoo, name):
    check_variant(name, registry=zoo).raise_if_failed()


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("bias", [None, -2.0])
def test_sigmoid(zoo, bias):
    q, k, v = qkv()
    attn = make(zoo, "sigmoid", bias=bias)
    b = -math.log(5) if bias is None else bias
    expected = rows(q, k, lambda qi, K: 1 / (1 + torch.exp(-(dots(qi, K) / 2 + b))))
    check_weights_and_output(attn, q, k, v, expected)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_relu(zoo, alpha):
    q, k, v = qkv()
    attn = make(zoo, "relu", alpha=alpha)
    expected = rows(q, k, lambda qi, K: dots(qi, K).div(2).clamp(min=0) / 5 ** alpha)
    check_weights_and_output(attn, q, k, v, expected)


def test_softmax1(zoo):
    q, k, v = qkv()
    attn = make(zoo, "softmax1")

    def row(qi, K):
        e = dots(qi, K).div(2).exp()
        return e / (1 + e.sum())

    expected = rows(q, k, row)
    check_weights_and_output(attn, q, k, v, expected)
    assert (expected.sum(-1) < 1).all()


def test_softmax1_attends_to_nothing_when_all_logits_are_very_negative(zoo):
    q = torch.ones(1, 1, 3, 4, dtype=torch.float64)
    k = -10 * torch.ones(1, 1, 3, 4, dtype=torch.float64)  # logits -20: exp(-20) << 1
    v = torch.ones(1, 1, 3, 4, dtype=torch.float64)
    out = make(zoo, "softmax1", num_heads=1)(q, k, v)
    assert out.abs().max() < 1e-7


@pytest.mark.parametrize("affine", [True, False])
def test_qk_layernorm(zoo, affine):
    q, k, v = qkv()
    attn = make(zoo, "qk_layernorm", affine=affine, eps=0.0)
    if affine:  # move gain and bias off 1 and 0 so that applying them is tested
        with torch.no_grad():
            for p in attn.parameters():
                p.copy_(torch.linspace(0.5, 1.5, p.numel(), dtype=torch.float64))

    def ln(x, norm):
        y = (x - x.mean()) / x.var(unbiased=False).sqrt()
        return y * norm.weight + norm.bias if affine else y

    def row(qi, K):
        logits = torch.stack([ln(qi, attn.q_norm) @ ln(kj, attn.k_norm) for kj in K]) / 2
        return torch.softmax(logits, 0)

    with torch.no_grad():
        check_weights_and_output(attn, q, k, v, rows(q, k, row))


@pytest.mark.parametrize("init_scale, learnable", [(10.0, True), (2.0, False), (500.0, True)])
def test_scaled_cosine(zoo, init_scale, learnable):
    q, k, v = qkv()
    attn = make(zoo, "scaled_cosine", init_scale=init_scale, learnable=learnable)
    tau = min(init_scale, 100.0)  # the temperature is clamped at 100

    def row(qi, K):
        cos = torch.stack([qi @ kj / (qi.norm() * kj.norm()) for kj in K])
        return torch.softmax(tau * cos, 0)

    with torch.no_grad():
        check_weights_and_output(attn, q, k, v, rows(q, k, row))
    assert any(True for _ in attn.parameters()) == learnable


def test_scaled_cosine_rejects_a_non_positive_scale(zoo):
    with pytest.raises(ValueError, match="init_scale must be positive"):
        make(zoo, "scaled_cosine", init_scale=0.0)


def test_l2(zoo):
    q, k, v = qkv()
    attn = make(zoo, "l2")

    def row(qi, K):
        return torch.softmax(torch.stack([-((qi - kj) ** 2).sum() / 2 for kj in K]), 0)

    check_weights_and_output(attn, q, k, v, rows(q, k, row))


def test_l2_prefers_the_nearest_key_not_the_largest_dot_product(zoo):
    q = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).view(1, 1, 1, 4)
    k = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]], dtype=torch.float64).view(1, 1, 2, 4)
    w = make(zoo, "l2", num_heads=1).attention_weights(q, k)[0, 0, 0]
    # distances^2 0 and 4 -> logits 0 and -2 (dot products 1 and 3 would favour the second key)
    torch.testing.assert_close(w, torch.softmax(torch.tensor([0.0, -2.0], dtype=torch.float64), 0))


def elu_plus_one(x):
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1 = exp(x) for x <= 0


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_linear(zoo, eps):
    q, k, v = qkv()
    attn = make(zoo, "linear", eps=eps)

    def row(qi, K):
        sims = torch.stack([elu_plus_one(qi) @ elu_plus_one(kj) for kj in K])
        return sims / (sims.sum() + eps)

    check_weights_and_output(attn, q, k, v, rows(q, k, row))


@pytest.mark.parametrize("init", [0.5, -2.0])
def test_cottention(zoo, init):
    q, k, v = qkv()
    attn = make(zoo, "cottention", init=init)
    with torch.no_grad():
        attn.m.copy_(torch.tensor([init, init + 1.0], dtype=torch.float64).view(2, 1, 1))  # heads differ

    def weights(q, k):
        out = torch.zeros(2, 2, 5, 5, dtype=torch.float64)
        for h, m in enumerate((init, init + 1.0)):
            exponent = 1 / (1 + math.exp(-m))
            out[:, h] = rows(q[:, h:h + 1], k[:, h:h + 1],
                             lambda qi, K: torch.stack([qi @ kj / (qi.norm() * kj.norm()) for kj in K]))[:, 0]
            out[:, h] /= 5 ** exponent
        return out

    with torch.no_grad():
        check_weights_and_output(attn, q, k, v, weights(q, k))


@pytest.mark.parametrize("options", [{}, {"init_s": 1.5, "learnable": False}, {"bias": True}])
def test_ssmax(zoo, options):
    q, k, v = qkv()
    attn = make(zoo, "ssmax", **options)
    s = options.get("init_s", 0.43)
    b = 0.0
    if options.get("bias"):
        b = 0.25
        with torch.no_grad():
            attn.b.fill_(b)
    expected = rows(q, k, lambda qi, K: torch.softmax((s * math.log(5) + b) * dots(qi, K) / 2, 0))
    with torch.no_grad():
        check_weights_and_output(attn, q, k, v, expected)
    assert (attn.s.requires_grad if isinstance(attn.s, torch.nn.Parameter) else False) == options.get("learnable", True)


def test_ssmax_keeps_the_peak_as_n_grows(zoo):
    # One key 5 above the others (logit units): softmax's peak fades with N, SSMax's (s = 1) does not.
    attn = make(zoo, "ssmax", num_heads=1, init_s=1.0)
    peaks = []
    for n in (16, 256):
        q = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
        q[..., 0] = 2.0
        k = torch.zeros(1, 1, n, 4, dtype=torch.float64)
        k[0, 0, 0, 0] = 5.0  # q.k / sqrt(d) = 5 for key 0, 0 for the rest
        with torch.no_grad():
            peaks.append(attn.attention_weights(q, k)[0, 0, 0, 0].item())
    # SSMax: N^5 / (N^5 + N - 1) -> close to 1 for both N
    assert peaks[0] > 0.99 and peaks[1] > 0.99


def bisect_threshold(mass, lo, hi, steps=200):
    """tau with mass(tau) = 1, mass decreasing in tau, by bisection on [lo, hi]."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) > 1 else (lo, mid)
    return (lo + hi) / 2


def sparsemax_row(z):
    tau = bisect_threshold(lambda t: float((z - t).clamp(min=0).sum()), float(z.min()) - 1, float(z.max()))
    return (z - tau).clamp(min=0)


def entmax15_row(z):
    x = z / 2
    tau = bisect_threshold(lambda t: float(((x - t).clamp(min=0) ** 2).sum()), float(x.min()) - 1, float(x.max()))
    return (x - tau).clamp(min=0) ** 2


@pytest.mark.parametrize("name, row_map", [("sparsemax", sparsemax_row), ("entmax15", entmax15_row)])
def test_sparse_maps_match_bisection(zoo, name, row_map):
    q, k, v = qkv(n=7)
    q = q * 2  # larger logits: sparser rows, so the threshold matters
    attn = make(zoo, name)
    expected = rows(q, k, lambda qi, K: row_map(dots(qi, K) / 2))
    check_weights_and_output(attn, q, k, v, expected)
    assert (expected == 0).any() and torch.allclose(expected.sum(-1), torch.ones(2, 2, 7, dtype=torch.float64))


def test_sparsemax_hand_computed(zoo):
    # logits z = q.k / sqrt(4) = [1, 0.5, -1]: support {1, 0.5}, tau = (1.5 - 1) / 2 = 0.25
    q = torch.tensor([2.0, 0, 0, 0], dtype=torch.float64).view(1, 1, 1, 4)
    k = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0], [-1.0, 0, 0, 0]], dtype=torch.float64).view(1, 1, 3, 4)
    w = make(zoo, "sparsemax", num_heads=1).attention_weights(q, k)[0, 0, 0]
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))


def test_entmax15_hand_computed(zoo):
    # z = [2, 0]: x = z/2 = [1, 0]; support {1} alone needs (1 - tau)^2 = 1 -> tau = 0, and then
    # x_2 - tau = 0, so the second weight is exactly 0: w = [1, 0].
    q = torch.tensor([2.0, 0, 0, 0], dtype=torch.float64).view(1, 1, 1, 4)
    k = torch.tensor([[2.0, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64).view(1, 1, 2, 4)
    w = make(zoo, "entmax15", num_heads=1).attention_weights(q, k)[0, 0, 0]
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # z = [1, 0]: x = [0.5, 0]; both in the support: (0.5 - t)^2 + t^2 = 1 -> t = (0.5 - sqrt(1.75)) / 2
    k = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64).view(1, 1, 2, 4)
    w = make(zoo, "entmax15", num_heads=1).attention_weights(q, k)[0, 0, 0]
    t = (0.5 - math.sqrt(1.75)) / 2
    torch.testing.assert_close(w, torch.tensor([(0.5 - t) ** 2, t ** 2], dtype=torch.float64))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparse_maps_have_the_exact_jacobian(zoo, name):
    # Central differences on a few logits, against autograd through the plugin.
    attn = make(zoo, name, num_heads=1)
    q, k, _ = qkv(b=1, h=1, n=4)
    q = (q * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: attn.attention_weights(q, k), (q,), eps=1e-6, atol=1e-6)


def performer_features(x, projection, m, over_keys, stabilizer):
    """FAVOR+ positive features, written out per token."""
    d = x.shape[-1]
    out = torch.zeros(*x.shape[:-1], m, dtype=torch.float64)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in x.shape[:-1]]):
        xi = x[tuple(idx)] / d ** 0.25
        out[tuple(idx)] = torch.stack([projection[r] @ xi for r in range(m)]) - (xi @ xi) / 2
    exponent = torch.stack([projection @ (xi / d ** 0.25) for xi in x.reshape(-1, d)]).view(*x.shape[:-1], m)
    shift = exponent.amax(dim=(-2, -1) if over_keys else (-1,), keepdim=True)
    return (torch.exp(out - shift) + stabilizer) / math.sqrt(m)


@pytest.mark.parametrize("features, stabilizer", [(None, 1e-6), (12, 0.01)])
def test_performer(zoo, features, stabilizer):
    q, k, v = qkv()
    attn = make(zoo, "performer", features=features, stabilizer=stabilizer)
    m = features or round(4 * math.log(4))  # d ln d = 5.5 -> 6
    assert attn.projection.shape == (m, 4)
    phi_q = performer_features(q, attn.projection, m, False, stabilizer)
    phi_k = performer_features(k, attn.projection, m, True, stabilizer)
    sims = phi_q @ phi_k.transpose(-2, -1)
    check_weights_and_output(attn, q, k, v, sims / sims.sum(-1, keepdim=True))


def test_performer_features_are_orthogonal_blocks_and_fixed_by_the_seed(zoo):
    a = make(zoo, "performer", head_dim=4, features=10, seed=3)
    w = a.projection
    block = w[:4] / w[:4].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(make(zoo, "performer", head_dim=4, features=10, seed=3).projection, w)
    assert not torch.allclose(make(zoo, "performer", head_dim=4, features=10, seed=4).projection, w)
    assert "projection" in a.state_dict()  # saved with the model, so evaluation uses the same features


def test_performer_approximates_softmax_with_many_features(zoo):
    q, k, _ = qkv(n=6)
    q, k = q * 0.5, k * 0.5
    attn = make(zoo, "performer", features=50000, stabilizer=0.0)
    softmax = rows(q, k, lambda qi, K: torch.softmax(dots(qi, K) / 2, 0))
    assert (softmax - 1 / 6).abs().max() > 0.05  # far enough from uniform for the test to mean something
    assert (attn.attention_weights(q, k) - softmax).abs().max() < 0.02


@pytest.mark.parametrize("lambda_init", [0.8, 0.2])
def test_diff(zoo, lambda_init):
    q, k, v = qkv()
    attn = make(zoo, "diff", lambda_init=lambda_init)
    with torch.no_grad():
        lq1, lk1, lq2, lk2 = attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2
        lam = math.exp(float(lq1 @ lk1)) - math.exp(float(lq2 @ lk2)) + lambda_init

        def row(qi, K):  # halves of size 2: scale 1/sqrt(2)
            a1 = torch.softmax(torch.stack([qi[:2] @ kj[:2] for kj in K]) / math.sqrt(2), 0)
            a2 = torch.softmax(torch.stack([qi[2:] @ kj[2:] for kj in K]) / math.sqrt(2), 0)
            return a1 - lam * a2

        check_weights_and_output(attn, q, k, v, rows(q, k, row))


def test_diff_rejects_an_odd_head_dim(zoo):
    with pytest.raises(ValueError, match="head_dim must be even"):
        make(zoo, "diff", head_dim=5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_trains_one_step_inside_the_vit(zoo, name):
    # The model builds one kernel per block through the registry; every variant's parameters
    # (if any) must get a gradient and stay out of weight decay.
    from attnzoo.model.vit import VisionTransformer, parameter_groups

    torch.manual_seed(0)
    model = VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=2, heads=2, mlp_ratio=2.0,
                              dropout=0.0, kernel=zoo.kernel(name))
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    kernel_params = [p for block in model.blocks for p in block.attn.kernel.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in kernel_params)
    no_decay = {id(p) for group in parameter_groups(model, 0.05) if group["weight_decay"] == 0 for p in group["params"]}
    assert all(id(p) in no_decay for p in kernel_params)


# ---------------------------------------------------------------- randomness that pairs arms by seed


@pytest.fixture(scope="module")
def every_variant():
    """The three built-in variants and the zoo: every variant attnzoo ships."""
    from conftest import builtin_entry_points

    entry_points = [metadata.EntryPoint(name, module, "attnzoo") for name, module in ZOO.items()]
    return load_registry(builtin_entry_points() + entry_points, strict=True, only=None, disable=set(), warn=False)


def zoo_vit(zoo, name, seed, depth=3, options=None):
    from attnzoo.model.vit import VisionTransformer

    torch.manual_seed(seed)  # as a run does before it builds its model
    return VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=depth, heads=2,
                             mlp_ratio=2.0, dropout=0.0, kernel=zoo.kernel(name, options or {}))


def test_building_every_variant_leaves_the_global_random_stream_alone(every_variant):
    """What a kernel draws while it is built comes from its layer's own stream (hookspecs, "Randomness")."""
    from attnzoo.model.vit import build_kernel

    assert len(every_variant.variants) == len(ZOO) + 3
    for name in every_variant.variants:
        torch.manual_seed(7)
        before = torch.random.get_rng_state()
        for layer in range(2):
            build_kernel(every_variant.kernel(name), 8, 2, name, layer)
        assert torch.equal(torch.random.get_rng_state(), before), name
        assert torch.initial_seed() == 7, name


def test_under_one_seed_every_arm_starts_from_the_same_shared_weights(every_variant):
    """The pairing by seed a study's statistics rely on: every tensor outside attn.kernel is bit-identical
    (diff used to draw its lambda vectors from the global stream, shifting every later layer's weights)."""
    def shared(name, seed):
        model = zoo_vit(every_variant, name, seed)
        return {k: v for k, v in model.state_dict().items() if ".attn.kernel." not in k}

    for seed in (0, 1):
        softmax = shared("softmax", seed)
        assert len(softmax) > 20
        for name in every_variant.variants:
            tensors = shared(name, seed)
            assert tensors.keys() == softmax.keys(), name
            differ = [k for k in softmax if not torch.equal(tensors[k], softmax[k])]
            assert differ == [], f"{name}, seed {seed}: {differ}"
    assert not torch.equal(shared("softmax", 0)["cls_token"], shared("softmax", 1)["cls_token"])


def test_performer_features_differ_across_layers_and_seeds_unless_fixed(zoo):
    def features(seed, options=None):
        return [block.attn.kernel.projection for block in zoo_vit(zoo, "performer", seed, options=options).blocks]

    first, again, other = features(0), features(0), features(1)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])  # per layer
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible from the run seed
    assert not any(torch.equal(a, b) for a, b in zip(first, other))  # per run seed
    fixed = features(0, {"seed": 3}) + features(1, {"seed": 3})  # the option still fixes them everywhere
    assert all(torch.equal(f, fixed[0]) for f in fixed)
    diff_lambdas = [block.attn.kernel.state_dict() for block in zoo_vit(zoo, "diff", 0).blocks]
    assert not torch.equal(next(iter(diff_lambdas[0].values())), next(iter(diff_lambdas[1].values())))
