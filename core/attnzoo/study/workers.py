"""`attnzoo study R --workers N`: N worker processes on one machine share a study's runs.

Every worker plans the same runs and trains those it can claim (the run lock,
attnzoo.run.lock), so each run is trained once, whichever worker gets it. On CUDA each worker
sees its own device(s) through CUDA_VISIBLE_DEVICES; on the CPU the cores are split between
them. The parent checks the whole study before starting anyone, shows one progress line
(done, running, failed, left, ETA), and writes the robustness evaluation and the report at the
end. Ctrl-C (or SIGTERM) is passed to every worker once: each stops at a checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from attnzoo.config.recipe import Recipe
from attnzoo.errors import AttnzooError, Stopped
from attnzoo.run import lock as run_lock
from attnzoo.run import rundir
from attnzoo.study import plan

LOGS = "worker-logs"  # one log per worker in the study folder: worker-<k>.log


def cpu_threads(workers: int) -> int:
    """The CPU threads of each worker: the cores this process may use, split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def cuda_devices(workers: int) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES of each worker (its share of the visible devices), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if workers > len(devices):
        raise AttnzooError(f"--workers {workers}: this machine shows {len(devices)} CUDA device(s) and each worker "
                           f"needs its own. Use --workers {len(devices)} or fewer.")
    return [",".join(devices[k::workers]) for k in range(workers)]


def _worker_command(study_file: Path, args_extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "attnzoo", "study", str(study_file), "--worker", *args_extra]


def _is_done(run: plan.PlannedRun, stale: set[Path], since: float) -> bool:
    """Finished or diverged; a run that is to be trained again (--extend) only once it has finished anew."""
    folder = rundir.RunDir(run.run_dir)
    if run.run_dir in stale:
        return folder.is_finished() and folder.test_metrics.stat().st_mtime >= since
    return folder.is_finished() or folder.diverged.is_file()


def _progress(runs: list[plan.PlannedRun], failed: int, started: float, done_before: int,
              stale: set[Path] = frozenset(), since: float = 0.0) -> str:
    done = sum(_is_done(r, stale, since) for r in runs)
    running = sum((r.run_dir / run_lock.LOCK).is_file() for r in runs)
    left = len(runs) - done
    eta = ""
    trained = done - done_before
    if trained > 0 and left:
        eta = f", about {(time.monotonic() - started) / trained * left / 60:.1f} min left"
    return f"study: {done} done, {running} running, {failed} failed, {left} left of {len(runs)}{eta}"


def run_study_with_workers(recipe: Recipe, workers: int, *, extend: bool = False,
                           shard: tuple[int, int] | None = None, strict_plugins: bool = False,
                           tune_only: bool = False) -> list[dict]:
    """Train the study's runs with `workers` processes, then write the report. With a `tune:` section the
    workers first train every tuning trial; the parent makes each arm's choice before they train the runs."""
    from attnzoo.run.assembly import make_accelerator

    all_runs = plan.plan_runs(recipe)
    plan._check_study_dir(recipe.run_dir)
    if not recipe.tune:
        plan.plan_actions(plan.shard_of(all_runs, shard), extend)  # every refusal before any worker starts
    study_dir = recipe.run_dir
    plan.write_study_file(recipe)
    if recipe.tune:
        _tune_with_workers(recipe, workers, extend, strict_plugins)
        if tune_only:
            return []
        all_runs = plan.plan_runs(recipe)  # now with each arm's chosen values
    runs = plan.shard_of(all_runs, shard)
    extra = ["--extend"] * extend + ([f"--shard={shard[0]}/{shard[1]}"] if shard else [])
    _run_workers(study_dir, runs, workers, extra, strict_plugins, stale=_stale(runs, extend))
    if shard is not None and not all(rundir.RunDir(r.run_dir).is_finished() for r in all_runs):
        print(f"shard {shard[0]}/{shard[1]} done; write the report once every shard is: attnzoo report {study_dir}")
        return []
    accelerator = make_accelerator(recipe)
    try:
        return plan._finish_study(recipe, all_runs, accelerator, {})
    finally:
        accelerator.end_training()


def _tune_with_workers(recipe: Recipe, workers: int, extend: bool, strict_plugins: bool) -> None:
    """The tuning trials (a study of their own, in tune/) over the workers; then this process waits for any
    trial another machine's shard holds and writes each arm's choice (plan.tune_arms, with nothing left to
    train here)."""
    trials_recipe, trials = plan.plan_trials(recipe)
    plan._check_study_dir(trials_recipe.run_dir)
    stale = _stale(trials, extend)
    trials_dir = trials_recipe.run_dir
    plan.write_study_file(trials_recipe)
    print(plan.tune.plan_line(recipe, len(trials)), flush=True)
    # The trials use the study's worker logs (appended to), so `--status` finds one log per worker.
    _run_workers(trials_dir, trials, workers, ["--extend"] * extend, strict_plugins, logs=recipe.run_dir / LOGS,
                 stale=stale)
    from attnzoo.run.assembly import make_accelerator

    accelerator = make_accelerator(recipe)
    try:
        plan.tune_arms(recipe, accelerator, extend, announce=False)
    finally:
        accelerator.end_training()


def _stale(runs: list[plan.PlannedRun], extend: bool) -> set[Path]:
    """The runs --extend trains again or continues (every refusal first): finished on disk, not done yet."""
    return {r.run_dir for r, action in zip(runs, plan.plan_actions(runs, extend)) if action in ("rerun", "extend")}


def _run_workers(study_dir: Path, runs: list[plan.PlannedRun], workers: int, extra: list[str],
                 strict_plugins: bool, logs: Path | None = None, stale: set[Path] = frozenset()) -> None:
    """Start `workers` processes on the study.yaml of `study_dir`, show their progress until they end, and raise
    Stopped (a signal, or a worker stopped) or AttnzooError (a worker failed). `stale`: runs that count as done
    only once they have finished again."""
    logs = logs or study_dir / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    devices, threads = cuda_devices(workers), cpu_threads(workers)
    procs = []
    for k in range(workers):
        # The worker's log is where a failure record sends whoever reads `attnzoo study R --status`.
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   ATTNZOO_WORKER_THREADS=str(threads),
                   **{plan.LOG_VARIABLE: str(logs / f"worker-{k + 1}.log")})
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[k]
        command = _worker_command(study_dir / plan.STUDY_FILE, extra)
        if strict_plugins:
            command.insert(3, "--strict-plugins")
        log = open(logs / f"worker-{k + 1}.log", "a")
        # Its own session: a Ctrl-C at the terminal reaches the parent only, which passes it on once
        # (a second SIGINT would make a worker stop without its checkpoint).
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True), log))
    where = f"CUDA devices {', '.join(devices)}" if devices else f"{threads} CPU thread(s) each"
    print(f"study {study_dir}: {len(runs)} runs over {workers} workers ({where}); logs in {logs}", flush=True)
    stop = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    started, since = time.monotonic(), time.time()
    done_before = sum(_is_done(r, stale, since) for r in runs)
    line, forwarded = "", False
    try:
        while any(p.poll() is None for p, _ in procs):
            if stop and not forwarded:
                for p, _ in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                forwarded = True
                print("study: stopping every worker at its next checkpoint ...", flush=True)
            failed = sum(p.returncode not in (None, 0, 75) for p, _ in procs)
            now = _progress(runs, failed, started, done_before, stale, since)
            if now != line:
                print(now, flush=True)
                line = now
            time.sleep(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for _, log in procs:
            log.close()
    print(_progress(runs, sum(p.returncode not in (0, 75) for p, _ in procs), started, done_before, stale, since),
          flush=True)
    failures = [(k, p.returncode) for k, (p, _) in enumerate(procs, 1) if p.returncode not in (0, 75)]
    for k, code in failures:
        tail = (logs / f"worker-{k}.log").read_text().strip().splitlines()[-3:]
        print(f"worker {k} failed (exit {code}):\n  " + "\n  ".join(tail), file=sys.stderr)
    if stop or any(p.returncode == 75 for p, _ in procs):
        raise Stopped("study stopped; every worker saved a checkpoint of the run it was training")
    if failures:
        raise AttnzooError(f"{len(failures)} worker(s) failed; their logs are in {logs}. Fix the cause "
                           "and run the same command again: finished runs are skipped.")
