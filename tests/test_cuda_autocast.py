"""The CPU emulation of CUDA autocast's cast lists, pinned to the installed torch, and the
built-ins' dtypes and casts under it."""

import re
from pathlib import Path

import pytest
import torch
from attnzoo import l2_normalize, standardize
from attnzoo.contract import cuda_autocast
from attnzoo.contract.cuda_autocast import emulate_cuda_autocast
from torch.nn import functional as F


def bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


def autocast_header_lists() -> dict:
    """{macro: ATen op names} from the installed torch's ATen/autocast_mode.h (what CUDA autocast uses)."""
    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip(f"this torch installation ships no {header.name} to compare with")
    text = header.read_text()
    def body(macro):
        return re.search(rf"#define {macro}\(_\)(.*?)(?:\n\s*\n|\n#)", text, re.S).group(1)

    lists = {macro: set(re.findall(r"_\((\w+)", body(macro)))
             for macro in ("AT_FORALL_LOWER_PRECISION_FP", "AT_FORALL_FP32", "AT_FORALL_FP32_SET_OPT_DTYPE",
                           "AT_FORALL_PROMOTE")}
    lists["redispatch"] = set(re.findall(r"ADD_NS\((\w+)\)", body("AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE")))
    return lists


def test_the_lists_are_torchs_own():
    lists = autocast_header_lists()
    assert set(cuda_autocast.LOWER_PRECISION_OPS) == lists["AT_FORALL_LOWER_PRECISION_FP"]
    assert set(cuda_autocast.FLOAT32_OPS) == lists["AT_FORALL_FP32"] | lists["redispatch"]
    assert set(cuda_autocast.FLOAT32_UNLESS_DTYPE_OPS) == lists["AT_FORALL_FP32_SET_OPT_DTYPE"]
    assert set(cuda_autocast.PROMOTE_OPS) == lists["AT_FORALL_PROMOTE"]
    # the ones the review found missing, and SDPA on the lower-precision list
    assert {"logsumexp", "rms_norm", "expm1", "log1p", "pow"} <= set(cuda_autocast.FLOAT32_OPS)
    assert "scaled_dot_product_attention" in cuda_autocast.LOWER_PRECISION_OPS


@pytest.mark.parametrize("op", [
    lambda x: F.layer_norm(x, x.shape[-1:]),
    lambda x: F.rms_norm(x, x.shape[-1:]),
    lambda x: x.norm(dim=-1),
    lambda x: torch.linalg.vector_norm(x, dim=-1),
    lambda x: F.normalize(x, dim=-1),
    lambda x: x.softmax(-1),
    lambda x: torch.exp(x),
    lambda x: torch.expm1(x),
    lambda x: torch.log1p(x.abs()),
    lambda x: x.logsumexp(-1),
    lambda x: x.sum(-1),
    lambda x: x.pow(2),
    lambda x: x ** 2,
    lambda x: torch.square(x),
], ids=["layer_norm", "rms_norm", "Tensor.norm", "vector_norm", "normalize", "softmax", "exp", "expm1", "log1p",
        "logsumexp", "sum", "pow", "**", "square"])
def test_float32_ops_return_float32_as_on_cuda(op):
    x = bf16(2, 3, 8)
    assert op(x).dtype == torch.bfloat16  # outside: plain bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert op(x).dtype == torch.bfloat16  # CPU autocast keeps bf16: what hid the problem
    with emulate_cuda_autocast() as record:
        assert op(x).dtype == torch.float32
    assert record.widened() and all(c.by == "autocast" for c in record.widened())


def test_an_output_dtype_keeps_a_reduction_out_of_the_float32_list():
    with emulate_cuda_autocast():
        assert bf16(2, 8).sum(-1, dtype=torch.bfloat16).dtype == torch.bfloat16
        assert bf16(2, 8).softmax(-1, dtype=torch.float16).dtype == torch.float16


def test_matmul_still_runs_in_low_precision_and_disabled_autocast_is_honoured():
    x = torch.randn(4, 8)
    with emulate_cuda_autocast(torch.float16) as record:
        assert (x @ x.T).dtype == torch.float16
        assert torch.einsum("ij,kj->ik", x, x).dtype == torch.float16  # CUDA's list, not CPU's
        with torch.autocast("cpu", enabled=False):
            assert F.layer_norm(bf16(2, 8), (8,)).dtype == torch.bfloat16
    assert [(c.op, c.source, c.target) for c in record.narrowed()][:2] == [
        ("matmul", torch.float32, torch.float16), ("matmul", torch.float32, torch.float16)]
    assert len(record.casts) == 4 and not record.widened()  # two operands each, nothing under enabled=False


def test_sdpa_is_recorded_in_the_dtype_it_runs_in_after_its_own_cast():
    q = bf16(1, 2, 5, 8)
    with emulate_cuda_autocast() as record:
        out = F.scaled_dot_product_attention(q.float(), q, q)  # SDPA casts float32 back: flash stays
        F.scaled_dot_product_attention(q.double(), q.double(), q.double())  # float64 is left alone
    assert out.dtype == torch.bfloat16
    assert record.sdpa_inputs == [(torch.bfloat16,) * 3, (torch.float64,) * 3]
    assert record.float32_sdpa_calls() == [(torch.float64,) * 3]
    assert [(c.op, c.source, c.target) for c in record.narrowed()] == [
        ("scaled_dot_product_attention", torch.float32, torch.bfloat16)]


def test_a_float32_round_trip_is_counted_by_autocast_and_by_code():
    q, k, v = bf16(1, 2, 5, 8), bf16(1, 2, 5, 8), bf16(1, 2, 5, 8)
    with emulate_cuda_autocast() as record:
        out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v  # softmax widens, the matmul narrows
    assert out.dtype == torch.bfloat16
    assert [(c.op, c.by) for c in record.float32_round_trips()] == [("matmul", "autocast")]
    with emulate_cuda_autocast() as record:
        out = (q.float() * 2).to(torch.bfloat16)
    assert [(c.op, c.widens, c.by) for c in record.casts] == [("float", True, "code"), ("to", False, "code")]
    assert len(record.float32_round_trips()) == 1
    with emulate_cuda_autocast() as record:
        torch.softmax(q.float(), -1)  # widened and left wide: no round trip, the output check catches it
    assert record.float32_round_trips() == []


@pytest.mark.parametrize("fn", [standardize, l2_normalize])
def test_normalizations_keep_the_dtype_under_gpu_autocast(fn):
    x = bf16(2, 3, 5, 16)
    with emulate_cuda_autocast() as record:
        assert fn(x).dtype == torch.bfloat16
    assert record.casts == []
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
    assert record.float32_round_trips() == []
