"""The `attnzoo` command line. User errors print one paragraph and exit with status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

from attnzoo.config import recipe as recipes
from attnzoo.errors import EXIT_STOPPED, AttnzooError, Stopped
from attnzoo.version import __version__


def _registry(args):
    """The installed plugins' registry, strict (any plugin failure is fatal) under --strict-plugins."""
    from attnzoo.contract import registry  # looked up when called, so a test can stand in for it

    return registry.default_registry(strict=True) if args.strict_plugins else registry.default_registry()


def _load_recipe(args) -> recipes.Recipe:
    path = recipes.resolve_path(args.recipe)
    recipe = recipes.load(path, args.overrides, name=args.recipe, registry=_registry(args))
    _check_required_plugins(recipe)
    return recipe


def _check_required_plugins(recipe: recipes.Recipe) -> None:
    from attnzoo.contract.requirements import check_requirements

    check_requirements(recipe.requires_plugins)


def cmd_variants(args) -> int:
    registry = _registry(args)
    variants = sorted(registry.variants.values(), key=lambda v: v.name)
    if args.json:
        print(json.dumps([{
            "name": v.name, "description": v.description, "plugin": v.plugin, "distribution": v.distribution,
            "version": v.version, "fast_path": v.fast_path, "has_parameters": v.has_parameters,
            "options": [{"name": o.name, "type": o.type.__name__, "default": o.default,
                         "choices": list(o.choices) if o.choices else None, "help": o.help} for o in v.options],
        } for v in variants], indent=1))
        return 0
    for v in variants:
        fast = "fast path" if v.fast_path else "explicit weights"
        print(f"{v.name:<16} {v.description}")
        print(f"{'':<16} from {v.distribution} {v.version} (plugin {v.plugin!r}), {fast}")
        for o in v.options:
            allowed = f" one of {', '.join(map(str, o.choices))}" if o.choices else ""
            print(f"{'':<18}attention.{o.name}: {o.type.__name__} = {o.default!r}{allowed}  {o.help}")
    return 0


def cmd_plugins(args) -> int:
    registry = _registry(args)
    if args.json:
        print(json.dumps([p.as_dict() for p in registry.plugins], indent=1))
        return 0
    for p in registry.plugins:
        line = f"{p.name:<16} {p.distribution} {p.version:<10} {p.status:<9} {', '.join(p.variants)}"
        print(line + (f"\n{'':<16} error: {p.error}" if p.error else ""))
    return 0


def cmd_ls(args) -> int:
    for name, path in recipes.bundled_recipes().items():
        data = recipes.read_yaml(path)
        print(f"{name:<24} {data.get('description', '')}")
    return 0


def cmd_cp(args) -> int:
    bundled = recipes.bundled_recipes()
    if args.name not in bundled:
        from attnzoo.errors import did_you_mean
        raise AttnzooError(f"no bundled recipe {args.name!r}{did_you_mean(args.name, bundled)}. "
                           f"Available: {', '.join(bundled)}")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / bundled[args.name].name
    if dest.exists() and not args.force:
        raise AttnzooError(f"{str(dest)!r} already exists; pick another name or pass --force to overwrite it.")
    shutil.copyfile(bundled[args.name], dest)
    print(f"copied {args.name} to {dest}")
    return 0


def cmd_validate(args) -> int:
    recipe = _load_recipe(args)
    where = f"run directory {recipe.run_dir}"
    if recipe.variants or recipe.seeds or recipe.grid:  # a study: its arms and grid points are checked too
        from attnzoo.study.plan import plan_runs, power_line

        runs = plan_runs(recipe, _registry(args))
        where = (f"study directory {recipe.run_dir}, {len(runs)} runs "
                 f"({len({r.label for r in runs})} arm(s) x {len({r.seed for r in runs})} seed(s))")
        power = power_line(recipe, runs)  # what its seeds can detect, before any is trained
        where += f"\n# {power}" if power else ""
        if recipe.tune:  # the trials are planned (and so checked) as a study of their own
            from attnzoo.study.plan import plan_trials
            from attnzoo.study.tune import plan_line

            where += f"\n# {plan_line(recipe, len(plan_trials(recipe)[1]))}"
    print(recipes.dump(recipe), end="")
    print(f"# valid: {args.recipe} -> {where}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from attnzoo.run.rundir import Resume
    from attnzoo.run.trainer import train

    recipe = _load_recipe(args)
    if isinstance(args.resume, str):
        resume = Resume.at(args.resume)
    else:
        resume = Resume.LATEST if args.resume else Resume.AUTO if args.auto_resume else Resume.NO
    # The run is claimed before anything looks at or changes it (a resume may rewrite its recipe).
    with _claim_run(recipe.run_dir) as lock:
        if resume != Resume.NO:
            from attnzoo.run.extend import prepare_resume

            if not prepare_resume(recipe):
                return 0  # finished, and nothing asks for more: said so, nothing touched
        train(recipe, resume=resume, lock=lock)
    return 0


def _claim_run(run_dir: Path):
    """The run lock of a single-process run; a run of several processes is locked by its main process."""
    import contextlib

    from attnzoo.run.lock import acquire

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return contextlib.nullcontext()
    return acquire(run_dir)


def cmd_study(args) -> int:
    from attnzoo.study.plan import run_study

    from attnzoo.study.plan import parse_shard

    # The SLURM flags are the recipe's slurm.* keys, given on the command line: validated with the recipe.
    args.overrides = [*args.overrides, *(f"slurm.{key}={getattr(args, key)}" for key in SLURM_FLAGS
                                          if getattr(args, key) is not None)]
    recipe = _load_recipe(args)
    if args.status:  # what every run is doing: read from the folders, nothing trained, no lock taken
        from attnzoo.study.slurm import status_lines

        print("\n".join(status_lines(recipe)))
        return 0
    if args.launcher == "slurm":
        if args.workers > 1 or args.shard or args.worker:
            raise AttnzooError("--launcher slurm gives every run its own array task; leave out --workers, --shard "
                               "(SLURM spreads the runs) and run it from the cluster's login node.")
        from attnzoo.study.slurm import submit_study
        from attnzoo.study.tune import read_choice

        if recipe.tune and read_choice(recipe) is None:
            raise AttnzooError("tune: every arm chooses its values from its trials before its runs can be "
                               "submitted. Train the trials first: run the same command with --tune-only in place "
                               "of --launcher slurm (add --workers N or --shard K/N as you like), then submit again.")
        submit_study(recipe, extend=args.extend, strict_plugins=args.strict_plugins)
        return 0
    shard = parse_shard(args.shard) if args.shard else None
    if args.tune_only and not recipe.tune:
        raise AttnzooError("--tune-only: the recipe has no tune: section, so there is nothing to tune. Add one, "
                           "e.g. tune: {optim.lr: [3e-4, 1e-3, 3e-3], seeds: 1}, or leave out --tune-only.")
    if args.workers < 1:
        raise AttnzooError(f"--workers {args.workers}: give a number of worker processes of 1 or more.")
    if args.worker:  # one of the processes of --workers N: the threads its parent gave it
        import torch

        torch.set_num_threads(int(os.environ.get("ATTNZOO_WORKER_THREADS", torch.get_num_threads())))
    if args.workers > 1:
        from attnzoo.study.workers import run_study_with_workers

        run_study_with_workers(recipe, args.workers, extend=args.extend, shard=shard,
                               strict_plugins=args.strict_plugins, tune_only=args.tune_only)
        return 0
    only = [name for name in args.runs.split(",") if name] if args.runs else None
    run_study(recipe, extend=args.extend, shard=shard, worker=args.worker, only=only, tune_only=args.tune_only)
    return 0


# `attnzoo study --launcher slurm` flags, each the recipe key slurm.<flag> (config.recipe.SlurmConfig).
SLURM_FLAGS = ("partition", "gpus_per_run", "cpus_per_task", "mem_gb", "time_minutes", "account", "qos",
               "array_parallelism", "runs_per_task")


def cmd_report(args) -> int:
    from attnzoo.study.report import build_report

    build_report(Path(args.study_dir))
    return 0


# What `attnzoo eval` can do, in the order it does them; each is one flag and one function.
EVAL_CHECKS = ("test", "corruptions", "attack", "cost")


def eval_checks(args) -> list[str]:
    """The checks `attnzoo eval` was asked for; no flag at all asks for --test."""
    if args.seed is not None and not (args.corruptions or args.attack):
        raise AttnzooError("--seed is the seed of the corruption noise and does nothing without --corruptions. "
                           f"Add --corruptions: attnzoo eval {shlex.quote(args.run_dir)} --corruptions --seed {args.seed}")
    if args.cifar_c is not None and not args.corruptions:
        raise AttnzooError("--cifar-c reads the released corruption arrays for --corruptions and does nothing without "
                           f"it. Add --corruptions: attnzoo eval {shlex.quote(args.run_dir)} --corruptions "
                           f"--cifar-c {shlex.quote(args.cifar_c)}")
    if args.eps is not None and not args.attack:
        raise AttnzooError("--eps gives the budgets of the adversarial attacks and does nothing without --attack. "
                           f"Add --attack: attnzoo eval {shlex.quote(args.run_dir)} --attack --eps {' '.join(map(str, args.eps))}")
    return [check for check in EVAL_CHECKS if getattr(args, check)] or ["test"]


def cmd_eval(args) -> int:
    from attnzoo.run.attacks import evaluate_attacks
    from attnzoo.run.cost import write_finished_run_cost
    from attnzoo.run.evaluate import evaluate_run
    from attnzoo.run.robustness import evaluate_corruptions

    run_dir, registry, checks = Path(args.run_dir), _registry(args), eval_checks(args)
    if "test" not in checks:  # say so: a bare `eval RUN` re-evaluates the test metrics
        print(f"attnzoo eval: {' and '.join('--' + c for c in checks)} only; the test metrics are not "
              "re-evaluated (add --test for that too)", file=sys.stderr)
    if "test" in checks:
        evaluate_run(run_dir, registry=registry)
    if "corruptions" in checks and args.cifar_c is not None:
        from attnzoo.run.cifar_c import evaluate_cifar_c
        evaluate_cifar_c(run_dir, Path(args.cifar_c), registry=registry)
    elif "corruptions" in checks:
        evaluate_corruptions(run_dir, seed=args.seed, registry=registry)
    if "attack" in checks:
        evaluate_attacks(run_dir, settings=attack_settings(args), registry=registry)
    if "cost" in checks:
        write_finished_run_cost(run_dir, registry=registry)
    return 0


def attack_settings(args):
    """--eps and --seed for the attacks (default: 1 2 4 8, and the run's seed)."""
    from attnzoo.run import attacks

    return attacks.AttackSettings(epsilons_255=tuple(args.eps or attacks.DEFAULT_EPSILONS_255), seed=args.seed)


def cmd_bench(args) -> int:
    from attnzoo.run.bench import run_bench

    # bench's recipe is optional: its first word names one unless it is already an override.
    words = list(args.words)
    name = words.pop(0) if words and not is_override(words[0]) else "bench"
    recipe = recipes.load(recipes.resolve_path(name), words, name=name, registry=_registry(args))
    rows_file = {"out": Path(args.out)} if args.out else {}  # each row on disk as it is measured
    run_bench(recipe, as_json=args.json, registry=_registry(args), **rows_file)
    return 0


def cmd_export_cifar10(args) -> int:
    from attnzoo.data.export import export_cifar10

    counts = export_cifar10(Path(args.dest), Path(args.cifar_root), download=not args.no_download)
    print(f"wrote {counts['train']:,} train and {counts['test']:,} test JPEGs to {args.dest}. Train on them with: "
          f"attnzoo train tiny data.dataset=imagefolder data.root={shlex.quote(args.dest)}")
    return 0


def cmd_export(args) -> int:
    from attnzoo.run.export_weights import export_timm

    if not args.timm:
        raise AttnzooError("attnzoo export: say which format to write; the one there is: --timm "
                           f"(attnzoo export {shlex.quote(args.run_dir)} --timm)")
    config = export_timm(Path(args.run_dir), Path(args.out) if args.out else None)
    left_out = f"; left out (the variant's own parameters): {', '.join(config['left_out'])}" if config["left_out"] else ""
    print(f"wrote timm weights to {config['dest']}/model.safetensors and the model's arguments to "
          f"{config['dest']}/config.json{left_out}")
    return 0


def cmd_check_plugin(args) -> int:
    from attnzoo.contract.kit import SIZES, check_variant

    registry = _registry(args)
    failed = args.name not in registry.variants and args.name in registry.rejected
    if failed:  # still run the kit: its report shows what is wrong beyond the first error
        print(f"variant {args.name!r} failed to load: {registry.rejected[args.name][1]}\n"
              "The conformance kit runs on it anyway:")
    sizes = sorted(set(SIZES) | recipe_head_sizes())
    report = check_variant(args.name, registry=registry, sizes=tuple(sizes))
    print(report.summary())
    return 0 if report.ok and not failed else 1


def recipe_head_sizes() -> set[tuple[int, int]]:
    """Every (head_dim, num_heads) the bundled recipes build, grids included: a variant that
    passes the kit must train with each of them."""
    sizes = set()
    for path in recipes.bundled_recipes().values():
        data = recipes.read_yaml(path)
        model, grid = data.get("model") or {}, data.get("grid") or {}
        for dim in grid.get("model.dim", [model.get("dim")]):
            for heads in grid.get("model.heads", [model.get("heads")]):
                if isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads == 0:
                    sizes.add((dim // heads, heads))
    return sizes


def cmd_cache(args) -> int:
    from attnzoo.data import cache

    if args.action == "clear":
        files, size = cache.clear()
        print(f"removed {files} cached dataset(s), {size / 1e6:,.1f} MB, from {cache.cache_dir()}")
        return 0
    files, size = cache.usage()
    print(f"{cache.cache_dir()}: {files} cached dataset(s), {size / 1e6:,.1f} MB "
          f"(limit {cache.max_bytes() / 1e9:g} GB: ATTNZOO_CACHE_MAX_GB; move it with ATTNZOO_CACHE_DIR)")
    return 0


def cmd_new_plugin(args) -> int:
    from attnzoo.contract.template import write_plugin

    path = write_plugin(args.name, Path(args.dest or "."))
    print(f"wrote plugin package {path}. Next: pip install -e {path} && attnzoo variants")
    return 0


EXIT_STATUSES = (f"exit status: 0 done; 2 a user error (one message, no traceback); {EXIT_STOPPED} a run stopped "
                 "by SIGTERM or Ctrl-C, at its current step or evaluation batch with its checkpoint saved, or "
                 "before training with nothing to save (the message gives the command that continues it; "
                 "schedulers may requeue on it); 130 a second Ctrl-C, which stops at once without saving")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnzoo", description="Compare attention variants in Vision Transformers.",
                                epilog=EXIT_STATUSES)
    p.add_argument("--version", action="version", version=f"attnzoo {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--strict-plugins", action="store_true", help="any plugin failure is fatal")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help, recipe=False):
        s = sub.add_parser(name, help=help, description=help, epilog=EXIT_STATUSES if recipe else None)
        s.set_defaults(fn=fn)
        if recipe:
            s.add_argument("recipe", help="recipe file, or the name of a bundled recipe")
            # default=[]: argparse would otherwise list the optional overrides as required
            s.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                           help="optional, e.g. optim.lr=3e-4 train.epochs=1")
        return s

    add("variants", cmd_variants, "list the attention variants the plugins provide").add_argument("--json", action="store_true")
    add("plugins", cmd_plugins, "list plugins with distribution, version and status").add_argument("--json", action="store_true")
    add("ls", cmd_ls, "list the bundled recipes")
    cp = add("cp", cmd_cp, "copy a bundled recipe to edit it")
    cp.add_argument("name")
    cp.add_argument("dest")
    cp.add_argument("--force", action="store_true")
    add("validate", cmd_validate, "check a recipe and print it resolved", recipe=True)
    tr = add("train", cmd_train, "train one run", recipe=True)
    tr.add_argument("--resume", nargs="?", action=ResumeAction, default=False, metavar="CHECKPOINT",
                    help="continue the run in output_dir (from its last checkpoint, or CHECKPOINT)")
    tr.add_argument("--auto-resume", action="store_true",
                    help="resume if output_dir holds this run, else start it (for requeued cluster jobs)")
    st = add("study", cmd_study, "train every variant arm x grid point x seed and write the report", recipe=True)
    st.add_argument("--extend", action="store_true",
                    help="bring runs made with a different recipe up to date: continue those whose only change "
                         "is more epochs (constant or step schedule), train the others again from the start")
    st.add_argument("--workers", type=int, default=1, metavar="N",
                    help="train the runs with N worker processes on this machine (one CUDA device each, or the "
                         "CPU cores split between them); the report is written at the end")
    st.add_argument("--shard", metavar="K/N", default=None,
                    help="train only shard K of N of the study's runs (e.g. one per machine or CI job); the N shards "
                         "together hold every run once, and claimed runs are never trained twice")
    st.add_argument("--tune-only", action="store_true",
                    help="train the tuning trials of the recipe's tune: section and write each arm's choice, "
                         "then stop (before submitting the runs to SLURM, say)")
    st.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process of --workers N
    st.add_argument("--runs", default=None, help=argparse.SUPPRESS)  # a SLURM array task's run folders
    st.add_argument("--status", action="store_true",
                    help="show each run: finished, diverged, running (and who holds it), failed (with the last "
                         "line of its log), stopped or queued; trains nothing and takes no lock")
    st.add_argument("--launcher", choices=["local", "slurm"], default="local",
                    help="local: train here (with --workers/--shard); slurm: submit a job array through submitit "
                         "(pip install 'attnzoo[slurm]'), one task per run, then a report job")
    for flag, metavar, kind, text in (
            ("partition", "NAME", str, "the SLURM partition (slurm.partition)"),
            ("gpus-per-run", "G", int, "GPUs of each run; above 1 it starts with accelerate launch (slurm.gpus_per_run)"),
            ("cpus-per-task", "C", int, "CPUs of each array task (slurm.cpus_per_task)"),
            ("mem-gb", "GB", float, "memory of each task (slurm.mem_gb)"),
            ("time-minutes", "MIN", int, "time limit of each task; then the run is checkpointed and requeued "
                                          "(slurm.time_minutes)"),
            ("account", "NAME", str, "the SLURM account (slurm.account)"),
            ("qos", "NAME", str, "the SLURM quality of service (slurm.qos)"),
            ("array-parallelism", "N", int, "array tasks running at once (slurm.array_parallelism)"),
            ("runs-per-task", "K", int, "runs each array task trains, one after another (slurm.runs_per_task)")):
        st.add_argument(f"--{flag}", dest=flag.replace("-", "_"), metavar=metavar, type=kind, default=None, help=text)
    rp = add("report", cmd_report, "rebuild results.md, results.csv and figures from finished runs")
    rp.add_argument("study_dir")
    ev = add("eval", cmd_eval, "evaluate a finished run: each flag asks for one check, any of them together; "
             "with none, --test")
    ev.add_argument("run_dir")
    ev.add_argument("--test", action="store_true",
                    help="re-evaluate the final weights on the test split -> eval.json (the default)")
    ev.add_argument("--corruptions", action="store_true",
                    help="evaluate the best checkpoint under 5 corruptions x 5 severities -> corruptions.json")
    ev.add_argument("--seed", type=int, default=None,
                    help="with --corruptions: seed of the corruption noise; with --attack: of the random starts "
                         "and Square's search (default: the run's seed)")
    ev.add_argument("--cifar-c", default=None, metavar="DIR",
                    help="with --corruptions: classify the released CIFAR-10-C / CIFAR-100-C arrays in DIR "
                         "(labels.npy and one <corruption>.npy each) instead -> cifar_c.json")
    ev.add_argument("--attack", action="store_true",
                    help="attack the best checkpoint with FGSM, PGD and the gradient-free Square attack (L-inf), "
                         "with gradient-masking checks -> attacks.json")
    ev.add_argument("--eps", type=float, nargs="+", default=None, metavar="LEVELS",
                    help="with --attack: budgets in pixel levels, eps = LEVELS/255 (default: 1 2 4 8)")
    ev.add_argument("--cost", action="store_true",
                    help="count FLOPs per image and write cost.json, as a run does when it finishes "
                         "(for runs made before runs wrote it)")
    b = sub.add_parser("bench", help="measure training throughput of variants, naive and timm")
    b.set_defaults(fn=cmd_bench)
    b.add_argument("words", nargs="*", default=[], metavar="[RECIPE] [key=value ...]",
                   help="recipe (default: the bundled 'bench') and overrides")
    b.add_argument("--json", action="store_true")
    b.add_argument("--out", default=None, metavar="FILE",
                   help="also write each row to FILE as a JSON line the moment it is measured (flushed to disk), "
                        "so a bench that is cut short keeps its finished rows; FILE must not hold rows yet")
    ex = add("export-cifar10", cmd_export_cifar10,
             "write CIFAR-10 as JPEG files (quality 75) in image-folder layout: DEST/{train,test}/<class>/NNNN.jpg")
    ex.add_argument("dest", help="folder to write (must not hold images yet)")
    ex.add_argument("--cifar-root", default="data", help="where the official CIFAR-10 python version is, or "
                    "is downloaded to (the folder that holds cifar-10-batches-py; default: data)")
    ex.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    xp = add("export", cmd_export, "write a finished run's weights for another library")
    xp.add_argument("run_dir")
    xp.add_argument("--timm", action="store_true", help="a state dict timm's VisionTransformer loads, and its "
                    "arguments: RUN/timm/{model.safetensors,config.json}")
    xp.add_argument("--out", default=None, help="folder to write instead of RUN/timm (must not hold an export)")
    add("check-plugin", cmd_check_plugin, "run the conformance kit on an installed variant").add_argument("name")
    np_ = add("new-plugin", cmd_new_plugin, "write a ready-to-install plugin package")
    np_.add_argument("name")
    np_.add_argument("dest", nargs="?")
    ca = add("cache", cmd_cache, "show or clear the decode cache of image folders")
    ca.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(sys.argv[1:] if argv is None else argv)
    try:
        with stop_on_signals(args.command in TRAINING_COMMANDS):
            return args.fn(args)
    except Stopped as exc:
        if _is_main_process():
            print(f"attnzoo: {exc}. Continue with:\n  {continue_command(args, exc)}", file=sys.stderr)
        return EXIT_STOPPED
    except AttnzooError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"attnzoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnzoo: interrupted; nothing more was saved", file=sys.stderr)
        return 130


# The commands that train: a signal before (or between) their runs' training stops them with
# EXIT_STOPPED and the command that continues, as one during training does.
TRAINING_COMMANDS = ("train", "study")


class StoppedOutsideTraining(Stopped):
    """SIGTERM or Ctrl-C while no run was training (the recipe or data loading, a study between its
    runs): there is nothing to save, and the command as typed continues."""


def _stop_now(signum, frame):
    # Raised where the main thread is (a data decode waiting on its threads, say): only the
    # trainer's own handler, installed while a run trains, waits for a step or batch to end.
    raise StoppedOutsideTraining(f"stopped by {signal.Signals(signum).name} while no run was training (loading "
                                 "data, or between runs); nothing was lost")


@contextlib.contextmanager
def stop_on_signals(enabled: bool):
    """SIGTERM and SIGINT raise StoppedOutsideTraining while `enabled` (without this, a SIGTERM
    while the data loads ends the process with status 143 and no message)."""
    if not enabled or threading.current_thread() is not threading.main_thread():  # handlers: main thread only
        yield
        return
    previous = {sig: signal.signal(sig, _stop_now) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def is_override(word: str) -> bool:
    """A key=value word, not a flag or a file that happens to hold '='."""
    return "=" in word and not word.startswith("-") and not Path(word).exists()


class ResumeAction(argparse.Action):
    """`--resume [CHECKPOINT]`: a key=value right after it is an override, not a checkpoint."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is not None and is_override(value):
            namespace.resume_overrides = [*getattr(namespace, "resume_overrides", []), value]
            value = None
        namespace.resume = True if value is None else value


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """The parsed command. Overrides may come anywhere after the recipe, before or after flags
    (`train R --resume a=1 b=2`): argparse leaves those after a flag over, and they are taken here
    in the order typed; any other leftover word is an error."""
    parser = build_parser()
    args, leftover = parser.parse_known_args(argv)
    late = [*getattr(args, "resume_overrides", []), *(w for w in leftover if is_override(w))]
    unknown = [w for w in leftover if not is_override(w)]
    if unknown or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def continue_command(args, stopped: Stopped | None = None) -> str:
    """The command that continues a stopped run: the recipe and overrides as typed, plus --resume
    (`stopped` before its training began: as typed). A study continues by running the same command again."""
    words = ["attnzoo"] + ["--debug"] * args.debug + ["--strict-plugins"] * args.strict_plugins
    words += [args.command, args.recipe, *args.overrides]
    if args.command == "train" and isinstance(stopped, StoppedOutsideTraining):  # nothing written: as typed
        words += ["--auto-resume"] * args.auto_resume + ["--resume"] * bool(args.resume)
    elif args.command == "train":
        words.append("--auto-resume" if args.auto_resume else "--resume")
    if args.command == "study":
        words += ["--extend"] * args.extend + [f"--workers={args.workers}"] * (args.workers > 1)
        words += [f"--shard={args.shard}"] * bool(args.shard)
    command = shlex.join(words)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command = f"{command}\n(through the same launcher, e.g. accelerate launch ... -m {command})"
    return command


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"
