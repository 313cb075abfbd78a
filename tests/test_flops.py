"""FLOP counts against closed forms; the explicit path when the forward count cannot be trusted."""

import pytest
import torch
from attnzoo.contract.registry import explicit_attention
from attnzoo.model.flops import attention_flops, counter_record, model_flops
from attnzoo.model.vit import VisionTransformer
from attnzoo_cosine import CosineAttention
from attnzoo_softmax import SoftmaxAttention

B, H, N, D = 3, 4, 65, 16


def test_softmax_attention_one_layer_matches_the_closed_form():
    kernel = SoftmaxAttention(head_dim=D, num_heads=H)
    forward = 2 * 2 * B * H * N * N * D  # QKᵀ and AV
    assert attention_flops(kernel, B, H, N, D, backward=False)[0] == forward
    assert attention_flops(kernel, B, H, N, D)[0] == forward + 2 * forward


def test_sdpa_counts_like_the_explicit_products():
    """The CPU SDPA kernel (zero in torch's own table) counts exactly what its explicit path does."""
    kernel = SoftmaxAttention(head_dim=D, num_heads=H)
    fast, _ = attention_flops(kernel, B, H, N, D)
    kernel.forward = lambda q, k, v: explicit_attention(kernel, q, k, v)
    explicit, _ = attention_flops(kernel, B, H, N, D)
    assert fast == explicit > 0


def test_cosine_linear_path_is_counted_as_such():
    kernel = CosineAttention(head_dim=D, num_heads=H)
    assert attention_flops(kernel, B, H, N, D)[0] == 3 * 2 * 2 * B * H * N * D * D  # kᵀv and q(kᵀv), O(N d²)


def closed_form(dim, depth, hidden, tokens, patch, classes, attention_forward):
    """Per image: forward products, and training = 3x forward except the patch embedding
    (its input needs no gradient, so its backward is the weight gradient only)."""
    patches = tokens - 1
    conv = 2 * (3 * patch * patch) * dim * patches
    linear = depth * 2 * tokens * (dim * 3 * dim + dim * dim + 2 * dim * hidden) + 2 * dim * classes
    forward = conv + linear + depth * attention_forward
    return forward, 2 * conv + 3 * (linear + depth * attention_forward)


@pytest.mark.parametrize("variant", ["softmax", "cosine", "standardized"])
def test_whole_model_count_is_consistent(builtin_registry, variant):
    dim, depth, heads, size, patch, classes = 32, 2, 2, 16, 4, 10
    model = VisionTransformer(image_size=size, patch_size=patch, num_classes=classes, dim=dim, depth=depth,
                              heads=heads, mlp_ratio=2.0, dropout=0.1, kernel=builtin_registry.kernel(variant))
    tokens, d = (size // patch) ** 2 + 1, dim // heads
    per_layer = 4 * heads * tokens * (d * d if variant == "cosine" else tokens * d)
    forward, train_flops = closed_form(dim, depth, 2 * dim, tokens, patch, classes, per_layer)
    counted = model_flops(model, size)
    assert counted["forward_flops_per_image"] == forward
    assert counted["flops_per_image"] == train_flops
    assert counted["attention_forward_flops_per_image"] == depth * per_layer
    assert counted["attention_flops_per_image"] == 3 * depth * per_layer
    assert counted["attention_path"] == "forward" and counted["opaque_ops"] == []


@torch.library.custom_op("attnzoo_test::opaque_attention", mutates_args=())
def _opaque_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ v


@_opaque_attention.register_fake
def _(q, k, v):
    return torch.empty_like(q)


def _opaque_backward(ctx, grad):
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ v
        return torch.autograd.grad(out, (q, k, v), grad)


_opaque_attention.register_autograd(_opaque_backward,
                                    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


class OpaqueSoftmax(SoftmaxAttention):
    """softmax attention whose forward is a custom operator, as a Triton kernel behind torch.library is."""

    def forward(self, q, k, v):
        return _opaque_attention(q, k, v)


def test_an_opaque_custom_op_is_counted_through_the_explicit_path(builtin_registry):
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=2, mlp_ratio=2.0,
                              dropout=0.0, kernel=builtin_registry.kernel("softmax"))
    reference = model_flops(model, 16)
    for block in model.blocks:
        block.attn.kernel = OpaqueSoftmax(head_dim=16, num_heads=2)
    counted = model_flops(model, 16)
    assert counted["attention_path"] == "explicit" and "custom operators" in counted["explicit_because"]
    assert counted["opaque_ops"] == ["attnzoo_test.opaque_attention.default"]
    for key in ("flops_per_image", "forward_flops_per_image", "attention_flops_per_image"):
        assert counted[key] == reference[key], key
    assert all(type(b.attn.kernel).forward is OpaqueSoftmax.forward for b in model.blocks)  # model left as it was


class GpuOnlySoftmax(SoftmaxAttention):
    """A fast path that refuses CPU tensors, as a GPU kernel asked for explicitly does."""

    def forward(self, q, k, v):
        if q.device.type != "cuda":
            raise RuntimeError("this kernel needs CUDA tensors")
        return super().forward(q, k, v)


def test_a_forward_that_cannot_run_on_the_cpu_is_counted_through_the_explicit_path(builtin_registry):
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=2, mlp_ratio=2.0,
                              dropout=0.0, kernel=builtin_registry.kernel("softmax"))
    reference = model_flops(model, 16)
    for block in model.blocks:
        block.attn.kernel = GpuOnlySoftmax(head_dim=16, num_heads=2)
    counted = model_flops(model, 16)
    assert counted["attention_path"] == "explicit" and "needs CUDA tensors" in counted["explicit_because"]
    assert counted["flops_per_image"] == reference["flops_per_image"]


def test_counts_are_per_image_whatever_the_counted_batch(builtin_registry):
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=2, mlp_ratio=2.0,
                              dropout=0.0, kernel=builtin_registry.kernel("softmax"))
    one, three = model_flops(model, 16, batch=1), model_flops(model, 16, batch=3)
    assert one == three and one["flops_per_image"] > 0
    assert counter_record(batch=3)["batch"] == 3
    assert all(p.grad is None for p in model.parameters())  # counted on a copy: the model has no gradients
