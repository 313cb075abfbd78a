"""The CPU emulation of CUDA autocast's float32 policy, and the built-ins' dtypes under it."""

import pytest
import torch
from attnzoo import l2_normalize, standardize
from attnzoo.contract.cuda_autocast import emulate_cuda_autocast
from torch.nn import functional as F


def bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


@pytest.mark.parametrize("op", [
    lambda x: F.layer_norm(x, x.shape[-1:]),
    lambda x: x.norm(dim=-1),
    lambda x: torch.linalg.vector_norm(x, dim=-1),
    lambda x: F.normalize(x, dim=-1),
    lambda x: x.softmax(-1),
    lambda x: torch.exp(x),
    lambda x: x.sum(-1),
], ids=["layer_norm", "Tensor.norm", "vector_norm", "normalize", "softmax", "exp", "sum"])
def test_float32_ops_return_float32_as_on_cuda(op):
    x = bf16(2, 3, 8)
    assert op(x).dtype == torch.bfloat16  # outside: plain bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert op(x).dtype == torch.bfloat16  # CPU autocast keeps bf16: what hid the problem
    with emulate_cuda_autocast():
        assert op(x).dtype == torch.float32


def test_matmul_still_runs_in_low_precision_and_disabled_autocast_is_honoured():
    x = torch.randn(4, 8)
    with emulate_cuda_autocast(torch.float16):
        assert (x @ x.T).dtype == torch.float16
        with torch.autocast("cpu", enabled=False):
            assert F.layer_norm(bf16(2, 8), (8,)).dtype == torch.bfloat16


def test_sdpa_inputs_are_recorded():
    q = bf16(1, 2, 5, 8)
    with emulate_cuda_autocast() as record:
        F.scaled_dot_product_attention(q, q, q)
        F.scaled_dot_product_attention(q.float(), q, q)
    assert record.sdpa_inputs == [(torch.bfloat16,) * 3, (torch.float32, torch.bfloat16, torch.bfloat16)]
    assert record.float32_sdpa_calls() == [(torch.float32, torch.bfloat16, torch.bfloat16)]


@pytest.mark.parametrize("fn", [standardize, l2_normalize])
def test_normalizations_keep_the_dtype_under_gpu_autocast(fn):
    x = bf16(2, 3, 5, 16)
    with emulate_cuda_autocast():
        assert fn(x).dtype == torch.bfloat16
    torch.testing.assert_close(fn(x.double()), fn(x.double()), rtol=0, atol=0)


def test_standardize_and_l2_normalize_values():
    x = torch.randn(3, 7, dtype=torch.float64)
    s = standardize(x, eps=0.0)
    torch.testing.assert_close(s, (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True))
    torch.testing.assert_close(l2_normalize(x), x / x.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("name, options", [
    ("softmax", {}), ("standardized", {}), ("standardized", {"scale": "learnable"}),
    ("cosine", {}), ("cosine", {"scale": "learnable"}),
])
def test_builtins_feed_sdpa_and_return_the_compute_dtype(builtin_registry, name, options):
    kernel = builtin_registry.create(name, head_dim=16, num_heads=2, **options)
    q, k, v = (bf16(2, 2, 65, 16) for _ in range(3))
    with emulate_cuda_autocast() as record:
        out = kernel(q, k, v)
    assert out.dtype == torch.bfloat16
    assert record.float32_sdpa_calls() == []
