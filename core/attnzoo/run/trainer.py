"""Training a ViT from a recipe with Hugging Face Accelerate (CPU, one GPU, many GPUs)."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from attnzoo.config.keys import flatten
from attnzoo.config.recipe import Recipe, resolve
from attnzoo.data import augment
from attnzoo.data.loader import Loader, Splits, held_out_split, step_seed
from attnzoo.data.pipeline import load_data
from attnzoo.errors import AttnzooError, PluginError, Stopped
from attnzoo.model import compile as compiling
from attnzoo.model.vit import count_parameters
from attnzoo.run import assembly, budget, checkpoint, cost, ema, eta, rundir
from attnzoo.run import lock as run_lock
from attnzoo.run.rundir import Resume


class NonFiniteLoss(AttnzooError):
    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step  # where the loss first turned non-finite (1-based)


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within the current epoch
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    epochs_without_gain: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0
    # The step time of an interrupted epoch before its checkpoint, added when the epoch ends, so
    # a resumed run's train_seconds and throughput count the steps timed before the interruption.
    epoch_seconds_before: float = 0.0
    partial_loss_sum: float = 0.0  # train loss summed over the steps of an interrupted epoch
    partial_loss_steps: int = 0
    # A seconds budget (train.budget) is spent: a resume after its last epoch trains no more steps.
    seconds_budget_spent: bool = False
    history: list = field(default_factory=list)  # one metrics dict per finished epoch


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step: a pure function, so resuming needs no scheduler state."""
    o = recipe.optim
    epoch = step / steps_per_epoch
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        return o.lr * (step + 1) / (o.warmup_epochs * steps_per_epoch)
    if o.schedule == "step":
        return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "cosine":
        total = max(recipe.train.epochs - o.warmup_epochs, 1e-9)
        progress = min((epoch - o.warmup_epochs) / total, 1.0)
        return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return o.lr


class Trainer:
    """The training loop of one run. What it trains is put together by :mod:`attnzoo.assembly`."""

    def __init__(self, recipe: Recipe, *, registry=None, accelerator: Accelerator | None = None,
                 splits: Splits | None = None, runs_left: int = 1):
        """`registry`: the plugins the recipe's variant comes from (None: the installed ones)."""
        self.recipe, self.run_dir = recipe, recipe.run_dir
        self.run = rundir.RunDir(self.run_dir)
        self.resolved = resolve(recipe, registry)  # before any compute: an unknown variant fails here
        assembly.check_trackers(recipe)  # and so does a tracker of train.log_with that is not installed
        self.acc = accelerator or assembly.make_accelerator(recipe)
        # A caller that passes its Accelerator (a study: several runs in one process) keeps
        # the process group alive across runs and ends it itself.
        self._owns_accelerator = accelerator is None
        assembly.apply_train_settings(recipe)
        self.splits = splits or load_data(recipe)
        self.batching = assembly.batching(recipe, self.acc)
        self.raw_model = assembly.build_model(recipe, len(self.splits.classes), self.resolved.kernel)
        optimizer = assembly.build_optimizer(recipe, self.raw_model, self.acc.device)
        self.model, self.optimizer = self.acc.prepare(self.raw_model, optimizer)
        # train.ema_decay: the weight average validated, kept and tested; None when off.
        self.ema = ema.WeightAverage(self.raw_model, recipe.train.ema_decay) if recipe.train.ema_decay else None
        # data.augment.mixup / cutmix: each step's batch mixed into soft targets; None when off.
        self.mixer = (augment.Mixer(recipe.data.augment, len(self.splits.classes), recipe.optim.label_smoothing)
                      if augment.mixing(recipe.data.augment) else None)
        # train.budget: the steps (or seconds) the run trains instead of train.epochs; None when off.
        self.budget = budget.plan(recipe, self.raw_model)
        # The run's optimizer steps, for train.compile=auto's rule (eager when compile cannot pay):
        # a step or FLOPs budget's own count, else train.epochs' (a seconds budget: epochs' estimate).
        run_steps = (self.budget.total_steps if self.budget and self.budget.total_steps is not None
                     else recipe.train.epochs * math.ceil(len(self.splits.train) / recipe.train.batch_size))
        self.forward = assembly.Forward(self.model, recipe, self.acc, steps=run_steps)
        self._compiled_steps_ran = 0  # the first compiling.GUARDED_STEPS may still fall back to eager
        self.train_loader, self.val_loader, self.test_loader = (
            assembly.loader(recipe, self.splits, split, self.acc) for split in ("train", "val", "test"))
        self._seconds_clock = budget.SecondsClock(self.budget.value) if self._seconds_budget() else None
        self._step_started = None  # a seconds budget: the training seconds when the last step began
        self.state = TrainerState()
        self.runs_left = runs_left  # this run and those after it, for a study's time estimate
        self._stop_signal = None
        self._timer = EpochTimer(self.acc.device)
        self._first_bad = torch.full((), -1, device=self.acc.device)  # first step (1-based) with a non-finite loss
        self._lock = None  # the run lock while fit runs (main process only)

    # ------------------------------------------------------------ checkpoints

    def _trainer_state(self) -> dict:
        # The recipe is the run's identity: a resume refuses another run's checkpoint.
        return dict(self.state.__dict__, variant=self.recipe.attention.name, recipe=self.recipe.to_dict(),
                    model_shape={k: list(v.shape) for k, v in self.raw_model.state_dict().items()})

    def save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if self._lock is not None:
            self._lock.beat(force=True)
        if self.acc.is_main_process:
            name = checkpoint.checkpoint_name(self.state.epoch, self.state.step, len(self.train_loader))
            model_state = self.raw_model.state_dict()
            if self.ema is not None:  # the average resumes with the run
                model_state = {**model_state, **self.ema.checkpoint_tensors()}
            checkpoint.save_checkpoint(self.run_dir, model_state=model_state,
                                       optimizer_state=self.optimizer.state_dict(),
                                       trainer_state=self._trainer_state(), keep=self.recipe.train.keep_checkpoints,
                                       name=name)
        self.acc.wait_for_everyone()

    def restore(self, path: Path | None = None) -> None:
        """The state of checkpoint `path` (default: the last one of the run)."""
        path = Path(path) if path else (checkpoint.list_checkpoints(self.run_dir) or [None])[-1]
        if path is None:
            return
        if not path.is_dir():
            raise AttnzooError(f"--resume: checkpoint {str(path)!r} not found. Checkpoints of this run: "
                               f"{[p.name for p in checkpoint.list_checkpoints(self.run_dir)]}")
        model_state, optim_state, state = checkpoint.load_checkpoint(path, len(self.train_loader))
        if state.get("variant") != self.recipe.attention.name:
            raise AttnzooError(f"checkpoint {str(path)!r} was trained with variant {state.get('variant')!r}, "
                               f"the recipe asks for {self.recipe.attention.name!r}. Resume with the same recipe.")
        expected = {k: list(v.shape) for k, v in self.raw_model.state_dict().items()}
        if state.get("model_shape") != expected:
            raise AttnzooError(f"checkpoint {str(path)!r} holds a model of a different shape than the recipe "
                               "describes (model.* keys differ). Resume with the recipe it was trained with.")
        checkpoint.check_same_run(path, state, self.recipe.to_dict(), self.run_dir)
        model_state, ema_state = ema.split_checkpoint_state(model_state)
        self.raw_model.load_state_dict(model_state)
        if self.ema is not None:
            self.ema.load(ema_state)
        self.optimizer.load_state_dict(optim_state)
        defaults = TrainerState()  # counters added since a checkpoint of an earlier version was written
        for key in TrainerState.__dataclass_fields__:
            setattr(self.state, key, state.get(key, getattr(defaults, key)))
        self._rewrite_metrics()

    # ------------------------------------------------------------ training

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once, saving nothing more
        self._stop_signal = signum  # acted on after the current step (no printing here: not reentrant)

    def fit(self, resume: Resume = Resume.NO, lock: run_lock.RunLock | None = None) -> dict:
        """Train the run. `lock`: the run lock its caller holds (and releases); without one, fit takes
        it and gives it back however the run ends."""
        if not isinstance(resume, Resume):
            raise TypeError(f"resume must be a Resume (Resume.NO, .LATEST, .AUTO or Resume.at(path)), got {resume!r}")
        # SIGTERM (a scheduler's pre-emption) and Ctrl-C set a flag that training checks after each
        # step and evaluation before each batch, from here on: a signal while the run folder is
        # prepared or a checkpoint restored is acted on before the first step.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        own_lock = lock is None and self.acc.is_main_process
        try:
            self._lock = run_lock.acquire(self.run_dir) if own_lock else lock
            try:
                return self._fit(resume)
            finally:
                if own_lock:
                    self._lock.release()
                self._lock = None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fit(self, resume: Resume) -> dict:
        resuming = rundir.prepare(self.run_dir, self.recipe, resume.wanted(self.run_dir))
        self.acc.wait_for_everyone()  # every process checks the folder before the main one writes to it
        if self.acc.is_main_process:
            env = rundir.environment(self.resolved.registry, self.acc.num_processes, self.acc.device)
            env["compile_cache"] = compiling.cache_info()  # where a second run finds this one's compiled code
            env.update(global_batch_size=self.batching.global_size, per_process_batch_size=self.batching.per_process,
                       grad_accum_steps=self.recipe.train.grad_accum_steps)
            rundir.write_start(self.run_dir, self.recipe, env, resuming)
            if not resuming:  # what model.init_from loaded, resized and re-initialised (nothing otherwise)
                assembly.write_init_report(self.raw_model, self.run_dir)
        if self.run.is_finished():
            return self.run.read_test_metrics()  # finished already
        if resuming:
            self.restore(resume.checkpoint)
        else:
            self._rewrite_metrics()  # starting over in place: no rows of an attempt without a checkpoint
        self._announce(resuming)
        # Each tracker gets the recipe as its config; the project is the recipe's (a study's runs share it),
        # TensorBoard writes into <run>/<name>/, wandb and MLflow name the run and tag its study and arm.
        self.acc.init_trackers(self.recipe.name, config=_flat_config(self.recipe),
                               init_kwargs=assembly.tracker_options(self.recipe))
        try:
            if self._stop_agreed():  # it came while the run was prepared: nothing new to save
                raise Stopped(f"stopped by {self._signal_name()} before training {'resumed' if resuming else 'started'}; "
                              "nothing was lost")
            self._train_epochs()
            return self.finish()
        except torch.cuda.OutOfMemoryError:
            t = self.recipe.train
            raise AttnzooError(
                f"the GPU ran out of memory with train.batch_size={t.batch_size} ({self.batching.per_process} per process, in "
                f"{t.grad_accum_steps} chunk(s)). Keep the batch and set train.grad_accum_steps="
                f"{t.grad_accum_steps * 2} to process it in smaller chunks with the same result, or lower "
                "train.batch_size, or set train.mixed_precision=bf16. The last checkpoint is kept; add --resume.") from None
        finally:
            if self._owns_accelerator:
                self.acc.end_training()  # also destroys the process group
            else:
                for tracker in self.acc.trackers:
                    tracker.finish()
            self.acc.trackers.clear()  # a shared accelerator's next run starts its own trackers

    def _announce(self, resuming: bool) -> None:
        a, sp = self.recipe.attention, self.splits
        options = ", ".join(f"{k}={v}" for k, v in a.options.items())
        where = f"resuming at epoch {self.state.epoch + 1}" if resuming else "starting"
        length = self.budget.describe() if self.budget else f"{self.recipe.train.epochs} epoch(s)"
        self.acc.print(f"{self.run_dir}: {where}; {a.name}({options}), {count_parameters(self.raw_model):,} parameters; "
                       f"{length} of {len(sp.train)} train images, "
                       f"{len(sp.val)} val / {len(sp.test)} test images; "
                       f"{self.acc.device} x {self.acc.num_processes} process(es)", flush=True)

    def _planned_epochs(self) -> int | None:
        """The epochs the run enters: train.epochs, or those its budget needs (its last one may be
        partial); None for a seconds budget, which stops when its time is spent."""
        if self.budget is None:
            return self.recipe.train.epochs
        return self.budget.planned_epochs(len(self.train_loader))

    def _seconds_budget(self) -> bool:
        return self.budget is not None and self.budget.kind == "seconds"

    def _training_seconds(self) -> float:
        """Seconds of training steps so far, those before a resume included (a seconds budget's clock)."""
        return self.state.train_seconds + self.state.epoch_seconds_before + self._timer.elapsed()

    def _budget_spent(self) -> bool:
        """True when the budget's steps are taken (or its seconds spent); never without a budget."""
        if self.budget is None:
            return False
        s = self.state
        if self.budget.total_steps is not None:
            return s.epoch * len(self.train_loader) + s.step >= self.budget.total_steps
        return s.seconds_budget_spent

    def _train_epochs(self) -> None:
        t, s = self.recipe.train, self.state
        epochs = self._planned_epochs()
        total_steps = self.budget.total_steps if self.budget else t.epochs * len(self.train_loader)
        self._estimate = eta.RunEstimate(
            total_steps=total_steps or 0, epochs=epochs or 0, device=self.acc.device,
            eval_steps_per_epoch=eta.eval_steps(len(self.splits.val), t.batch_size),
            test_steps=eta.eval_steps(len(self.splits.test), t.batch_size), runs_left=self.runs_left)
        while (epochs is None or s.epoch < epochs) and not s.seconds_budget_spent:
            # A signal during evaluation: the epoch's checkpoint is saved, stop here.
            if s.epoch and not s.step and self._stop_agreed():
                raise self._stopped()
            if t.early_stopping_patience and s.epochs_without_gain >= t.early_stopping_patience:
                self.acc.print(f"early stopping: no validation gain for {s.epochs_without_gain} epochs")
                break
            self._timer.start_epoch()
            train_loss = self._train_one_epoch()
            seconds = self._timer.end_epoch()
            val = self._validate_or_stop(seconds) if len(self.splits.val) else None
            self._end_epoch(train_loss, val, seconds)

    def _validate_or_stop(self, seconds: float) -> dict:
        """The epoch's validation; a signal during it stops the run at once. The epoch's steps are
        kept: checkpointed as a stop after its last step, so a resume redoes only the validation
        (and ends bit-identical: evaluating changes no state the run keeps)."""
        s = self.state
        try:
            return self.validate()
        except _EvaluationStopped:
            pass
        if s.step < len(self.train_loader) or s.seconds_budget_spent:
            # The budget ended this epoch early: a checkpoint of it would resume into more steps
            # (or past the epoch's end), so the run goes back to its last checkpoint and redoes the epoch.
            last = (checkpoint.list_checkpoints(self.run_dir) or [None])[-1]
            since = f"from checkpoint {last.name}" if last else "from its start"
            raise Stopped(f"stopped by {self._signal_name()} during the validation of epoch {s.epoch + 1}, the last "
                          f"of its budget; a resume trains that epoch again {since}")
        s.epoch_seconds_before += seconds
        self.save_checkpoint()
        raise self._stopped(f"epoch {s.epoch + 1}'s validation was cut short; a resume redoes it")

    def _train_one_epoch(self) -> float:
        t, s = self.recipe.train, self.state
        self.model.train()
        steps = len(self.train_loader)
        loss_sum = torch.zeros((), device=self.acc.device)
        counted = 0
        partial_sum, partial_steps = s.partial_loss_sum, s.partial_loss_steps  # from a mid-epoch checkpoint
        bar = tqdm(total=steps, initial=s.step, desc=f"epoch {s.epoch + 1}/{t.epochs}", leave=False,
                   # None: shown on a terminal, silent in logs (the epoch line is printed anyway)
                   disable=None if self.acc.is_local_main_process else True, dynamic_ncols=True)
        for step, images, labels in self.train_loader.train_batches(s.epoch, s.step):
            lr = self._learning_rate(s.epoch * steps + step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # optim.layer_decay's scale (x 1.0 is exact)
            if self.recipe.model.dropout > 0 or self.recipe.model.drop_path > 0:  # the only randomness inside a step
                torch.manual_seed(step_seed(t.seed, s.epoch, step, self.acc.process_index))
            if self.mixer is not None:  # labels become soft targets (rows summing to 1)
                images, labels = self.mixer(images, labels, step_seed(t.seed, s.epoch, step) ^ augment.MIX_SALT)
            loss = self._step(images, labels, step)
            if loss is not None:
                loss_sum += loss
                counted += 1
            s.step, s.global_step = step + 1, s.global_step + 1
            self._timer.after_step()
            if self._lock is not None:
                self._lock.beat()  # one clock read, a write every lock.HEARTBEAT_SECONDS
            bar.update(1)
            estimate = self._estimate.after_step(s.global_step, s.epoch)
            if estimate and self.acc.is_main_process:
                tqdm.write(estimate)  # above the progress bar when one is shown
                sys.stdout.flush()
            if step % t.log_every == 0:
                self._check_finite()
                bar.set_postfix(loss=f"{loss_sum.item() / max(counted, 1):.3f}", lr=f"{lr:.2e}")
            if self._budget_spent():
                break  # the epoch ends here: it is validated and checkpointed as any other
            if self._stop_requested(step):
                self._check_finite()
                s.partial_loss_sum = partial_sum + self.acc.reduce(loss_sum, reduction="mean").item()
                s.partial_loss_steps = partial_steps + counted
                s.epoch_seconds_before += self._timer.elapsed()
                self.save_checkpoint()
                bar.close()
                raise self._stopped()
        bar.close()
        self._check_finite()
        # Kept in the state until the epoch ends: a stop during its validation checkpoints them, so the
        # resumed epoch's loss is this very sum (its steps are all done: nothing more is added).
        total = partial_sum + self.acc.reduce(loss_sum, reduction="mean").item()
        s.partial_loss_sum, s.partial_loss_steps = total, partial_steps + counted
        return total / max(s.partial_loss_steps, 1)

    def _learning_rate(self, global_step: int, steps_per_epoch: int) -> float:
        """The learning rate of the step about to run: train.epochs' schedule, or that schedule fitted
        onto the budget (a seconds budget also decides here whether this is its last step)."""
        if self.budget is None:
            return learning_rate(self.recipe, global_step, steps_per_epoch)
        if self.budget.total_steps is not None:
            total = self.budget.total_steps
            return budget.learning_rate(self.recipe, global_step / total, (global_step + 1) / total)
        elapsed = self._training_seconds()
        if self._step_started is not None:
            self._seconds_clock.last_step = elapsed - self._step_started
        self._step_started = elapsed
        start, end, last = self._seconds_clock.fractions(elapsed)
        self.state.seconds_budget_spent = last or elapsed >= self.budget.value
        return budget.learning_rate(self.recipe, start, end)

    def _step(self, images, labels, step):
        """One optimizer step; one of the first compiled ones falls back to eager if compilation
        or CUDA-graph capture fails (graph trees record on a later call than the first)."""
        if self.forward.mode == "none" or self._compiled_steps_ran >= compiling.GUARDED_STEPS:
            return self._step_once(images, labels, step)
        try:
            loss = self._step_once(images, labels, step)
        except Exception as exc:  # noqa: BLE001 - compilers raise anything; real errors recur in eager
            self._fall_back_to_eager(exc)
            return self._step_once(images, labels, step)
        self._compiled_steps_ran += 1
        return loss

    def _fall_back_to_eager(self, exc: Exception) -> None:
        self.forward.fall_back_to_eager(exc)
        self.optimizer.zero_grad(set_to_none=True)  # the failed step applied nothing

    def _step_once(self, images, labels, step):
        """One optimizer step over the (per-process) batch, in grad_accum_steps chunks."""
        t = self.recipe.train
        chunks = t.grad_accum_steps
        losses = []
        for i, (x, y) in enumerate(zip(images.chunk(chunks), labels.chunk(chunks))):
            sync = i == chunks - 1
            ctx = self.acc.no_sync(self.model) if not sync else contextlib.nullcontext()
            with ctx:
                logits = self.forward(x)
                loss = self._loss(logits.float(), y)
                self._backward(loss / chunks if chunks > 1 else loss)  # no kernel for a division by 1
            losses.append(loss.detach())
        total = losses[0] if chunks == 1 else torch.stack(losses).mean()
        norm = None
        if self.recipe.optim.grad_clip:
            norm = self.acc.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
        finite = torch.isfinite(total) if norm is None else torch.isfinite(total) & torch.isfinite(norm)
        if t.on_nonfinite == "skip":
            if not bool(finite):  # a sync per step, the price of never applying a bad update
                self.optimizer.zero_grad(set_to_none=True)
                self.state.skipped_steps += 1
                return None
        else:
            # Recorded on the device and checked at log points and before any save, so
            # the hot loop does not wait on the GPU every step.
            first_bad = (self._first_bad < 0) & ~finite
            self._first_bad = torch.where(first_bad, step + 1, self._first_bad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return total

    def _backward(self, loss: torch.Tensor) -> None:
        """The backward pass; an exception in it is named after the variant and its plugin, as one in
        its forward is (model.vit.Attention): the rest of the model is plain PyTorch layers, so a
        failing gradient comes from the variant's code (a custom backward, say)."""
        try:
            self.acc.backward(loss)
        except (AttnzooError, Stopped, torch.cuda.OutOfMemoryError):
            raise  # attnzoo's own, or the machine's: not the variant's fault
        except Exception as exc:  # noqa: BLE001 - a variant is a plugin's code and may raise anything
            label = getattr(self.resolved.kernel, "label", None) or f"variant {self.recipe.attention.name!r}"
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise PluginError(
                f"{label} failed in the backward pass (the gradients of its forward(q, k, v)): "
                f"{type(exc).__name__}: {first_line}. The error is in the variant's code, not attnzoo's; "
                "`attnzoo check-plugin NAME` tests a variant, --debug shows the traceback") from exc

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with label smoothing; against soft targets (Mixup/CutMix, smoothed already by
        the mixer) it is timm's SoftTargetCrossEntropy."""
        if targets.ndim == 2:
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, targets, label_smoothing=self.recipe.optim.label_smoothing)

    def _stop_requested(self, step: int) -> bool:
        """True when a SIGTERM or SIGINT arrived. With several processes they agree through a
        collective every log_every steps (or evaluation batches), so all of them stop at the same one."""
        if self.acc.num_processes > 1 and step % self.recipe.train.log_every:
            return False
        return self._stop_agreed()

    def _stop_agreed(self) -> bool:
        if self.acc.num_processes == 1:
            return self._stop_signal is not None
        flag = torch.tensor(float(self._stop_signal is not None), device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum") > 0)

    def _signal_name(self) -> str:
        # On a process that got no signal itself the others' is named: schedulers send SIGTERM.
        return signal.Signals(self._stop_signal or signal.SIGTERM).name

    def _stopped(self, note: str = "") -> Stopped:
        """The exception for a stop whose checkpoint is saved; the command line adds how to continue.
        `note`: what was cut short besides the training."""
        s = self.state
        where = f"epoch {s.epoch + 1}, step {s.step}" if s.step else f"the end of epoch {s.epoch}"
        folder = checkpoint.checkpoint_name(s.epoch, s.step, len(self.train_loader))
        return Stopped(f"stopped by {self._signal_name()} at {where}; checkpoint {folder} saved in "
                       f"{self.run_dir / 'checkpoints'}" + (f"; {note}" if note else ""))

    def _check_finite(self) -> None:
        bad = int(self._first_bad)
        if bad >= 0:
            raise NonFiniteLoss(
                f"non-finite loss or gradient at epoch {self.state.epoch + 1}, step {bad} with variant "
                f"{self.recipe.attention.name!r}. The run stopped; the last good checkpoint is kept and nothing "
                "after that step was saved. Lower optim.lr, set optim.grad_clip, or set train.on_nonfinite=skip.",
                epoch=self.state.epoch + 1, step=bad)

    def _end_epoch(self, train_loss: float, val: dict | None, measured: float) -> None:
        """`measured`: the seconds this process timed the epoch's steps (a resumed epoch: since the resume)."""
        s = self.state
        steps_done = s.step  # all of the epoch's steps, or the part of its last one that a budget allows
        s.epoch, s.step = s.epoch + 1, 0
        seconds = s.epoch_seconds_before + measured
        s.epoch_seconds_before = 0.0
        s.partial_loss_sum, s.partial_loss_steps = 0.0, 0
        s.train_seconds += seconds
        top1 = val["top1"] if val else -train_loss
        improved = top1 > s.best_top1
        if improved:
            s.best_top1, s.best_epoch, s.epochs_without_gain = top1, s.epoch, 0
            if self.acc.is_main_process:
                checkpoint.save_weights(self._kept_weights(), self.run.best_weights)
        else:
            s.epochs_without_gain += 1
        images = steps_done * self.recipe.train.batch_size
        row = {"epoch": s.epoch, "train_loss": train_loss,
               "val_loss": val["loss"] if val else None, "val_top1": val["top1"] if val else None,
               "val_top5": val["top5"] if val else None,
               "lr": max(g["lr"] for g in self.optimizer.param_groups), "epoch_seconds": seconds,
               "images_per_sec": images / seconds,
               # steady speed over the steps this process timed
               **self._timer.split(images * self._timer.epoch_steps / steps_done, measured),
               "compile": self.forward.mode, "peak_memory_mib": peak_memory_mib(self.acc.device),
               "skipped_steps": s.skipped_steps}
        s.history.append(row)
        self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=s.epoch)
        if self.acc.is_main_process:
            self.run.append_metrics(row)
            val_text = f"val top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f}" if val else "no validation split"
            print(f"epoch {s.epoch}/{self.recipe.train.epochs}: train loss {train_loss:.4f}, {val_text}, "
                  f"{seconds:.1f}s ({row['images_per_sec']:.0f} img/s)", flush=True)
        self.save_checkpoint()

    def _rewrite_metrics(self) -> None:
        """After a resume, metrics.jsonl holds exactly the epochs the checkpoint has seen."""
        if self.acc.is_main_process:
            self.run.rewrite_metrics(self.state.history)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, loader: Loader) -> dict:
        """The classification report of `loader`'s split; a stop signal ends it before the next batch
        (_EvaluationStopped), so a long validation or test never delays a stop."""
        return self.forward.evaluate(_StopCheckedLoader(loader, self._stop_requested), self.splits.classes)

    def validate(self) -> dict:
        """The validation report of the weights the run keeps: the average when train.ema_decay is on."""
        if self.ema is None:
            return self.evaluate(self.val_loader)
        with self.ema.swapped_in():
            return self.evaluate(self.val_loader)

    def _kept_weights(self) -> dict:
        """The weights kept as the run's best: the average when train.ema_decay is on."""
        return self.ema.state if self.ema is not None else self.raw_model.state_dict()

    def finish(self) -> dict:
        """Test the best-on-validation weights and write what the run produced, the results
        before anything that runs plugin code (the attention analysis), so a failure there
        never costs a run its weights or test metrics.

        A signal during the test evaluation stops the run unfinished (a resume tests again); one
        during the analysis or the cost, which take seconds, is acted on once they are written."""
        try:
            report = self.test()
        except _EvaluationStopped:
            raise self._stopped("the test evaluation was cut short; a resume runs it again") from None
        if self.acc.is_main_process:
            self.save_weights()
            self.write_results(report)
            self.analyse_attention()
            self.write_cost(report)
            print(f"test top1 {report['top1']:.4f} top5 {report['top5']:.4f} "
                  f"({report['samples']} images) -> {self.run_dir}", flush=True)
        self.acc.wait_for_everyone()
        if self._stop_agreed():  # a study must not go on to its next run
            raise Stopped(f"stopped by {self._signal_name()} as the run finished; its results are saved in {self.run_dir}")
        return report

    def test(self) -> dict:
        """Load the best-on-validation weights (when there are any) and evaluate them on the test
        split: the test metrics with what the run was and how it trained (test_metrics.json)."""
        best = self.run.best_weights
        if best.exists():
            self.raw_model.load_state_dict(checkpoint.load_weights(best))
        elif self.ema is not None:
            self.raw_model.load_state_dict(self.ema.state)
        report = self.evaluate(self.test_loader)
        report.update(self._training_summary())
        return report

    def _training_summary(self) -> dict:
        """What the run was and how it trained, kept beside its test metrics."""
        s, n = self.state, max(len(self.state.history), 1)
        return {
            "variant": self.recipe.attention.name, "attention_options": self.recipe.attention.options,
            "seed": self.recipe.train.seed, "parameters": count_parameters(self.raw_model),
            # The held-out split's name as the source has it: an image folder's test/ or val/, say.
            "test_split": held_out_split(self.recipe.data),
            "epochs_trained": len(s.history), "best_epoch": s.best_epoch, "train_seconds": s.train_seconds,
            "mean_epoch_seconds": s.train_seconds / n,
            "images_per_sec": sum(r["images_per_sec"] for r in s.history) / n,
            "warmup_seconds": sum(r.get("warmup_seconds") or 0.0 for r in s.history), "compile": self.forward.mode,
            # train_seconds split: compile (and warm-up) time apart from steady training (EpochTimer.split)
            "compile_seconds": sum(r.get("compile_seconds") or 0.0 for r in s.history),
            "steady_seconds": sum(r.get("steady_seconds", r["epoch_seconds"]) for r in s.history),
            "peak_memory_mib": peak_memory_mib(self.acc.device), "skipped_steps": s.skipped_steps,
            "world_size": self.acc.num_processes,
            # Which weights were tested and saved as model.safetensors: the trained ones, or their average.
            "weights": "ema" if self.ema is not None else "trained",
            # train.budget, what it came to and the steps taken (a run without one has no such key).
            **({"budget": {**self.budget.record(), "steps_taken": s.global_step}} if self.budget else {})}

    def save_weights(self) -> None:
        """model.safetensors: the tested weights, named with their variant."""
        checkpoint.save_weights(self.raw_model.state_dict(), self.run.final_weights,
                                {"variant": self.recipe.attention.name})

    def write_results(self, report: dict) -> None:
        """test_metrics.json, which also marks the run finished."""
        self.run.write_test_metrics(report)

    def analyse_attention(self) -> None:
        """attention.json and its images; runs plugin code, so a failure is a warning, not an error."""
        from attnzoo.run.analysis import attention_analysis_or_warning

        attention_analysis_or_warning(self.raw_model, self.test_loader, self.run_dir, self.recipe)

    def write_cost(self, report: dict) -> None:
        """cost.json: FLOPs per image, time and memory."""
        images_seen = len(self.train_loader) * self.recipe.train.batch_size * report.get("epochs_trained", 0)
        if self.budget is not None:  # its last epoch may be partial
            images_seen = self.state.global_step * self.recipe.train.batch_size
        cost.write_cost(self.raw_model, self.recipe.model.image_size, report, images_seen, self.run_dir)


class _EvaluationStopped(Exception):
    """A stop signal arrived during an evaluation: raised between its batches, turned into Stopped
    by the trainer (which knows what to save)."""


class _StopCheckedLoader:
    """A loader whose evaluation batches end early when a stop is requested (`stop_requested(i)`:
    the trainer's check before batch i, the one training makes before a step; with several
    processes a collective every log_every batches, not a device sync per batch, and each process
    evaluates the same number of batches, so they check in step)."""

    def __init__(self, loader: Loader, stop_requested):
        self._loader, self._stop_requested = loader, stop_requested

    def eval_batches(self, *args, **kwargs):
        for i, batch in enumerate(self._loader.eval_batches(*args, **kwargs)):
            if self._stop_requested(i):
                raise _EvaluationStopped
            yield batch

    def __getattr__(self, name):
        return getattr(self._loader, name)


class EpochTimer:
    """Epoch seconds, with the first steps a process runs timed apart: they hold compilation
    and CUDA-graph capture (and cuDNN/cuBLAS warm-up), which are not the steady speed."""

    WARMUP_STEPS = eta.WARMUP_STEPS  # the same steps the time estimate leaves out: one sync serves both

    def __init__(self, device: torch.device, clock=time.perf_counter):
        self.clock = clock  # seconds; a test of a seconds budget gives a clock of its own
        self.device, self.steps_seen, self.warmup_seconds = device, 0, None
        self.started, self._epoch_steps, self._warmup_epoch_steps = 0.0, 0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start_epoch(self) -> None:
        self._epoch_steps, self.started = 0, self.clock()

    def after_step(self) -> None:
        self.steps_seen += 1
        self._epoch_steps += 1
        if self.steps_seen == self.WARMUP_STEPS:  # one synchronisation per process, not per step
            self._sync()
            self.warmup_seconds, self._warmup_epoch_steps = self.clock() - self.started, self._epoch_steps

    def end_epoch(self) -> float:
        return self.elapsed()

    def elapsed(self) -> float:
        """Seconds since the epoch (or its resumed part) started."""
        self._sync()
        return self.clock() - self.started

    @property
    def epoch_steps(self) -> int:
        """The steps timed since the epoch (or its resumed part) started."""
        return self._epoch_steps

    def split(self, images: int, seconds: float) -> dict:
        """{warmup_seconds, steady_images_per_sec, compile_seconds, steady_seconds} for the epoch
        that just ended: the warm-up belongs to the epoch in which it happened; later epochs are
        all steady. compile_seconds is the warm-up steps' time beyond what as many steady steps
        take; steady_seconds = seconds - compile_seconds, the epoch as if compiled already."""
        warm_here = self.warmup_seconds is not None and self.steps_seen - self._epoch_steps < self.WARMUP_STEPS
        if not warm_here:
            return {"warmup_seconds": 0.0, "steady_images_per_sec": images / seconds,
                    "compile_seconds": 0.0, "steady_seconds": seconds}
        steady_steps = self._epoch_steps - self._warmup_epoch_steps
        steady_seconds = seconds - self.warmup_seconds
        steady = images * steady_steps / self._epoch_steps / steady_seconds if steady_steps and steady_seconds > 0 else None
        # Without steady steps to compare with, the whole warm-up counts as compile time.
        per_step = steady_seconds / steady_steps if steady_steps and steady_seconds > 0 else 0.0
        compile_seconds = max(self.warmup_seconds - self._warmup_epoch_steps * per_step, 0.0)
        return {"warmup_seconds": self.warmup_seconds, "steady_images_per_sec": steady,
                "compile_seconds": compile_seconds, "steady_seconds": seconds - compile_seconds}


def peak_memory_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _flat_config(recipe: Recipe) -> dict:
    return {k: v for k, v in flatten(recipe.to_dict()).items() if isinstance(v, (int, float, str, bool))}


def train(recipe: Recipe, resume: Resume = Resume.NO, lock: run_lock.RunLock | None = None, **kwargs) -> dict:
    return Trainer(recipe, **kwargs).fit(resume, lock)
