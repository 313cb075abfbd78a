"""The conformance kit: the built-in variants pass it, deliberately wrong variants fail it
with the broken property named, and its report, CLI and pytest fixture behave."""

import math

import pytest
import torch
from attnzoo import AttentionVariant
from attnzoo.cli import main
from attnzoo.contract.hookspecs import Variant
from attnzoo.contract.kit import CHECKS, Report, check_variant
from attnzoo.contract.registry import Registry
from attnzoo.errors import PluginError
from torch.nn import functional as F

BUILTIN_CASES = [
    ("softmax", {}),
    ("cosine", {}),
    ("cosine", {"scale": "inv_n"}),
    ("cosine", {"scale": "learnable"}),
    ("standardized", {}),
    ("standardized", {"scale": "inv_sqrt_d"}),
    ("standardized", {"scale": "learnable", "standardize_values": False}),
]


@pytest.mark.parametrize("name, options", BUILTIN_CASES, ids=[f"{n}-{o}" for n, o in BUILTIN_CASES])
def test_builtin_variants_pass_the_kit(builtin_registry, name, options):
    report = check_variant(name, registry=builtin_registry, **options)
    report.raise_if_failed()
    assert [result[0] for result in report.results] == list(CHECKS)


# --------------------------------------------------------------------------- wrong on purpose


class Softmax(AttentionVariant):
    def attention_weights(self, q, k):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)


class FastPathWrongScale(Softmax):
    """The fast path forgets the 1/sqrt(d) the weights use."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)


class MixesBatch(Softmax):
    """Adds the batch mean to every element: information leaks across the batch."""

    def attention_weights(self, q, k):
        weights = super().attention_weights(q, k)
        return weights + 0.1 * weights.mean(dim=0, keepdim=True)


class PositionBias(Softmax):
    """An ALiBi-like bias on |i - j|: the output depends on where a token sits."""

    def attention_weights(self, q, k):
        n = q.shape[-2]
        position = torch.arange(n, dtype=q.dtype)
        bias = -(position[:, None] - position[None, :]).abs()
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + bias, dim=-1)


class NaiveExp(Softmax):
    """exp() without subtracting the max: overflows to inf / inf = NaN on large logits."""

    def attention_weights(self, q, k):
        e = torch.exp(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim))
        return e / e.sum(dim=-1, keepdim=True)


class HeadsLast(Softmax):
    """Returns (batch, tokens, heads, head_dim) instead of (batch, heads, tokens, head_dim)."""

    def forward(self, q, k, v):
        return self.explicit(q, k, v).transpose(1, 2)


class UnusedGain(Softmax):
    """Declares a parameter that forward never uses."""

    def __init__(self, head_dim, num_heads):
        super().__init__(head_dim, num_heads)
        self.gain = torch.nn.Parameter(torch.ones(num_heads, 1, 1))


class Float32Only(Softmax):
    """Like a custom kernel written for float32/float64 only: fails under bf16 autocast."""

    def forward(self, q, k, v):
        if q.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"unsupported dtype {q.dtype}")
        return self.explicit(q, k, v)


class WeightsAveragedOverHeads(Softmax):
    def attention_weights(self, q, k):
        return super().attention_weights(q, k).mean(dim=1)  # (B, N, N): the head axis is gone

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class Float32Standardized(Softmax):
    """Standardizes with a plain layer_norm: float32 reaches SDPA under CUDA autocast."""

    def forward(self, q, k, v):
        q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
        return F.scaled_dot_product_attention(q, k, v)

    def attention_weights(self, q, k):
        return super().attention_weights(F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:]))


class UpcastsOutput(Softmax):
    """Returns float32 for low-precision inputs: every following layer runs in float32."""

    def forward(self, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


class DrawsInForward(Softmax):
    """Draws from torch's global generator on every call (its output is exact): a study's arms stop pairing."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v) + 0 * torch.rand(())


class UnseededBuffer(Softmax):
    """Keeps a buffer drawn from an unseeded generator: the same run seed builds a different layer."""

    def __init__(self, head_dim, num_heads, **options):
        super().__init__(head_dim, num_heads, **options)
        self.register_buffer("noise", torch.randn(4, generator=torch.Generator().manual_seed(torch.seed())))


WRONG = [
    (FastPathWrongScale, "fast_path_forward"),
    (FastPathWrongScale, "fast_path_gradients"),
    (MixesBatch, "batch_independence"),
    (PositionBias, "permutation_equivariance"),
    (NaiveExp, "finite"),
    (HeadsLast, "shape_and_dtype"),
    (UnusedGain, "finite"),
    (Float32Only, "bf16_autocast"),
    (Float32Standardized, "keeps_compute_dtype"),
    (UpcastsOutput, "keeps_compute_dtype"),
    (WeightsAveragedOverHeads, "attention_weights"),
    (DrawsInForward, "random_stream"),
    (UnseededBuffer, "random_stream"),
]


@pytest.mark.parametrize("factory, check", WRONG, ids=[f"{f.__name__}-{c}" for f, c in WRONG])
def test_wrong_variant_fails_the_named_check(factory, check):
    report = check_variant(factory)
    assert not report.ok
    assert check in report.failed, report.summary()
    with pytest.raises(AssertionError, match=f"FAIL  {check}"):
        report.raise_if_failed()


def test_each_wrong_variant_breaks_only_what_it_breaks():
    # A single bug is reported where it is, not smeared over every check.
    assert check_variant(MixesBatch).failed == ["batch_independence"]
    assert check_variant(PositionBias).failed == ["permutation_equivariance"]
    assert check_variant(FastPathWrongScale).failed == ["fast_path_forward", "fast_path_gradients"]


def test_compute_dtype_failure_says_what_reached_the_kernel_and_the_fix():
    assert check_variant(Float32Standardized).failed == ["keeps_compute_dtype"]
    (_, _, message), = check_variant(Float32Standardized, checks=["keeps_compute_dtype"]).results
    assert "scaled_dot_product_attention was handed (torch.float32" in message
    assert "attnzoo.standardize" in message


def test_failure_messages_give_the_numbers():
    report = check_variant(FastPathWrongScale, checks=["fast_path_forward"])
    (name, passed, message), = report.results
    assert (name, passed) == ("fast_path_forward", False)
    assert "max abs diff" in message and "tolerance" in message and "N=5" in message


def test_non_finite_and_unused_parameter_messages():
    message = dict((n, m) for n, _, m in check_variant(NaiveExp, checks=["finite"]).results)["finite"]
    assert "not finite" in message and "std 10" in message
    message = dict((n, m) for n, _, m in check_variant(UnusedGain, checks=["finite"]).results)["finite"]
    assert "parameter gain" in message and "DistributedDataParallel" in message


def test_an_exception_in_the_variant_is_a_failure_with_its_message():
    report = check_variant(Float32Only, checks=["bf16_autocast"])
    assert report.results[0][1] is False
    assert "raised TypeError: unsupported dtype torch.bfloat16" in report.results[0][2]


def test_factory_receives_options_and_settings():
    seen = {}

    def factory(head_dim, num_heads, temperature):
        seen.update(head_dim=head_dim, num_heads=num_heads, temperature=temperature)
        return Softmax(head_dim, num_heads)

    report = check_variant(factory, head_dim=4, num_heads=3, temperature=2.0, checks=["shape_and_dtype"])
    assert report.ok
    assert seen == {"head_dim": 4, "num_heads": 3, "temperature": 2.0}
    assert "temperature=2.0" in report.summary()


def test_registered_options_are_validated(builtin_registry):
    with pytest.raises(PluginError, match="scale"):
        check_variant("cosine", registry=builtin_registry, scale="sideways")
    with pytest.raises(PluginError, match="Unknown attention variant 'cosin'.*did you mean 'cosine'"):
        check_variant("cosin", registry=builtin_registry)


def test_checks_and_skip_select_checks():
    report = check_variant(PositionBias, skip=("permutation_equivariance",))
    assert report.ok and "permutation_equivariance" not in [r[0] for r in report.results]
    assert [r[0] for r in check_variant(Softmax, checks=["finite", "attention_weights"]).results] == [
        "finite", "attention_weights"]
    with pytest.raises(ValueError, match="unknown check"):
        check_variant(Softmax, checks=["speed"])


def test_random_stream_failures_say_what_drew_and_the_fix():
    assert check_variant(DrawsInForward).failed == ["random_stream"]
    (_, _, message), = check_variant(DrawsInForward, checks=["random_stream"]).results
    assert message.startswith("forward(q, k, v) drew from torch's global random stream") and "torch.Generator" in message
    (_, _, message), = check_variant(UnseededBuffer, checks=["random_stream"]).results
    assert message.startswith("built twice for the same run seed and layer, its 'noise' differs")


def test_a_variant_that_draws_its_initial_values_from_the_default_generator_passes():
    class RandomGain(Softmax):  # what the model's per-layer stream is for: diff's lambda vectors, say
        def __init__(self, head_dim, num_heads, **options):
            super().__init__(head_dim, num_heads, **options)
            self.register_buffer("gain", torch.randn(head_dim))

    assert "random_stream" not in check_variant(RandomGain).failed


def test_kit_leaves_the_global_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_variant(Softmax)
    torch.testing.assert_close(torch.rand(3), expected)


def test_report_summary_is_a_table():
    report = Report("'x'", "head_dim=8", [("shape_and_dtype", True, "fine"), ("finite", False, "3 NaN")])
    text = report.summary()
    assert "PASS  shape_and_dtype  fine" in text
    assert "FAIL  finite           3 NaN" in text
    assert text.endswith("1/2 checks passed, FAILED: finite")
    assert not report.ok and report.failed == ["finite"]
    assert Report("'x'", "", [("finite", True, "")]).ok


def test_pytest_fixture_is_installed(attnzoo_check):
    # attnzoo registers attnzoo.testing under pytest11, so any project's tests get the fixture.
    assert attnzoo_check is check_variant


def test_check_plugin_command(builtin_registry, monkeypatch, capsys):
    broken = Variant("mixer", "mixes the batch", MixesBatch)
    registries = {"good": builtin_registry, "bad": Registry({"mixer": broken}, [])}
    monkeypatch.setattr("attnzoo.contract.registry.default_registry", lambda: registries["good"])
    assert main(["check-plugin", "softmax"]) == 0
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed, ok" in capsys.readouterr().out

    monkeypatch.setattr("attnzoo.contract.registry.default_registry", lambda: registries["bad"])
    assert main(["check-plugin", "mixer"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  batch_independence" in out and "max abs diff" in out
    assert main(["check-plugin", "nope"]) == 2  # an unknown name is a user error, not a failed check


class OnlyHeadDim8(Softmax):
    def __init__(self, head_dim, num_heads):
        if head_dim != 8:
            raise ValueError(f"head_dim {head_dim} is not supported")
        super().__init__(head_dim, num_heads)


def test_a_factory_that_rejects_a_head_dim_fails_only_head_dims():
    checks = ["shape_and_dtype", "fast_path_forward", "head_dims"]
    report = check_variant(OnlyHeadDim8, checks=checks, sizes=((16, 4),))
    assert report.failed == ["head_dims"]
    assert dict((n, m) for n, _, m in report.results)["head_dims"] == (
        "head_dim=16, num_heads=4: the factory raised ValueError: head_dim 16 is not supported")
    assert check_variant(OnlyHeadDim8, checks=checks, sizes=((8, 4),)).ok


def test_check_plugin_runs_the_kit_on_a_variant_that_failed_to_load(monkeypatch, capsys):
    rejected = {"mixer": (Variant("mixer", "mixes the batch", MixesBatch), "variant 'mixer': weights disagree")}
    monkeypatch.setattr("attnzoo.contract.registry.default_registry", lambda: Registry({}, [], rejected))
    assert main(["check-plugin", "mixer"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("variant 'mixer' failed to load: variant 'mixer': weights disagree\n")
    assert "FAIL  batch_independence" in out and "PASS  head_dims" in out and "head_dim/num_heads 16/2, 16/4" in out
