"""The ViT's kernel call: an error inside a variant names the variant, and the try/except
around the call does not stop torch.compile from tracing the model in one graph."""

import math

import pytest
import torch
from attnzoo import AttentionVariant
from attnzoo.errors import PluginError
from attnzoo.model.vit import VisionTransformer


class Softmax(AttentionVariant):
    def attention_weights(self, q, k):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)


class Broken(Softmax):
    def forward(self, q, k, v):
        raise IndexError("index 7 is out of bounds")


def Broken_factory(head_dim, num_heads):  # noqa: N802 - a factory with a label, like KernelFactory
    return Broken(head_dim, num_heads)


Broken_factory.label = "variant 'broken' (plugin 'broken', broken-dist 0.3)"


def vit(kernel) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_ratio=2.0,
                             dropout=0.0, kernel=kernel)


def test_an_error_inside_the_kernel_names_the_variant_and_keeps_the_cause():
    with pytest.raises(PluginError) as caught:
        vit(Broken_factory)(torch.randn(2, 3, 8, 8))
    assert str(caught.value).startswith(
        "variant 'broken' (plugin 'broken', broken-dist 0.3) failed in forward(q, k, v) for q of shape "
        "(2, 2, 5, 8) torch.float32: IndexError: index 7 is out of bounds.")
    assert isinstance(caught.value.__cause__, IndexError)


def test_a_factory_that_rejects_the_size_is_named_with_the_size():
    def picky(head_dim, num_heads):
        raise ValueError("only head_dim 4")

    with pytest.raises(PluginError, match=r"attention kernel '.*picky' could not build its kernel for head_dim=8, "
                                          r"num_heads=2 \(model.dim / model.heads\): ValueError: only head_dim 4"):
        vit(picky)


def test_the_model_compiles_in_one_graph_with_the_guarded_kernel_call():
    model, images = vit(Softmax).eval(), torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))
    torch._dynamo.reset()


def test_a_compiled_model_still_names_the_failing_variant():
    compiled = torch.compile(vit(Broken_factory), backend="eager")
    with pytest.raises(PluginError, match="variant 'broken'.*IndexError: index 7 is out of bounds"):
        compiled(torch.randn(2, 3, 8, 8))
    torch._dynamo.reset()
