"""Training-throughput benchmark: every variant, the same variant through its explicit path
(attention_weights @ values: the naive eager reference), and timm's VisionTransformer of the
same shape, measured in one process so ratios are fair."""

from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.config.recipe import Recipe
from attnzoo.contract.registry import KernelFactory, installed_or
from attnzoo.errors import AttnzooError
from attnzoo.model import compile as compiling
from attnzoo.run.assembly import build_model

# The width of every benchmarked model's head, whatever the recipe's dataset: the head is a
# rounding error of a step's cost, one width keeps tables of different datasets comparable,
# and the fixed-batch runners need no data on disk to know how many classes it has.
BENCH_CLASSES = 100

# ---------------------------------------------------------------- measurement


def build(impl: str, kernel: KernelFactory, recipe: Recipe, image_size: int):
    """The model `impl` measures at `image_size`: attnzoo's ViT built as training builds it
    (its explicit path for "naive"), or timm's VisionTransformer of the same shape."""
    m = recipe.model
    if impl == "timm":
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        return TimmViT(img_size=image_size, patch_size=m.patch_size, num_classes=BENCH_CLASSES, embed_dim=m.dim,
                       depth=m.depth, num_heads=m.heads, mlp_ratio=m.mlp_ratio, qkv_bias=True,
                       drop_rate=m.dropout, global_pool="token")
    sized = copy.deepcopy(recipe)  # a recipe is plain data: the copy differs in its image size only
    sized.model.image_size = image_size
    return build_model(sized, BENCH_CLASSES, kernel.explicit() if impl == "naive" else kernel)


def autocast_for(device: torch.device, precision: str):
    if precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Runner:
    """One model's training step on a fixed random batch."""

    def __init__(self, model: nn.Module, device, batch: int, image_size: int, precision: str, compile: str):
        self.model, self.device, self.precision = model.to(device).train(), device, precision
        self.compile = compiling.effective_mode(compile, device)
        self.forward = compiling.compile_model(self.model, compile, device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        self.x = torch.randn(batch, 3, image_size, image_size, device=device)
        self.y = torch.randint(0, BENCH_CLASSES, (batch,), device=device)
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.batch = batch
        self.peak_mib = None
        self.first_step_seconds = None

    def step(self):
        compiling.step_begins(self.compile)
        with autocast_for(self.device, self.precision):
            loss = F.cross_entropy(self.forward(self.x).float(), self.y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> float:
        """Seconds per step over `steps` steps; also records peak memory on CUDA."""
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        seconds = (time.perf_counter() - start) / steps
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.peak_mib = max(self.peak_mib or 0.0, peak)
        return seconds


class DataRunner(Runner):
    """The same step, fed by the real training pipeline (device-resident data, batched
    augmentation) instead of one fixed batch: its ratio to the plain runner is the data cost."""

    def __init__(self, model, device, recipe: Recipe, precision: str, compile: str):
        from attnzoo.data.loader import Batching, DeviceLoader, load_splits

        b = recipe.bench
        splits = load_splits(recipe)
        loader = DeviceLoader(splits.train, recipe.data, splits.mean, splits.std, device=device,
                              batching=Batching(b.batch_size), seed=0)
        super().__init__(model, device, b.batch_size, recipe.model.image_size, precision, compile)
        self.batches = itertools.chain.from_iterable(loader.train_batches(epoch) for epoch in itertools.count())

    def step(self):
        _, self.x, self.y = next(self.batches)
        self.y = self.y % BENCH_CLASSES
        super().step()


def measure_all(runners: list[Runner], warmup: int, steps: int, rounds: int) -> list[dict]:
    """Warm every runner up, then time them in interleaved rounds and keep each one's median,
    so a slow moment of a shared machine does not land on one implementation only."""
    for runner in runners:
        runner.first_step_seconds = runner.timed(1)  # compilation and graph capture happen here
        for _ in range(warmup):
            runner.step()
    per_round = max(steps // rounds, 1)
    times = [[] for _ in runners]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            times[i].append(runner.timed(per_round))
    out = []
    for runner, t in zip(runners, times):
        seconds = sorted(t)[len(t) // 2]
        out.append({"step_ms": seconds * 1e3, "images_per_sec": runner.batch / seconds,
                    "peak_memory_mib": runner.peak_mib,
                    # compile (and warm-up) time, apart from the steady state: first step minus a steady one
                    "compile_seconds": max(runner.first_step_seconds - seconds, 0.0)})
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan(recipe: Recipe) -> list[tuple[str, str]]:
    """(impl, variant) pairs to measure at each image size."""
    b = recipe.bench
    pairs = [("attnzoo", v) for v in b.variants]
    if b.compare_naive:
        pairs += [("naive", v) for v in b.variants]
    if b.compare_timm:
        try:
            import timm  # noqa: F401
            pairs.append(("timm", "softmax"))
        except ImportError:
            print("timm is not installed: skipping the timm comparison (pip install timm)", file=sys.stderr)
    return pairs


class RowFile:
    """`attnzoo bench --out FILE`: every row as one JSON line, flushed and fsynced as soon as it is
    measured, so a bench cut by a time limit or a kill keeps every row it finished. The rows of
    one image size are finished together (they are timed in interleaved rounds)."""

    def __init__(self, path: Path):
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise AttnzooError(f"--out {str(path)!r} exists and holds rows already; nothing is written over a file "
                               "that holds results. Move it away or name another file.")
        if not path.parent.is_dir():
            raise AttnzooError(f"--out {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it "
                               "first or name a file in an existing folder.")
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # created now: a bad path fails before any measurement

    def write(self, row: dict) -> None:
        # One write per complete line: a kill leaves whole rows and, at worst, one torn last line.
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a `--out` file; a torn last line (a kill mid-write) is left out."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def run_bench(recipe: Recipe, as_json: bool = False, registry=None, out: Path | None = None) -> list[dict]:
    """Measure the recipe's bench section; its variants come from `registry` (None: the installed plugins).
    `out`: a file that receives each row as a JSON line when it is measured (RowFile)."""
    b, registry = recipe.bench, installed_or(registry)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = recipe.train.mixed_precision if device.type == "cuda" else "no"
    torch.set_float32_matmul_precision(recipe.train.matmul_precision)
    # Unknown variants or bad options fail here, before any measurement.
    kernels = {v: registry.kernel(v, recipe.attention.options if v == recipe.attention.name else {})
               for v in [*b.variants, "softmax"]}
    rows_out = RowFile(out) if out is not None else None
    results = []
    try:
        for size in b.image_sizes:
            results += measure_size(recipe, size, kernels, device, precision, as_json, rows_out)
    finally:
        if rows_out is not None:
            rows_out.close()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    if as_json:
        print(json.dumps({"device": device_name, "torch": torch.__version__, "results": results}, indent=1))
    else:
        print(format_table(results, device_name, precision_note(precision, recipe.train.mixed_precision, device)))
    return results


def measure_size(recipe: Recipe, size: int, kernels: dict, device: torch.device, precision: str, as_json: bool,
                 rows_out: RowFile | None) -> list[dict]:
    """The rows of one image size, with their ratios (all within the size), each written to
    `rows_out` as soon as the size's rounds end."""
    b = recipe.bench
    results = []
    compiling.reset()  # each size compiles from a clean slate, with static shapes
    tokens = (size // recipe.model.patch_size) ** 2 + 1
    pairs = plan(recipe)
    runners = []
    for impl, variant in pairs:
        torch.manual_seed(0)
        model = build(impl, kernels[variant], recipe, size)
        runners.append(Runner(model, device, b.batch_size, size, precision, recipe.train.compile))
    if b.data_pipeline and size == recipe.model.image_size:
        torch.manual_seed(0)
        model = build("attnzoo", kernels["softmax"], recipe, size)
        runners.append(DataRunner(model, device, recipe, precision, recipe.train.compile))
        pairs = pairs + [("attnzoo+data", "softmax")]
    for (impl, variant), measured in zip(pairs, measure_all(runners, b.warmup_steps, b.steps, b.rounds)):
        row = {"impl": impl, "variant": variant, "image_size": size, "tokens": tokens,
               "batch_size": b.batch_size, "precision": precision,
               "compile": compiling.effective_mode(recipe.train.compile, device), **measured}
        results.append(row)
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    add_ratios(results)  # every reference row of a ratio has the same image size
    for row in results:
        if rows_out is not None:
            rows_out.write(row)
        if not as_json:
            print(f"  {row['impl']:<8} {row['variant']:<14} {size:>4}px {row['tokens']:>4} tokens  "
                  f"{row['images_per_sec']:9.1f} img/s", flush=True)
    return results


def add_ratios(results: list[dict]) -> None:
    """Ratios of images/s measured in this run: vs attnzoo softmax, vs timm, fast vs naive."""
    def find(impl, variant, size):
        return next((r for r in results if (r["impl"], r["variant"], r["image_size"]) == (impl, variant, size)), None)

    for r in results:
        size = r["image_size"]
        if r["impl"] == "attnzoo+data":  # pipeline cost: vs the same model on one fixed batch
            ref = find("attnzoo", "softmax", size)
            r.update(vs_softmax=r["images_per_sec"] / ref["images_per_sec"] if ref else None, vs_timm=None,
                     vs_naive=None)
            continue
        for key, ref in (("vs_softmax", find("attnzoo", "softmax", size)), ("vs_timm", find("timm", "softmax", size)),
                         ("vs_naive", find("naive", r["variant"], size) if r["impl"] == "attnzoo" else None)):
            r[key] = r["images_per_sec"] / ref["images_per_sec"] if ref else None


def precision_note(ran: str, asked: str, device: torch.device) -> str:
    """The precision the table was measured in, and why when it is not the recipe's."""
    name = {"no": "fp32"}.get(ran, ran)
    if ran != asked:
        name += f" (the recipe's {asked} runs in fp32 on {device.type})"
    return name


def format_table(results: list[dict], device: str, precision: str | None = None) -> str:
    """`precision`: what the rows ran in, as precision_note words it (default: the rows' own field)."""
    head = ("| impl | variant | image | tokens | batch | img/s | step ms | peak MiB | compile s | vs attnzoo softmax "
            "| vs timm | fast vs naive |")
    settings = ", ".join(sorted({f"precision {precision or r['precision']}, compile {r['compile']}" for r in results}))
    lines = [f"device: {device}, torch {torch.__version__}, {settings}", "", head, "|" + "---|" * 12]
    fmt = lambda x, spec, unit="": "-" if x is None else format(x, spec) + unit  # noqa: E731
    for r in results:
        lines.append(f"| {r['impl']} | {r['variant']} | {r['image_size']} | {r['tokens']} | {r['batch_size']} | "
                     f"{r['images_per_sec']:.0f} | {r['step_ms']:.1f} | {fmt(r['peak_memory_mib'], '.0f')} | "
                     f"{fmt(r.get('compile_seconds'), '.1f')} | "
                     f"{fmt(r['vs_softmax'], '.2f', 'x')} | {fmt(r['vs_timm'], '.2f', 'x')} | {fmt(r['vs_naive'], '.2f', 'x')} |")
    return "\n".join(lines)
