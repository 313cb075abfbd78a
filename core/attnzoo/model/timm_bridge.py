"""attnzoo's attention variants inside timm's Vision Transformers, and weights carried between
timm and the built-in ViT.

:func:`swap_attention` keeps every weight of timm's ``Attention`` (qkv, q_norm/k_norm, the
optional output norm and gate, proj) and replaces only "scores -> weights -> output" with an
attnzoo kernel, the same seam the built-in ViT has. Attention-weight dropout (timm's
``attn_drop``) has no place at that seam: a kernel returns the attention output, and fast
paths never form the weights. The built-in ViT drops no attention weights either, so a model
built with ``attn_drop_rate > 0`` is refused rather than silently trained without it.

:func:`load_initial_weights` loads a local checkpoint (timm's, the built-in ViT's or a swapped
model's: their parameter names agree) into either model, resizing position embeddings and
re-initialising the classifier where the sizes differ, and says what it did in a report.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attnzoo.contract.registry import installed_or
from attnzoo.errors import AttnzooError
from attnzoo.model.vit import Attention as AttnzooAttention
from attnzoo.model.vit import build_kernel

SUPPORTED = ("timm's VisionTransformer family (vit_*, deit_*, eva-free ViTs ...) whose blocks use "
             "timm.layers.Attention, e.g. timm/vit_tiny_patch16_224, timm/deit_small_patch16_224")

# The classifier's parameter names in timm's ViTs and the built-in one (DeiT's distilled head too).
HEAD_PREFIXES = ("head.", "head_dist.")


def _timm():
    try:
        import timm
    except ImportError:
        raise AttnzooError("timm is not installed; it is needed for timm models and for resizing position "
                           "embeddings. Install it with: pip install 'timm>=0.9'") from None
    return timm


def timm_attention_class() -> type:
    """timm's standard Attention (timm.layers from 0.9 on; older releases kept it in vision_transformer)."""
    _timm()
    try:
        from timm.layers import Attention
    except ImportError:  # pragma: no cover - timm before 0.9
        from timm.models.vision_transformer import Attention
    return Attention


class SwappedAttention(AttnzooAttention):
    """timm's Attention with an attnzoo kernel: the same submodules under the same names (a
    timm checkpoint loads as it is), plus ``kernel``. Subclassing the built-in Attention gives
    it the built-in's seam (``heads``, ``split_heads``, ``kernel``), so parameter groups,
    attention maps and FLOP counts treat both models alike."""

    def __init__(self, timm_attention: nn.Module, kernel: nn.Module):
        nn.Module.__init__(self)  # the built-in's __init__ would build its own projections
        a = timm_attention
        self.heads = a.num_heads
        self.head_dim = getattr(a, "head_dim", a.qkv.in_features // a.num_heads)
        self.qkv = a.qkv
        self.q_norm, self.k_norm = a.q_norm, a.k_norm
        self.kernel = kernel
        norm = getattr(a, "norm", None)  # scale_norm (newer timm)
        self.norm = norm if norm is not None else nn.Identity()
        self.gate = getattr(a, "gate", None)  # gated attention output (newer timm)
        self.proj = a.proj
        self.proj_drop = a.proj_drop

    def split_heads(self, x: torch.Tensor):
        """(B, N, C) -> q, k, v, each (B, H, N, d), q and k through timm's q_norm/k_norm."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise AttnzooError("an attention mask (or is_causal) was passed to a swapped attention: attnzoo "
                               "kernels attend over every token and take no mask. Call the model without one.")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        out = self.kernel(*self.split_heads(x))  # (B, H, N, d)
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def _kernel_factory(kernel: str | Callable[[int, int], nn.Module], options: dict, registry) -> Callable:
    if isinstance(kernel, str):
        return installed_or(registry).kernel(kernel, options)  # unknown names and bad options: PluginError
    if options:
        raise AttnzooError(f"swap_attention: options {sorted(options)} go with a variant name; a kernel factory "
                           "already holds its options. Pass the name, e.g. swap_attention(model, 'cosine', ...)")
    if not callable(kernel):
        raise AttnzooError(f"swap_attention: expected a variant name or a factory kernel(head_dim, num_heads), "
                           f"got {kernel!r}")
    return kernel


def _attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every block whose attention gets swapped; every problem raised at once
    before anything is changed, so a model is swapped whole or not at all."""
    Attention = timm_attention_class()
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module) or not len(blocks):
        raise AttnzooError(f"swap_attention: {type(model).__name__} has no `blocks` of transformer blocks. "
                           f"Supported: {SUPPORTED}")
    problems = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if isinstance(attn, SwappedAttention):
            problems.append(f"blocks.{i}.attn is swapped already; build the timm model afresh to swap again")
        elif type(attn) is not Attention:  # a subclass may compute attention its own way
            problems.append(f"blocks.{i} ({type(block).__name__}) uses "
                            f"{type(attn).__name__ if attn is not None else 'no .attn'}, not timm's Attention")
        elif attn.attn_drop.p > 0:
            problems.append(f"blocks.{i}.attn drops attention weights (attn_drop p={attn.attn_drop.p}): attnzoo "
                            "kernels return the output, not the weights; build the model with attn_drop_rate=0")
    if problems:
        raise AttnzooError(f"cannot swap the attention of {type(model).__name__}: " + "; ".join(problems)
                           + f". Supported: {SUPPORTED}")
    return [(f"blocks.{i}", block) for i, block in enumerate(blocks)]


def swap_attention(model: nn.Module, kernel: str | Callable[[int, int], nn.Module], *, registry=None,
                   **options) -> nn.Module:
    """Replace the attention computation of every block of a timm VisionTransformer-family
    `model` (in place; returned for chaining) with attnzoo's `kernel`: a variant name with its
    `options` (from `registry`, default the installed plugins) or a factory kernel(head_dim,
    num_heads). timm's weights stay; ``model.attention_maps(images)`` gives each block's weights.

        model = timm.create_model("vit_small_patch16_224", pretrained=True)
        attnzoo.swap_attention(model, "cosine", learnable_scale=True)
    """
    factory = _kernel_factory(kernel, options, registry)
    label = getattr(factory, "name", None) or getattr(factory, "__name__", "the attention variant")
    for layer, (_, block) in enumerate(_attention_blocks(model)):
        # Built as the built-in ViT builds its kernels: in a random stream of (run seed, layer), so a
        # variant's own draws differ per layer and leave the shared weights' stream alone.
        kernel_module = build_kernel(factory, block.attn.head_dim, block.attn.num_heads, label, layer)
        block.attn = SwappedAttention(block.attn, kernel_module)
    # A bound method (not a subclass) keeps the model timm's own class; copy.deepcopy rebinds it to the copy.
    model.attention_maps = types.MethodType(attention_maps, model)
    return model


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per block of a swapped timm model, the (B, heads, tokens, tokens) weights its variant applies."""
    inputs = []
    hooks = [block.attn.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for block in model.blocks]
    try:
        model.forward_features(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [block.attn.kernel.attention_weights(*block.attn.split_heads(x)[:2]) for block, x in zip(model.blocks, inputs)]


def create_timm_model(name: str, *, kernel: Callable[[int, int], nn.Module], image_size: int, num_classes: int,
                      dropout: float = 0.0, pretrained: bool = False, **timm_args) -> nn.Module:
    """timm's `name` (``vit_small_patch16_224`` or with a pretrained tag, ``....augreg_in21k``)
    built with timm's own arguments, its attention swapped to `kernel`. `dropout` goes where the
    built-in ViT drops: after the embeddings, the attention and MLP projections, and before the head."""
    timm = _timm()
    model = timm.create_model(name, pretrained=pretrained, img_size=image_size, num_classes=num_classes,
                              drop_rate=dropout, pos_drop_rate=dropout, proj_drop_rate=dropout, **timm_args)
    return swap_attention(model, kernel)


def patch_size_of(model: nn.Module) -> int | None:
    """The (square) patch size of a timm or built-in ViT, or None when it has no single one."""
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    size = getattr(conv, "kernel_size", None)
    return size[0] if size and len(set(size)) == 1 else None


# ---------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint: a .safetensors file, or a torch/timm checkpoint read with
    torch.load(weights_only=True), which unpickles tensors and plain containers only, never code.
    A checkpoint that wraps its weights ({"state_dict": ...}, {"model": ...}) is unwrapped and the
    ``module.`` prefix of DistributedDataParallel is dropped."""
    path = Path(path)
    if not path.is_file():
        raise AttnzooError(f"model.init_from: {str(path)!r} is not a file. Give a local .safetensors file or a "
                           "torch/timm checkpoint (.pth, .pt, .bin)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise AttnzooError(f"model.init_from: {str(path)!r} is not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors name what was refused
            raise AttnzooError(f"model.init_from: {str(path)!r} could not be read as a weights-only torch checkpoint "
                               f"({str(exc).splitlines()[0][:300]}). Save its state_dict() with torch.save, or "
                               "convert it to .safetensors") from None
    for key in ("state_dict", "model", "model_state", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AttnzooError(f"model.init_from: {str(path)!r} holds no state dict of tensors (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _grid_tokens(model: nn.Module, image_size: int) -> int:
    patch = patch_size_of(model)
    return (image_size // patch) ** 2 if patch else 0


def _resize_pos_embed(saved: torch.Tensor, target: torch.Tensor, grid_tokens: int) -> torch.Tensor | None:
    """`saved` resampled to `target`'s grid (timm's resample_abs_pos_embed, bicubic), the prefix
    tokens (class, registers) kept; None when the two do not differ only in a square grid."""
    prefix = target.shape[1] - grid_tokens
    old_grid = saved.shape[1] - prefix
    new_side, old_side = math.isqrt(grid_tokens), math.isqrt(max(old_grid, 0))
    if prefix < 0 or new_side ** 2 != grid_tokens or old_side ** 2 != old_grid or saved.shape[2] != target.shape[2]:
        return None
    _timm()
    from timm.layers import resample_abs_pos_embed

    resized = resample_abs_pos_embed(saved.float(), new_size=[new_side, new_side], old_size=[old_side, old_side],
                                     num_prefix_tokens=prefix)
    return resized.to(target.dtype)


def load_initial_weights(model: nn.Module, state: dict[str, torch.Tensor], *, image_size: int,
                         source: str = "checkpoint") -> dict:
    """Load `state` into `model` (the built-in ViT or a swapped timm model) before training.

    Position embeddings of another image size are resized; the classifier of another number of
    classes keeps the model's own initialisation; a variant's own parameters the checkpoint lacks
    keep theirs. Any other difference (another depth, width or patch size) is an error listing
    every one. Returns the report: what was loaded, resized, re-initialised and left unused."""
    target = model.state_dict()
    grid_tokens = _grid_tokens(model, image_size)
    loaded, resized, reinitialised, problems = {}, {}, {}, []
    for key, tensor in state.items():
        if key not in target:
            continue
        want = target[key]
        if tensor.shape == want.shape:
            loaded[key] = tensor.to(want.dtype)
        elif key.endswith("pos_embed") and (new := _resize_pos_embed(tensor, want, grid_tokens)) is not None:
            loaded[key] = new
            resized[key] = {"from": list(tensor.shape), "to": list(want.shape)}
        elif key.startswith(HEAD_PREFIXES):
            reinitialised[key] = {"checkpoint": list(tensor.shape), "model": list(want.shape)}
        else:
            problems.append(f"{key}: {list(tensor.shape)} in the checkpoint, {list(want.shape)} in the model")
    missing = [key for key in target if key not in state]
    kernel_own = [key for key in missing if ".attn.kernel." in key]
    missing = [key for key in missing if key not in kernel_own]
    if missing:
        problems.append(f"the checkpoint lacks {len(missing)} of the model's tensors: {_few(missing)}")
    if problems:
        raise AttnzooError(f"model.init_from: {source} does not fit the model ({'; '.join(problems)}). Its "
                           "architecture (depth, width, heads, patch size, qkv bias) must match the recipe's model; "
                           "only the image size and the number of classes may differ")
    model.load_state_dict(loaded, strict=False)
    return {"source": source, "loaded": sorted(k for k in loaded if k not in resized), "resized": resized,
            "reinitialised": reinitialised, "kept_initialisation": kernel_own,
            "unused": sorted(k for k in state if k not in target)}


def _few(keys: list[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def format_init_report(report: dict) -> str:
    """The report of :func:`load_initial_weights` in a few lines, as a run prints it."""
    lines = [f"initial weights from {report['source']}: {len(report['loaded']) + len(report['resized'])} tensors loaded"]
    for key, shapes in report["resized"].items():
        lines.append(f"  resized {key}: {shapes['from']} -> {shapes['to']} (another image size)")
    for key, shapes in report["reinitialised"].items():
        lines.append(f"  re-initialised {key}: {shapes['checkpoint']} in the checkpoint, {shapes['model']} "
                     "in the model (another number of classes)")
    if report["kept_initialisation"]:
        lines.append(f"  kept their initialisation (the variant's own, not in the checkpoint): "
                     f"{_few(report['kept_initialisation'])}")
    if report["unused"]:
        lines.append(f"  not used (the model has no such tensor): {_few(report['unused'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------- export to timm


def timm_vit_args(model_config: Any, num_classes: int) -> dict:
    """The keyword arguments of timm's VisionTransformer that build the built-in ViT's network
    (attention aside): the same parameter names and shapes, so its state dict loads as it is."""
    m = model_config
    return {"img_size": m.image_size, "patch_size": m.patch_size, "embed_dim": m.dim, "depth": m.depth,
            "num_heads": m.heads, "mlp_ratio": m.mlp_ratio, "qkv_bias": True, "class_token": True,
            "global_pool": "token", "num_classes": num_classes}


def to_timm_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A built-in ViT's (or swapped timm model's) state dict as timm's VisionTransformer names it,
    and the keys left out: a variant's own parameters (timm's Attention has no place for them).
    The built-in ViT already uses timm's names, so every other tensor is kept as it is."""
    kept = {k: v for k, v in state.items() if ".attn.kernel." not in k}
    return kept, sorted(k for k in state if k not in kept)
