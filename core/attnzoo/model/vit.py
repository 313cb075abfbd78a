"""A small Vision Transformer whose attention core is a plugin variant.

Parameter names follow timm's VisionTransformer (patch_embed.proj, cls_token, pos_embed,
blocks.N.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm, head), so
weights are easy to compare. The only addition is ``attn.kernel``: the variant, built by the
kernel factory the model is given (the model itself knows nothing of plugins).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attnzoo.contract.hookspecs import kernel_random_stream
from attnzoo.errors import AttnzooError, PluginError, Stopped


class Attention(nn.Module):
    """qkv projection -> heads -> variant kernel -> output projection."""

    def __init__(self, dim: int, heads: int, kernel: nn.Module, dropout: float = 0.0,
                 kernel_label: str = "the attention kernel"):
        super().__init__()
        self.heads = heads
        self.kernel_label = kernel_label  # who an error inside the kernel blames: "variant 'x' (plugin ...)"
        self.qkv = nn.Linear(dim, dim * 3)
        self.kernel = kernel
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    # Plain reshape/permute rather than einops: einops.rearrange costs about twice the host
    # time here, which counts when a CIFAR step is a few milliseconds of launches.
    def split_heads(self, x: torch.Tensor):
        """(B, N, C) -> q, k, v, each (B, H, N, d): views into one qkv projection."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads)  # (B, N, 3, H, d)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, H, N, d) -> 3 x (B, H, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.split_heads(x)
        try:
            out = self.kernel(q, k, v)  # (B, H, N, d)
        except (AttnzooError, Stopped, torch.cuda.OutOfMemoryError):
            raise  # attnzoo's own, or the machine's: not the variant's fault
        except Exception as exc:  # noqa: BLE001 - a variant is a plugin's code and may raise anything
            # Named here, where the culprit is known; the traceback stays in __cause__ (--debug).
            # torch.compile traces this try/except without a graph break.
            raise PluginError(
                f"{self.kernel_label} failed in forward(q, k, v) for q of shape {tuple(q.shape)} {q.dtype}: "
                f"{type(exc).__name__}: {exc}. The error is in the variant's code, not attnzoo's; "
                "`attnzoo check-plugin NAME` tests a variant, --debug shows the traceback"
            ) from exc
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, H, d) -> (B, N, H*d): heads merged
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, a residual branch is dropped for a whole image with probability
    `rate` and kept ones are scaled by 1 / (1 - rate) (timm's DropPath); the identity in evaluation."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, kernel: nn.Module,
                 kernel_label: str = "the attention kernel", drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, kernel, dropout, kernel_label)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        # No module at rate 0: the model of a recipe without stochastic depth is the same as before.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # (B, 3, H, W) -> (B, H*W/p^2, dim)
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, *, image_size: int, patch_size: int, num_classes: int, dim: int, depth: int,
                 heads: int, mlp_ratio: float, dropout: float, kernel: Callable[[int, int], nn.Module],
                 init: str = "trunc_normal", drop_path: float = 0.0):
        """`kernel` builds one fresh attention kernel per block as kernel(head_dim, num_heads): a
        registered variant with its options (attnzoo.contract.registry.KernelFactory), or any
        callable of that shape."""
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.pos_drop = nn.Dropout(dropout)
        label = getattr(kernel, "label", None) or f"attention kernel {getattr(kernel, '__qualname__', kernel)!r}"
        rates = drop_path_rates(drop_path, depth)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout, build_kernel(kernel, dim // heads, heads, label, i),
                                            label, drop_path=rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        # The ViT's own layers get timm's init; a variant's layers keep the init its author gave them.
        # init=torch_default: every layer keeps PyTorch's own initialisation.
        in_kernels = {id(m) for block in self.blocks for m in block.attn.kernel.modules()}
        for module in self.modules():
            if id(module) not in in_kernels and init == "trunc_normal":
                _init_weights(module)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.embed(images)))
        return self.head(self.head_drop(x[:, 0]))

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per block, the (B, heads, tokens, tokens) weights its variant applies."""
        maps, x = [], self.embed(images)
        for block in self.blocks:
            q, k, _ = block.attn.split_heads(block.norm1(x))
            maps.append(block.attn.kernel.attention_weights(q, k))
            x = block(x)
        return maps


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Each block's stochastic-depth rate: rising linearly from 0 in the first to `rate` in the last (timm's)."""
    return [rate * i / (depth - 1) if depth > 1 else rate for i in range(depth)]


def build_kernel(kernel: Callable[[int, int], nn.Module], head_dim: int, heads: int, label: str,
                 layer: int = 0) -> nn.Module:
    """One block's kernel; a factory that cannot build it at this size is named, with the size.

    It is built in a random stream of its own, seeded from the run's seed (torch.initial_seed(), which
    the run set with torch.manual_seed) and the layer (attnzoo.contract.hookspecs, "Randomness"): what a
    variant draws while it is built (diff's lambda vectors, performer's features) differs per layer and
    per run seed, and leaves the global stream as it was, so every variant's ViT starts from the same
    shared weights under one seed and a study's arms pair by seed."""
    try:
        with kernel_random_stream(torch.initial_seed(), layer):
            return kernel(head_dim, heads)
    except AttnzooError:
        raise
    except Exception as exc:  # noqa: BLE001 - a variant is a plugin's code and may raise anything
        raise PluginError(
            f"{label} could not build its kernel for head_dim={head_dim}, num_heads={heads} (model.dim / "
            f"model.heads): {type(exc).__name__}: {exc}. Choose a model size it supports; `attnzoo check-plugin "
            "NAME` shows the sizes a variant builds at"
        ) from exc


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW parameter groups. The ViT's matrices are decayed; biases, norms and pos_embed are
    not. A variant's own parameters (under ``attn.kernel``: temperatures, gains, norms) are
    never decayed unless the kernel names them in ``weight_decay_parameters()`` (see hookspecs).

    With `layer_decay` (fine-tuning), the groups are also split by depth, each with an ``lr_scale``
    the training loop multiplies its learning rate by (:func:`layer_lr_scales`)."""
    kernel_params, opted_in = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            prefix = f"{name}.kernel."
            own = {prefix + n for n, _ in module.kernel.named_parameters()}
            chosen = {prefix + n for n in getattr(module.kernel, "weight_decay_parameters", lambda: ())()}
            if not chosen <= own:
                raise PluginError(f"{type(module.kernel).__name__}.weight_decay_parameters() names "
                                 f"{sorted(chosen - own)}, which are not among its parameters {sorted(own)}")
            kernel_params |= own
            opted_in |= chosen
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name in kernel_params:
            wanted = name in opted_in
        else:
            wanted = p.ndim >= 2 and "pos_embed" not in name
        (decay if wanted else no_decay).append((name, p))
    if layer_decay is None:
        return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
                {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    depth = len(getattr(model, "blocks", ()))
    groups = {}
    for named, wd in ((decay, weight_decay), (no_decay, 0.0)):
        for name, p in named:
            layer = layer_id(name, depth)
            group = groups.setdefault((layer, wd), {"params": [], "weight_decay": wd, "layer": layer,
                                                    "lr_scale": layer_decay ** (depth + 1 - layer)})
            group["params"].append(p)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], -k[1]))]


EMBEDDING_NAMES = ("patch_embed.", "cls_token", "pos_embed", "reg_token", "dist_token")


def layer_id(name: str, depth: int) -> int:
    """A parameter's depth for layer-wise LR decay, in the built-in ViT and timm's alike (the names are
    timm's): 0 for the embeddings, i + 1 for block i, depth + 1 for the rest (final norm, head)."""
    if name.startswith(EMBEDDING_NAMES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
