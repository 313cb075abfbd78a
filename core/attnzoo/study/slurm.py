"""`attnzoo study R --launcher slurm`: a study's runs as a SLURM job array, through submitit.

The array has one task per run (or per `slurm.runs_per_task` runs). Each task starts
``attnzoo study <study>/study.yaml --worker --runs NAMES`` as a child process, which claims each
of its runs through the run lock (attnzoo.run.lock), trains it (resuming from its checkpoint if
an earlier attempt died) and releases it. A run of more than one GPU is started by
``accelerate launch --num_processes G``, so Accelerate sees the right world size.

Time limit and preemption: SLURM sends submitit's signal (``--signal=USR2@90`` by default) to the
task; submitit calls `RunTask.checkpoint`, which sends SIGTERM to the child. The trainer stops
after its current step with a checkpoint (exit 75, attnzoo.errors.EXIT_STOPPED), and submitit
requeues the task, which resumes the run. A SIGTERM from SLURM itself (preemption with a grace
time) reaches the child directly and stops it the same way.

The report is written by one more job that starts when the array is over (``afterany``), or by
hand with ``attnzoo report <study>``. submitit is an optional extra: ``pip install 'attnzoo[slurm]'``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from attnzoo.config.recipe import Recipe, SlurmConfig
from attnzoo.errors import EXIT_STOPPED, AttnzooError
from attnzoo.run import lock as run_lock
from attnzoo.run import rundir
from attnzoo.study import plan

LOGS = "slurm"  # submitit's folder in the study folder: batch scripts, pickles, <job>_<task>_log.{out,err}
SUBMITTED = "submitted.jsonl"  # one line per submission: job ids, the runs of each task
# Requeues a task may take after its time limit (preemptions do not count): a run longer than the time
# limit continues over that many tasks' time.
MAX_TIMEOUT_REQUEUES = 20
SIGNAL_DELAY_S = 120  # the signal comes this long before the time limit: time to finish a step and save
STOP_WAIT_S = SIGNAL_DELAY_S - 20  # how long a task waits for its run's checkpoint before giving up on it
# Signals a task's child ignores: submitit's preemption signal is the task's to handle (it stops the child
# with SIGTERM), and SIGUSR1/2 would end the child at once, without its checkpoint.
IGNORED_BY_CHILD = (signal.SIGUSR1, signal.SIGUSR2)


def import_submitit():
    """submitit, or a clear error naming the extra to install."""
    try:
        import submitit
    except ImportError:
        raise AttnzooError("--launcher slurm needs submitit, which is not installed. Install it with: "
                           "pip install 'attnzoo[slurm]'") from None
    return submitit


def task_groups(names: list[str], runs_per_task: int) -> list[list[str]]:
    """The runs of each array task: `runs_per_task` consecutive runs of the plan each."""
    return [names[i:i + runs_per_task] for i in range(0, len(names), runs_per_task)]


def sbatch_parameters(slurm: SlurmConfig, name: str) -> dict:
    """The parameters of submitit's SlurmExecutor (its names, sbatch's options) for one task of the array."""
    params = {"job_name": f"attnzoo-{name}", "time": slurm.time_minutes, "nodes": 1, "ntasks_per_node": 1,
              "cpus_per_task": slurm.cpus_per_task, "array_parallelism": slurm.array_parallelism,
              "signal_delay_s": SIGNAL_DELAY_S}
    if slurm.gpus_per_run:
        params["gpus_per_node"] = slurm.gpus_per_run
    if slurm.mem_gb is not None:
        params["mem"] = f"{int(slurm.mem_gb)}GB" if slurm.mem_gb == int(slurm.mem_gb) else f"{int(slurm.mem_gb * 1024)}MB"
    for key in ("partition", "account", "qos"):
        if getattr(slurm, key) is not None:
            params[key] = getattr(slurm, key)
    if slurm.additional_parameters:
        params["additional_parameters"] = {str(k): v for k, v in slurm.additional_parameters.items()}
    if slurm.setup:
        params["setup"] = list(slurm.setup)
    return params


def sbatch_script(recipe: Recipe, tasks: int) -> str:
    """The batch script submitit writes for an array of `tasks` tasks (what `sbatch` is given), made
    without a cluster: to read, or to check before submitting."""
    import_submitit()
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{sys.executable} -u -m submitit.core._submit {recipe.run_dir / LOGS}"
    return _make_sbatch_string(command=command, folder=str(recipe.run_dir / LOGS / "%j"), map_count=tasks,
                               **sbatch_parameters(recipe.slurm, recipe.name))


def child_command(study_file: Path, runs: list[str], gpus: int, extend: bool = False,
                  strict_plugins: bool = False) -> list[str]:
    """The command a task runs for its runs: one process, or `accelerate launch` with one per GPU."""
    words = ["study", str(study_file), "--worker", "--runs", ",".join(runs)] + ["--extend"] * extend
    head = [sys.executable, "-m", "attnzoo"] + ["--strict-plugins"] * strict_plugins
    if gpus > 1:
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--num_processes", str(gpus), "-m", "attnzoo"] + ["--strict-plugins"] * strict_plugins
    return head + words


def _ignore_preemption_signals() -> None:  # runs in the child, before it starts attnzoo
    for sig in IGNORED_BY_CHILD:
        signal.signal(sig, signal.SIG_IGN)


def _job_ids() -> dict:
    return {k: os.environ[k] for k in run_lock.JOB_VARIABLES if k in os.environ}


def _same_job(holder: dict) -> bool:
    """Whether a lock was taken by an earlier attempt of this very array task (a requeued task runs once
    at a time, so that holder is gone even when its heartbeat is recent)."""
    ours, theirs = _job_ids(), holder.get("job") or {}
    if "SLURM_ARRAY_JOB_ID" in ours:
        keys = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
    else:
        keys = ("SLURM_JOB_ID",)
    return all(k in ours for k in keys) and all(theirs.get(k) == ours[k] for k in keys)


def release_own_locks(study_dir: Path, runs: list[str]) -> None:
    """Remove the locks an earlier attempt of this task left (killed with no time to release them)."""
    for name in runs:
        path = Path(study_dir) / name / run_lock.LOCK
        holder = run_lock._read(path)
        if holder and _same_job(holder):
            print(f"{name}: the lock of an earlier attempt of this task ({run_lock.describe_holder(holder)}) is "
                  "removed; the run resumes from its last checkpoint", flush=True)
            path.unlink(missing_ok=True)


class RunTask:
    """One array task: trains its runs in a child process. submitit calls `checkpoint` on a time limit
    or a preemption; the run then stops at a checkpoint and the task is requeued."""

    def __init__(self, study_file: str, runs: list[str], gpus: int = 1, extend: bool = False,
                 strict_plugins: bool = False):
        self.study_file, self.runs, self.gpus = str(study_file), list(runs), gpus
        self.extend, self.strict_plugins = extend, strict_plugins
        self._child: subprocess.Popen | None = None
        self._code: int | None = None

    def __getstate__(self) -> dict:  # pickled by submitit: the child process stays behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_child", "_code")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _child=None, _code=None)

    @property
    def study_dir(self) -> Path:
        return Path(self.study_file).parent

    def _log(self) -> str | None:
        try:
            import submitit

            return str(submitit.JobEnvironment().paths.stderr)
        except (ImportError, RuntimeError):
            return None  # not started by submitit (called directly)

    def _record(self, **fields) -> None:
        """This task's state in <study>/slurm/tasks/<job>.json: its pid (a test signals it), runs, outcome."""
        name = "_".join(_job_ids().get(k, "") for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")).strip("_")
        name = name or os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or str(os.getpid())
        folder = self.study_dir / LOGS / "tasks"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "runs": self.runs, "log": self._log(), **fields}
        rundir.write_text(folder / f"{name}.json", json.dumps(record) + "\n")

    def __call__(self) -> dict:
        release_own_locks(self.study_dir, self.runs)
        env = dict(os.environ)
        if self._log():
            env[plan.LOG_VARIABLE] = self._log()
        command = child_command(Path(self.study_file), self.runs, self.gpus, self.extend, self.strict_plugins)
        print("running: " + " ".join(command), flush=True)
        self._child = subprocess.Popen(command, env=env, preexec_fn=_ignore_preemption_signals)
        self._record(state="running", child=self._child.pid)
        while self._code is None:  # poll: a signal handler (checkpoint) may reap the child meanwhile
            code = self._child.poll()
            if code is not None:
                self._code = code
            time.sleep(0.5)
        return self._finish(self._code)

    def _finish(self, code: int) -> dict:
        states = {name: plan.run_status(self.study_dir / name)[0] for name in self.runs}
        self._record(state="done" if code == 0 else "stopped" if code == EXIT_STOPPED else "failed",
                     exit=code, runs_state=states)
        if code == 0:
            return states
        if code == EXIT_STOPPED:
            # SIGTERM reached the child without submitit's signal (e.g. scancel, preemption with a grace
            # time): the runs stopped at a checkpoint and continue when the study is submitted again.
            print(f"the runs stopped at a checkpoint (exit {code}); submit the study again to continue them",
                  flush=True)
            return states
        for name, state in states.items():
            if state not in ("finished", "diverged") and not plan.failure_record(self.study_dir / name).is_file():
                plan.record_failure(self.study_dir / name, f"the task's process exited with status {code}",
                                    self._log())
        raise AttnzooError(f"training {', '.join(self.runs)} failed (exit {code}); the log is {self._log()}. "
                           "Fix the cause and submit the study again: finished runs are skipped.")

    def stop_child(self) -> int | None:
        """SIGTERM to the child, then wait (STOP_WAIT_S at most) for its checkpoint; its exit status."""
        child = self._child
        if child is None or self._code is not None:
            return self._code
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            try:  # waitpid itself: Popen's own wait may be the call this signal handler interrupted
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the interrupted poll: its status is there
                self._code = child.returncode if child.returncode is not None else EXIT_STOPPED
                return self._code
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
                return self._code
            time.sleep(0.2)
        child.kill()  # no checkpoint in time: the run resumes from its previous one
        self._code = -signal.SIGKILL
        return self._code

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on a time limit or a preemption: stop the run at a checkpoint, then requeue the
        same task (a fresh RunTask: the requeued one resumes the run from that checkpoint)."""
        submitit = import_submitit()
        code = self.stop_child()
        print(f"preempted or at the time limit: the run stopped (exit {code}); this task is requeued", flush=True)
        self._record(state="requeued", exit=code)
        return submitit.helpers.DelayedSubmission(RunTask(self.study_file, self.runs, self.gpus, self.extend,
                                                          self.strict_plugins))


class ReportTask:
    """The job after the array (afterany): the robustness evaluation and the report over the finished runs."""

    def __init__(self, study_file: str):
        self.study_file = str(study_file)

    def __call__(self) -> str:
        from attnzoo.config import recipe as recipes
        from attnzoo.run.assembly import make_accelerator

        recipe = recipes.load(self.study_file)
        runs = plan.plan_runs(recipe)
        left = [run.run_dir.name for run in runs if plan.run_status(run.run_dir)[0] not in ("finished", "diverged")]
        accelerator = make_accelerator(recipe)
        try:
            plan._finish_study(recipe, runs, accelerator, {})
        finally:
            accelerator.end_training()
        summary = f"report of {len(runs) - len(left)} of {len(runs)} runs written in {recipe.run_dir}"
        if left:
            summary += (f"; not finished: {', '.join(left)}. See attnzoo study {self.study_file} --status, and "
                        "submit the study again to train them")
        print(summary, flush=True)
        return summary


def make_executor(recipe: Recipe):
    """submitit's SlurmExecutor for the study (needs sbatch and srun: run this on the cluster's login node)."""
    submitit = import_submitit()
    folder = recipe.run_dir / LOGS / "%j"
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as exc:
        raise AttnzooError(f"--launcher slurm: {exc} Submit from a machine of the cluster (its login node), or use "
                           "--shard K/N with another scheduler.") from None
    executor.update_parameters(**sbatch_parameters(recipe.slurm, recipe.name))
    return executor


def submit_study(recipe: Recipe, *, extend: bool = False, strict_plugins: bool = False,
                 make_executor=make_executor) -> dict:
    """Submit a task for every run not finished yet (an array), then the report job. Every refusal
    (a changed recipe, a foreign folder) comes before anything is submitted. `make_executor(recipe)`:
    submitit's executor, made once the study is checked (a LocalExecutor in tests); by default a
    SlurmExecutor from the recipe's `slurm:` section."""
    all_runs = plan.plan_runs(recipe)
    plan._check_study_dir(recipe.run_dir)
    actions = plan.plan_actions(all_runs, extend)
    pending = [run.run_dir.name for run, action in zip(all_runs, actions) if action not in ("finished", "diverged")]
    study_dir = recipe.run_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    study_file = study_dir / plan.STUDY_FILE
    rundir.write_text(study_file, plan.recipes.dump(recipe))
    if not pending:
        print(f"study {study_dir}: every run is finished; the report: attnzoo report {study_dir}")
        return {"jobs": [], "report": None, "pending": []}
    executor = make_executor(recipe)
    groups = task_groups(pending, recipe.slurm.runs_per_task)
    tasks = [RunTask(str(study_file), group, recipe.slurm.gpus_per_run, extend, strict_plugins) for group in groups]
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    report = _submit_report(executor, jobs, study_file)
    try:
        (study_dir / LOGS / "%j").rmdir()  # the executor's folder pattern, made literally by submitit: empty
    except OSError:
        pass
    record = {"submitted": time.time(), "jobs": [job.job_id for job in jobs], "report": report and report.job_id,
              "runs": dict(zip([job.job_id for job in jobs], groups))}
    with open(study_dir / LOGS / SUBMITTED, "a") as f:
        f.write(json.dumps(record) + "\n")
    array = jobs[0].job_id.split("_")[0]
    print(f"study {study_dir}: {len(pending)} of {len(all_runs)} runs submitted as {len(jobs)} array task(s) "
          f"(job {array}, {recipe.slurm.runs_per_task} run(s) a task, up to {recipe.slurm.array_parallelism} at "
          f"once); logs in {study_dir / LOGS}/<job>/." + (f" The report follows as job {report.job_id}." if report
                                                            else f" Write the report with: attnzoo report {study_dir}"))
    print(f"Follow it with: attnzoo study {study_file} --status")
    return {"jobs": jobs, "report": report, "pending": pending}


def _submit_report(executor, jobs: list, study_file: Path):
    """The report job, after every task of the array whatever its end (afterany); None where the executor
    has no dependencies (submitit's LocalExecutor: the report is then written by hand)."""
    if type(executor).__name__ != "SlurmExecutor":
        return None
    array = jobs[0].job_id.split("_")[0]
    report_executor = type(executor)(folder=executor.folder, max_num_timeout=0)
    report_executor.update_parameters(**{**executor.parameters, "dependency": f"afterany:{array}",
                                         "job_name": executor.parameters.get("job_name", "attnzoo") + "-report"})
    return report_executor.submit(ReportTask(str(study_file)))


def status_lines(recipe: Recipe) -> list[str]:
    """`attnzoo study R --status`: every run's state from its folder, lock and failure record (no training,
    no lock taken), a count per state, and each failure's last log line."""
    lines = []
    if recipe.tune:  # the trials first: the runs are planned with the values they choose
        made = "made (tune/choice.json)" if plan.tune.read_choice(recipe) else "not made yet"
        lines += status_lines(plan.tune.trial_recipe(recipe)) + [f"tuning: each arm's choice {made}"]
    runs = plan.plan_runs(recipe)
    states = [(run, *plan.run_status(run.run_dir)) for run in runs]
    order = ("finished", "diverged", "running", "failed", "stopped", "queued")
    counts = {state: sum(s == state for _, s, _ in states) for state in order}
    lines += [f"study {recipe.run_dir}: " + ", ".join(f"{n} {state}" for state, n in counts.items()) +
             f" of {len(runs)} runs"]
    width = max(len(run.run_dir.name) for run in runs)
    for run, state, detail in states:
        lines.append(f"  {run.run_dir.name:<{width}}  {state:<8}" + (f"  {detail}" if detail else ""))
    if counts["failed"]:
        lines.append(f"Failed runs are trained again (resumed from their last checkpoint) by submitting the study "
                     f"again, or by attnzoo study {recipe.run_dir / plan.STUDY_FILE}: finished runs are skipped.")
    return lines
