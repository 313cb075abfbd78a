"""The ViT's side of the plugin contract: weight decay and initialisation leave a variant's
own parameters alone unless the variant asks otherwise."""

import pytest
import torch
from attnzoo import AttentionVariant, AttnzooError, PluginError
from attnzoo.model.vit import VisionTransformer, parameter_groups
from torch import nn


def vit(kernel, depth=2):
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
    model = vit(builtin_registry.kernel(name, options))
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
    decayed = decayed_names(vit(Mixer))
    assert {"blocks.0.attn.kernel.mix.weight", "blocks.1.attn.kernel.mix.weight"} <= decayed
    assert not {"blocks.0.attn.kernel.mix.bias"} & decayed


def test_a_misspelled_decay_parameter_is_a_plugin_error():
    model = vit(lambda d, h: Mixer(d, h, decay=("mix.wieght",)))
    with pytest.raises(PluginError, match=r"Mixer.weight_decay_parameters\(\) names \['blocks.0.attn.kernel.mix.wieght'\]"):
        parameter_groups(model, 0.1)


def test_the_vit_keeps_a_variants_own_initialisation():
    torch.manual_seed(0)
    model = vit(Mixer)
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
