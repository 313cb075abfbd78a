"""How each variant spreads attention: entropy, distance and class-token mass per layer and head,
plus last-layer class-token attention maps, on a fixed batch of test images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attnzoo.run.metrics import cls_attention_mass, mean_attention_distance, normalized_entropy
from attnzoo.run.rundir import RunDir, unique_temporary, write_text

ANALYSIS_IMAGES = 64  # the first test images: the same for every variant and seed
MAP_IMAGES = 8


@torch.no_grad()
def attention_statistics(model, images: torch.Tensor, grid: int, map_rows: list[int] | None = None) -> dict:
    """Statistics over all `images`; class-token maps for the rows `map_rows` (default: the first few)."""
    was_training = model.training
    model.eval()
    maps = model.attention_maps(images)  # per layer (B, H, N, N)
    model.train(was_training)
    stats = {"entropy": [], "distance": [], "cls_mass": []}
    for w in maps:
        stats["entropy"].append(normalized_entropy(w).mean(dim=(0, 2)).tolist())  # per head
        stats["distance"].append(mean_attention_distance(w, grid).mean(dim=0).tolist())
        stats["cls_mass"].append(cls_attention_mass(w).mean(dim=0).tolist())
    rows = map_rows if map_rows is not None else list(range(min(MAP_IMAGES, len(images))))
    last = maps[-1][rows, :, 0, 1:]  # class-token query over patches, (B, H, P)
    last = last.float().abs().mean(dim=1)  # |weights| so signed variants show magnitude
    stats["cls_maps"] = (last / last.amax(dim=1, keepdim=True).clamp_min(1e-12)).reshape(-1, grid, grid).tolist()
    stats["note"] = ("statistics use |w| / sum |w| over keys as the attention distribution; entropy is divided "
                     "by log(tokens) so 1 means uniform and 0 one-hot")
    return stats


def spread(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total): test sets are often sorted by class."""
    count = min(count, total)
    return [i * total // count for i in range(count)]


def write_attention_analysis(model, loader, run_dir: Path, recipe) -> None:
    """attention.json, and the test images its maps were drawn on (attention_images.safetensors),
    so a report draws the maps from the run's own files, without the dataset."""
    indices = spread(loader.num_samples, ANALYSIS_IMAGES)
    if not indices:
        return
    images = loader.images_at(indices)
    map_rows = spread(len(indices), MAP_IMAGES)  # the maps span the whole test set too
    grid = recipe.model.image_size // recipe.model.patch_size
    stats = attention_statistics(model, images, grid, map_rows)
    stats["image_indices"] = [indices[r] for r in map_rows]
    run = RunDir(run_dir)
    write_map_images(run.attention_images, loader.pixels_at(stats["image_indices"]), stats["image_indices"])
    write_text(run.attention, json.dumps(stats))


def write_map_images(path: Path, pixels: torch.Tensor, indices: list[int]) -> None:
    """The uint8 test images (M, 3, H, W) under the attention maps, with their test-set indices."""
    tmp = unique_temporary(path)
    save_file({"images": pixels.cpu().contiguous(), "indices": torch.tensor(indices, dtype=torch.int64)}, str(tmp))
    os.replace(tmp, path)


def read_map_images(path: Path) -> tuple[torch.Tensor, list[int]] | None:
    """What :func:`write_map_images` wrote; None when the file is absent (runs made before it was
    written) or unreadable: the maps are then drawn without their images."""
    try:
        tensors = load_file(str(path))
        return tensors["images"], tensors["indices"].tolist()
    except (OSError, KeyError, ValueError, RuntimeError):
        return None


def attention_analysis_or_warning(model, loader, run_dir: Path, recipe) -> bool:
    """write_attention_analysis for a finished run: a failure (the variant's attention_weights
    raising, say) is reported and leaves the run's other files as they are."""
    try:
        write_attention_analysis(model, loader, run_dir, recipe)
        return True
    except Exception as exc:  # plugin code may raise anything; the run's results stand
        print(f"attnzoo: warning: the attention analysis of variant {recipe.attention.name!r} failed "
              f"({type(exc).__name__}: {exc}); the test metrics are saved, attention.json is not written "
              "and the report leaves this run out of its attention figures.", file=sys.stderr)
        return False
