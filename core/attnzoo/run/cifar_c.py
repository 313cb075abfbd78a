"""Accuracy of a run's best checkpoint on the released CIFAR-10-C / CIFAR-100-C images, written
to cifar_c.json (the schema of corruptions.json, with the release's corruptions).

`attnzoo eval RUN --corruptions --cifar-c DIR`. Every image of every corruption and severity of
the release is classified exactly as in training (the run's normalisation and Forward.predict),
so the numbers compare with published ones; the batched on-device corruptions of
corruptions.json stay the default and are left as they are.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from attnzoo.data import cifar_c
from attnzoo.data.datasets import ImageSet
from attnzoo.data.loader import DeviceLoader
from attnzoo.errors import AttnzooError
from attnzoo.run import assembly, rundir
from attnzoo.run.metrics import topk_accuracy

CIFAR_C = "cifar_c.json"  # in the run folder, beside corruptions.json


def _at_size(s: ImageSet, size: int) -> ImageSet:
    """The release's 32 x 32 images at the run's image size, resized as the run's CIFAR images were."""
    if s.images.shape[-1] == size:
        return s
    images = torch.nn.functional.interpolate(s.images.float(), size=(size, size), mode="bilinear",
                                             antialias=True, align_corners=False)
    return ImageSet(images.round().clamp(0, 255).to(torch.uint8), s.labels, s.classes)


def _scores(run, data: ImageSet) -> dict:
    """top-1, top-5 and loss of the run on `data`, every image once."""
    recipe, acc = run.recipe, run.accelerator
    loader = DeviceLoader(data, recipe.data, run.splits.mean, run.splits.std, batching=assembly.batching(recipe, acc),
                          device=acc.device, seed=recipe.train.seed, channels_last=recipe.train.channels_last)
    logits, labels = run.forward.predict(loader, len(run.splits.classes))
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item(), "samples": len(labels)}


def evaluate_cifar_c(run_dir: Path, root: Path, *, accelerator=None, registry=None) -> dict:
    """Clean (the run's test split) and released-corruption accuracy of the best weights -> cifar_c.json."""
    from attnzoo.run.evaluate import load_best_run
    from attnzoo.run.robustness import accuracy

    run_dir, root = Path(run_dir), Path(root)
    names = cifar_c.corruption_names(root)  # a wrong folder is an error before the run is loaded
    run = load_best_run(run_dir, accelerator=accelerator, registry=registry, then="classify CIFAR-C with it")
    if run.recipe.data.dataset not in ("cifar10", "cifar100", "imagefolder"):
        raise AttnzooError(f"{str(run_dir)!r} was trained on {run.recipe.data.dataset!r}; the CIFAR-C arrays are "
                           "CIFAR's test images, for runs trained on CIFAR-10 or CIFAR-100.")
    started = time.perf_counter()
    clean = accuracy(run, None, 0, run.recipe.train.seed)
    results, samples = {}, None
    for name in names:
        rows = [_scores(run, _at_size(cifar_c.load_severity(root, name, s, run.splits.classes),
                                      run.recipe.model.image_size)) for s in cifar_c.SEVERITIES]
        samples = rows[0]["samples"]
        results[name] = {key: [row[key] for row in rows] for key in ("top1", "top5", "loss")}
    mean_top1 = statistics.fmean(v for r in results.values() for v in r["top1"])
    record = {
        "weights": rundir.BEST_WEIGHTS, "variant": run.recipe.attention.name, "source": str(root),
        "samples": samples, "clean_samples": clean["samples"], "severities": list(cifar_c.SEVERITIES),
        "clean_top1": clean["top1"], "clean_top5": clean["top5"], "mean_corruption_top1": mean_top1,
        "relative_corruption_top1": mean_top1 / clean["top1"] if clean["top1"] > 0 else None,
        "corruptions": results, "device": str(run.accelerator.device), "world_size": run.accelerator.num_processes,
        "seconds": time.perf_counter() - started,
    }
    if run.accelerator.is_main_process:
        rundir.write_text(run_dir / CIFAR_C, json.dumps(record, indent=1))
        print(f"{run_dir}: {record['variant']} on {samples} images per corruption and severity of {root}: mean top1 "
              f"{mean_top1:.4f} (clean {clean['top1']:.4f}) -> {run_dir / CIFAR_C}", flush=True)
    return record
