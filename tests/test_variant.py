"""attnzoo.contract.variant: the explicit path, defined once, and the one way to force it."""

import pytest
import torch
from attnzoo import AttentionVariant
from attnzoo.contract.variant import ExplicitPath, explicit_attention


class Uniform(AttentionVariant):
    """Equal weights over the keys, and v doubled: the explicit path is mean(2 v) over tokens."""

    def attention_weights(self, q, k):
        n = k.shape[-2]
        return torch.full((*q.shape[:-1], n), 1.0 / n, dtype=q.dtype)

    def values(self, v):
        return 2 * v


class UniformFast(Uniform):
    def forward(self, q, k, v):
        raise AssertionError("the fast path ran")


class Plain(torch.nn.Module):
    """A kernel that does not subclass AttentionVariant and has no values(v)."""

    def attention_weights(self, q, k):
        return torch.eye(q.shape[-2], dtype=q.dtype).expand(*q.shape[:-1], q.shape[-2])


def qkv(n=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, n, 5, generator=g, dtype=torch.float64) for _ in range(3)]


def test_explicit_path_is_the_weights_times_the_values():
    q, k, v = qkv()
    expected = (2 * v).mean(dim=-2, keepdim=True).expand_as(v)
    torch.testing.assert_close(explicit_attention(Uniform(5, 3), q, k, v), expected)
    torch.testing.assert_close(explicit_attention(Plain(), q, k, v), v)  # identity weights, v as it is


def test_the_default_forward_and_the_deprecated_alias_are_the_explicit_path():
    q, k, v = qkv()
    kernel = Uniform(5, 3)
    expected = explicit_attention(kernel, q, k, v)
    torch.testing.assert_close(kernel(q, k, v), expected)
    torch.testing.assert_close(kernel.explicit(q, k, v), expected)


@pytest.mark.parametrize("kernel", [UniformFast(5, 3), Plain()], ids=["fast-path", "plain-module"])
def test_explicit_path_wrapper_never_runs_the_fast_path(kernel):
    q, k, v = qkv()
    forced = ExplicitPath(kernel)
    torch.testing.assert_close(forced(q, k, v), explicit_attention(kernel, q, k, v))
    torch.testing.assert_close(forced.attention_weights(q, k), kernel.attention_weights(q, k))
    # The wrapper is itself a kernel of the contract: its own explicit path is the same product.
    torch.testing.assert_close(explicit_attention(forced, q, k, v), forced(q, k, v))
