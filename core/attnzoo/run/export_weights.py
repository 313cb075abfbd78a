"""``attnzoo export RUN --timm``: a finished run's weights as a state dict timm's VisionTransformer loads.

The built-in ViT already names its parameters as timm does, so the export keeps every tensor as
it is, leaves out a variant's own parameters (timm's Attention has no place for them; the
export says which) and writes beside the weights the arguments that build the timm model:

    model = timm.models.vision_transformer.VisionTransformer(**config["model_args"])
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

The timm model then computes softmax attention; a run of another variant loads into a timm
model whose attention is swapped back (``attnzoo.swap_attention``), or into attnzoo again through
``model.init_from``.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.model.timm_bridge import timm_vit_args, to_timm_state_dict
from attnzoo.run.checkpoint import load_weights
from attnzoo.run.rundir import RunDir, write_text

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def export_timm(run_dir: Path, dest: Path | None = None) -> dict:
    """Write `dest` (default RUN/timm/) with model.safetensors and config.json; returns the config.
    A folder that holds an export already is never overwritten."""
    run = RunDir(run_dir)
    data = run.read_recipe()
    if data is None:
        raise AttnzooError(f"{str(run_dir)!r} holds no run (no recipe.yaml). Give the folder of a finished run.")
    if not run.final_weights.is_file():
        raise AttnzooError(f"{str(run_dir)!r} has no {run.final_weights.name} yet: the run has not finished. "
                           f"Finish it first (attnzoo train RECIPE --resume).")
    dest = Path(dest) if dest is not None else run.path / "timm"
    taken = [p.name for p in (dest / WEIGHTS, dest / CONFIG) if p.exists()]
    if taken:
        raise AttnzooError(f"{str(dest)!r} holds {', '.join(taken)} already; nothing was overwritten. Give another "
                           "folder with --out, or delete that one if you no longer need it.")
    recipe = recipes.from_dict(data, source=f"{run.recipe}", check_plugins=False)
    state, left_out = to_timm_state_dict(load_weights(run.final_weights))
    config = _config(recipe, num_classes=state["head.weight"].shape[0])
    config.update(variant=recipe.attention.name, left_out=left_out)
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest / WEIGHTS))
    write_text(dest / CONFIG, json.dumps(config, indent=1))
    config["dest"] = str(dest)
    return config


def _config(recipe: recipes.Recipe, num_classes: int) -> dict:
    m = recipe.model
    if m.arch == "attnzoo":
        return {"architecture": "timm.models.vision_transformer.VisionTransformer",
                "model_args": timm_vit_args(m, num_classes)}
    name = m.arch.removeprefix(recipes.TIMM_PREFIX)
    return {"architecture": f"timm.create_model({name.partition('.')[0]!r}, **model_args)",
            "model_args": {"img_size": m.image_size, "num_classes": num_classes}}
