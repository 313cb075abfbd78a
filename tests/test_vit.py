"""The ViT's kernel call: an error inside a variant names the variant, and the try/except
around the call does not stop torch.compile from tracing the model in one graph."""


import math

import pytest
import torch
from attnzoo import AttentionVariant, AttnzooError, PluginError
from attnzoo.model.vit import VisionTransformer, parameter_groups
from torch import nn


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


# ------------------------------------------------ a variant's parameters: weight decay and initialisation


def layered_vit(kernel, depth=2):
    return VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=depth, heads=2,
                             mlp_ratio=2.0, dropout=0.0, kernel=kernel)


def decayed_names(model):
    groups = parameter_groups(model, weight_decay=0.05)
    ids = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert len(ids) + len(groups[1]["params"]) == len(list(model.parameters()))  # each parameter once
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name,options,parameter", [
    ("cosine", {"scale": "learnable"}, "gain"),
    ("standardized", {"scale": "learnable"}, "log_scale"),
])
def test_a_variants_parameters_are_not_decayed(builtin_registry, name, options, parameter):
    model = layered_vit(builtin_registry.kernel(name, options))
    kernel_params = [n for n, _ in model.named_parameters() if ".attn.kernel." in n]
    assert kernel_params == [f"blocks.0.attn.kernel.{parameter}", f"blocks.1.attn.kernel.{parameter}"]
    decayed = decayed_names(model)
    assert not decayed & set(kernel_params)
    # the ViT's own matrices still are; its biases, norms and position embedding are not
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"} <= decayed
    assert not decayed & {"pos_embed", "blocks.0.attn.qkv.bias", "norm.weight"}


class Mixer(AttentionVariant):
    """Softmax attention followed by a learned mixing of the head dimension."""

    def __init__(self, head_dim, num_heads, decay=("mix.weight",)):
        super().__init__(head_dim, num_heads)
        self.mix = nn.Linear(head_dim, head_dim)
        self.decay = decay
        with torch.no_grad():  # the author's own init: identity mixing
            self.mix.weight.copy_(torch.eye(head_dim))
            self.mix.bias.fill_(0.25)

    def weight_decay_parameters(self):
        return self.decay

    def forward(self, q, k, v):
        return self.mix(torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_a_variant_opts_its_parameters_into_decay_by_name():
    decayed = decayed_names(layered_vit(Mixer))
    assert {"blocks.0.attn.kernel.mix.weight", "blocks.1.attn.kernel.mix.weight"} <= decayed
    assert not {"blocks.0.attn.kernel.mix.bias"} & decayed


def test_a_misspelled_decay_parameter_is_a_plugin_error():
    model = layered_vit(lambda d, h: Mixer(d, h, decay=("mix.wieght",)))
    with pytest.raises(PluginError, match=r"Mixer.weight_decay_parameters\(\) names \['blocks.0.attn.kernel.mix.wieght'\]"):
        parameter_groups(model, 0.1)


def test_the_vit_keeps_a_variants_own_initialisation():
    torch.manual_seed(0)
    model = layered_vit(Mixer)
    for block in model.blocks:
        assert torch.equal(block.attn.kernel.mix.weight, torch.eye(8))
        assert torch.equal(block.attn.kernel.mix.bias, torch.full((8,), 0.25))
        # the ViT's own layers do get its truncated-normal init and zero biases
        assert block.attn.qkv.weight.std() < 0.03 and torch.equal(block.attn.qkv.bias, torch.zeros(48))


def every_builtin_with_its_option_samples():
    """(name, options) for each built-in variant (the study's three and the zoo), at its defaults
    and at each single choice of an option: the settings that decide whether it has parameters."""
    from importlib import metadata

    from attnzoo.contract.registry import _option_samples, load_registry
    from conftest import BUILTINS
    from test_zoo import ZOO

    entry_points = [metadata.EntryPoint(n, m, "attnzoo") for n, m in {**BUILTINS, **ZOO}.items()]
    registry = load_registry(entry_points, strict=True, only=None, disable=set(), warn=False)
    cases = [(name, options) for name, variant in sorted(registry.variants.items())
             for options in _option_samples(variant) if buildable(variant, options)]
    return registry, cases


def buildable(variant, options) -> bool:
    """False for a setting this machine refuses (cosine's backend=triton without a GPU)."""
    try:
        variant.factory(head_dim=8, num_heads=2, **options)
        return True
    except AttnzooError:
        return False


REGISTRY, CASES = every_builtin_with_its_option_samples()


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_no_builtin_kernel_is_decayed_or_reinitialised(name, options):
    made = []

    def recording(head_dim, num_heads):  # the kernels as their factory made them
        kernel = REGISTRY.kernel(name, options)(head_dim, num_heads)
        made.append((kernel, {k: t.clone() for k, t in kernel.state_dict().items()}))
        return kernel

    model = VisionTransformer(image_size=8, patch_size=4, num_classes=3, dim=16, depth=2, heads=2,
                              mlp_ratio=2.0, dropout=0.0, kernel=recording)
    for kernel, before in made:
        assert all(torch.equal(t, before[k]) for k, t in kernel.state_dict().items())
    opted_in = {n for n in decayed_names(model) if ".attn.kernel." in n}
    declared = {f"blocks.{i}.attn.kernel.{n}" for i, (kernel, _) in enumerate(made)
                for n in getattr(kernel, "weight_decay_parameters", lambda: ())()}
    assert opted_in == declared
