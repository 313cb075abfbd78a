"""attnzoo variants inside timm's ViTs, and weights carried between timm and the built-in ViT."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

timm = pytest.importorskip("timm")

import attnzoo  # noqa: E402
from attnzoo.config import recipe as recipes  # noqa: E402
from attnzoo.errors import AttnzooError, RecipeError  # noqa: E402
from attnzoo.model import timm_bridge  # noqa: E402
from attnzoo.model.vit import parameter_groups  # noqa: E402
from attnzoo.run import assembly  # noqa: E402
from attnzoo.run.export_weights import export_timm  # noqa: E402
from attnzoo.run.rundir import RunDir  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

from conftest import tiny_recipe_dict  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _timm_models():
    torch.manual_seed(0)
    return {"vit_tiny_patch16_224": timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                       num_classes=10, depth=4),
            "qk_norm, no class token, avg pool": TimmViT(**TINY, num_classes=10, qk_norm=True, class_token=False,
                                                         global_pool="avg")}


@pytest.mark.parametrize("name", list(_timm_models()))
def test_swapped_to_softmax_gives_timms_logits_and_gradients(name):
    model = _timm_models()[name].train()
    swapped = attnzoo.swap_attention(copy.deepcopy(model), "softmax")
    assert all(isinstance(b.attn, timm_bridge.SwappedAttention) for b in swapped.blocks)
    assert swapped.state_dict().keys() == model.state_dict().keys()  # the same weights, by name
    images = torch.randn(4, 3, 32, 32)
    ours, theirs = swapped(images), model(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (ours.square().sum()).backward()
    (theirs.square().sum()).backward()
    for (key, a), b in zip(swapped.named_parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=key)


def test_the_swap_replaces_the_computation_not_only_the_module():
    model = _timm_models()["vit_tiny_patch16_224"].eval()
    images = torch.randn(2, 3, 32, 32)
    cosine = attnzoo.swap_attention(copy.deepcopy(model), "cosine")
    assert not torch.allclose(cosine(images), model(images), atol=1e-3)
    maps = cosine.attention_maps(images)
    assert len(maps) == 4 and maps[0].shape == (2, 3, 5, 5)  # (B, heads, 1 + 2x2 patches, same)


def test_swapped_model_trains_a_step_with_every_installed_variant(builtin_registry):
    from attnzoo.contract.registry import load_registry

    installed = load_registry(strict=True, only=None, disable=set())  # the whole zoo, not only the built-ins
    assert set(builtin_registry.variants) <= set(installed.variants) and len(installed.variants) >= 16
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for name in installed.variants:
        model = timm_bridge.swap_attention(TimmViT(**TINY, num_classes=4), name, registry=installed)
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
        before = model.blocks[0].attn.qkv.weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), name
        assert not torch.equal(before, model.blocks[0].attn.qkv.weight), name


def test_kernel_parameters_are_not_decayed_unless_the_variant_asks(builtin_registry):
    model = timm_bridge.swap_attention(TimmViT(**TINY, num_classes=4), "cosine", registry=builtin_registry,
                                       scale="learnable")
    kernel_params = {id(p) for b in model.blocks for p in b.attn.kernel.parameters()}
    assert kernel_params
    decayed = {id(p) for p in parameter_groups(model, 0.05)[0]["params"]}
    assert not kernel_params & decayed


def test_unsupported_architecture_is_a_clear_error_and_nothing_is_swapped():
    model = TimmViT(**TINY, num_classes=4, attn_layer="diff")
    with pytest.raises(AttnzooError, match=r"blocks\.0 \(Block\) uses DiffAttention, not timm's Attention.*Supported: "
                                           r"timm's VisionTransformer family"):
        attnzoo.swap_attention(model, "softmax")
    assert not any(isinstance(b.attn, timm_bridge.SwappedAttention) for b in model.blocks)
    with pytest.raises(AttnzooError, match="ResNet has no `blocks`"):
        attnzoo.swap_attention(timm.create_model("resnet18", pretrained=False), "softmax")
    with pytest.raises(AttnzooError, match=r"attn_drop p=0.1.*attn_drop_rate=0"):
        attnzoo.swap_attention(TimmViT(**TINY, attn_drop_rate=0.1), "softmax")
    swapped = attnzoo.swap_attention(TimmViT(**TINY), "softmax")
    with pytest.raises(AttnzooError, match="swapped already"):
        attnzoo.swap_attention(swapped, "cosine")


# ---------------------------------------------------------------- recipe keys


def test_recipe_keys_are_checked_with_a_fix_for_each_problem(tmp_path):
    def problems(**model):
        with pytest.raises(RecipeError) as exc:
            recipes.from_dict(tiny_recipe_dict(tmp_path, model=model), check_plugins=False)
        return exc.value.problems

    assert problems(arch="timm/vit_tiny_patch16_22") == [
        "model.arch: timm has no model 'vit_tiny_patch16_22' (did you mean 'vit_tiny_patch16_224'?) "
        "(timm.list_models() lists them)"]
    assert "neither attnzoo (the built-in ViT) nor timm/<name>" in problems(arch="vit_small")[0]
    assert "the built-in ViT (model.arch=attnzoo) has no published weights" in problems(pretrained=True)[0]
    assert "set model.pretrained=true to load them" in problems(arch="timm/vit_tiny_patch16_224.augreg_in21k")[0]
    assert "(did you mean 'augreg_in21k'?)" in problems(arch="timm/vit_tiny_patch16_224.augreg_in2k",
                                                        pretrained=True)[0]
    assert problems(arch="timm/vit_tiny_patch16_224.augreg_in21k", pretrained=True, init_from="w.pth") == [
        "model.init_from: give either model.pretrained=true (timm's weights) or model.init_from=PATH "
        "(a local checkpoint), not both"]
    assert "is not a weights file" in problems(init_from="weights.txt")[0]
    ok = recipes.from_dict(tiny_recipe_dict(tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "patch_size": 16,
                                                             "image_size": 32}), check_plugins=False)
    assert ok.model.arch == "timm/vit_tiny_patch16_224" and not ok.model.pretrained


def test_build_model_builds_the_timm_arch_with_the_recipes_sizes(tmp_path):
    data = tiny_recipe_dict(tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "image_size": 32,
                                             "patch_size": 16, "dropout": 0.1})
    model = assembly.build_model(recipes.from_dict(data), num_classes=7)
    assert model.head.out_features == 7 and model.pos_embed.shape == (1, 5, 192)
    assert model.blocks[0].attn.proj_drop.p == 0.1 and model.head_drop.p == 0.1
    data["model"]["patch_size"] = 4
    with pytest.raises(AttnzooError, match="cuts images into 16-pixel patches, the recipe says 4; "
                                           "set model.patch_size=16"):
        assembly.build_model(recipes.from_dict(data), num_classes=7)


def test_the_built_in_vit_is_built_as_before(tmp_path):
    recipe = recipes.from_dict(tiny_recipe_dict(tmp_path))
    torch.manual_seed(0)
    from attnzoo.model.vit import VisionTransformer

    m = recipe.model
    before = VisionTransformer(image_size=m.image_size, patch_size=m.patch_size, num_classes=3, dim=m.dim,
                               depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                               kernel=recipes.resolve(recipe).kernel, init=m.init).state_dict()
    torch.manual_seed(0)
    now = assembly.build_model(recipe, 3).state_dict()
    assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in before)
    assert not hasattr(assembly.build_model(recipe, 3), "init_report")


# ---------------------------------------------------------------- weights


def test_a_local_timm_checkpoint_loads_with_other_classes_and_image_size(tmp_path, capsys):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=100)
    path = tmp_path / "vit_tiny.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    data = tiny_recipe_dict(tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "image_size": 32,
                                             "patch_size": 16, "init_from": str(path)},
                            attention={"name": "cosine", "scale": "learnable"})
    model = assembly.build_model(recipes.from_dict(data), num_classes=10)
    report = model.init_report
    assert report["resized"] == {"pos_embed": {"from": [1, 17, 192], "to": [1, 5, 192]}}
    assert report["reinitialised"] == {"head.weight": {"checkpoint": [100, 192], "model": [10, 192]},
                                       "head.bias": {"checkpoint": [100], "model": [10]}}
    assert len(report["kept_initialisation"]) == 12  # cosine's learnable scale, per block: not in the checkpoint
    assert report["unused"] == [] and len(report["loaded"]) == len(source.state_dict()) - 3
    ours, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(ours["blocks.3.attn.qkv.weight"], theirs["blocks.3.attn.qkv.weight"])
    assert torch.equal(ours["pos_embed"][:, 0], theirs["pos_embed"][:, 0])  # the class token's embedding is kept
    out = capsys.readouterr().out
    assert "resized pos_embed: [1, 17, 192] -> [1, 5, 192] (another image size)" in out
    assert "re-initialised head.weight: [100, 192] in the checkpoint, [10, 192] in the model" in out
    assembly.write_init_report(model, tmp_path)
    assert json.loads((tmp_path / "init_report.json").read_text()) == report


def test_a_checkpoint_of_another_architecture_is_refused_with_every_difference(tmp_path):
    path = tmp_path / "deeper.safetensors"
    save_file(TimmViT(**{**TINY, "embed_dim": 48}, num_classes=4).state_dict(), str(path))
    model = TimmViT(**TINY, num_classes=4)
    with pytest.raises(AttnzooError, match=r"patch_embed.proj.weight: \[48, 3, 8, 8\] in the checkpoint, "
                                           r"\[32, 3, 8, 8\] in the model;.*only the image size and the number "
                                           r"of classes may differ"):
        timm_bridge.load_initial_weights(model, timm_bridge.read_state_dict(path), image_size=32)
    with pytest.raises(AttnzooError, match="is not a file"):
        timm_bridge.read_state_dict(tmp_path / "missing.pth")


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "opt": torch.optim.SGD}, path)
    with pytest.raises(AttnzooError, match="weights-only torch checkpoint"):
        timm_bridge.read_state_dict(path)


def _finished_run(tmp_path, **attention):
    """A run folder as a finished run leaves it: recipe.yaml and model.safetensors."""
    recipe = recipes.from_dict(tiny_recipe_dict(tmp_path, attention=attention or {"name": "softmax"}))
    torch.manual_seed(0)
    model = assembly.build_model(recipe, 5)
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)
    run.recipe.write_text(recipes.dump_run(recipe))
    save_file(model.state_dict(), str(run.final_weights))
    return recipe, model, run


def test_export_to_timm_and_back_round_trips_bit_exactly(tmp_path):
    recipe, model, run = _finished_run(tmp_path)
    config = export_timm(run.path)
    assert config["left_out"] == [] and config["model_args"]["embed_dim"] == 32
    exported = load_file(str(run.path / "timm" / "model.safetensors"))
    timm_model = TimmViT(**json.loads((run.path / "timm" / "config.json").read_text())["model_args"]).eval()
    timm_model.load_state_dict(exported)  # strict: every name and shape is timm's
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(timm_model(images), model.eval()(images), rtol=1e-5, atol=1e-5)

    data = tiny_recipe_dict(tmp_path, model={"init_from": str(run.path / "timm" / "model.safetensors")},
                            output_dir=str(tmp_path / "again"))
    back = assembly.build_model(recipes.from_dict(data), 5)
    assert back.init_report["resized"] == {} and back.init_report["reinitialised"] == {}
    original = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in back.state_dict().items())
    with pytest.raises(AttnzooError, match="nothing was overwritten"):
        export_timm(run.path)


def test_export_of_a_variant_with_parameters_says_what_it_leaves_out(tmp_path, capsys):
    from attnzoo.cli import main

    _, model, run = _finished_run(tmp_path, name="cosine", scale="learnable")
    assert main(["export", str(run.path), "--timm", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "left out (the variant's own parameters): blocks.0.attn.kernel." in out
    assert ".kernel." not in " ".join(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert main(["export", str(run.path)]) == 2
    assert "the one there is: --timm" in capsys.readouterr().err


@pytest.mark.slow
def test_train_command_with_a_timm_arch(tmp_path, capsys):
    from attnzoo.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(
        tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "image_size": 32, "patch_size": 16},
        attention={"name": "cosine"}, data={"max_train_samples": 64, "max_eval_samples": 16})))
    assert main(["train", str(path)]) == 0
    assert "test top1" in capsys.readouterr().out
    folder = tmp_path / "run"
    assert json.loads((folder / "test_metrics.json").read_text())["variant"] == "cosine"
    assert "blocks.11.attn.qkv.weight" in load_file(str(folder / "model.safetensors"))
    assert len(json.loads((folder / "attention.json").read_text())["entropy"]) == 12


@pytest.mark.slow
def test_a_run_started_from_a_checkpoint_records_what_was_loaded(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    from attnzoo.cli import main

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=100)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "start.safetensors"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(
        tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "image_size": 32, "patch_size": 16,
                         "init_from": str(tmp_path / "start.safetensors")},
        data={"max_train_samples": 64, "max_eval_samples": 16})))
    assert main(["train", str(path)]) == 0
    assert "initial weights from" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert "pos_embed" in report["resized"] and "head.weight" in report["reinitialised"]
    # Evaluation loads the run's own weights: it works after the starting checkpoint is gone.
    (tmp_path / "start.safetensors").unlink()
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "initial weights from" not in capsys.readouterr().out


def test_swapping_draws_each_layers_kernel_in_its_own_stream(builtin_registry):
    # performer draws random features when it is built: per layer, per run seed, and never from the
    # stream the shared weights come from.
    import timm

    from attnzoo import swap_attention
    from attnzoo.contract.registry import load_registry

    registry = load_registry(strict=True)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10, depth=2)
    before = torch.random.get_rng_state()
    swap_attention(model, "performer", registry=registry)
    assert torch.equal(torch.random.get_rng_state(), before)
    features = [b.attn.kernel.features if hasattr(b.attn.kernel, "features") else
                next(t for n, t in b.attn.kernel.named_buffers()) for b in model.blocks]
    assert not torch.equal(features[0], features[1])
