"""The run core every trainer is built on: run directory, seeding and determinism, the policy (model,
tokenizer, LoRA, optimiser, schedule), the step loop with its logs and progress bar, periodic held-out
evaluation, atomic checkpoints and exact resume, and when to stop.

A trainer subclasses :class:`Trainer` and supplies what is its own: ``train_step`` (and, where it has a
held-out set, ``evaluate``); extra networks it keeps (a reference model, a value model) and state of its
own are checkpointed through ``modules()`` and ``trainer_state()``.

The loop, for every trainer::

    start = restore()                    resume: weights, optimiser, RNG, logs cut back to the checkpoint
    evaluate("before")                   a fresh run only
    for step in start .. max_steps:
        seed(seed, step)                 the step's randomness depends on nothing that came before
        result = train_step(step)        the trainer's own work
        log metrics and samples          metrics.jsonl, samples.jsonl
        evaluate every eval_steps        eval.jsonl, eval-step-N.jsonl
        checkpoint every save_steps      records every log's size
        stop at max_train_minutes
    final checkpoint (marked finished)   then the optimiser state is freed
    evaluate("after"); summary.json      a finished run resumed without it runs it
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aha.config import config_to_dict, save_config
from aha.models import drop_row_gradients, fold_row_gradients
from aha.run import RunLayout, RunLogs, World, checkpoint_problem, current_world, load_checkpoint, save_checkpoint
from aha.run.sharding import full_optimizer_state, full_state, is_sharded, shard_model
from aha.run.trackers import Trackers
from aha.utils.console import make_console
from aha.utils.io import remove_directory
from aha.utils.memory import release_free_memory
from aha.utils.signals import GracefulStop


class NonFiniteError(RuntimeError):
    """Training stopped: too many steps in a row had a non-finite loss or gradient."""


@dataclass
class StepResult:
    """What one training step produced: a line of metrics and a few samples to keep."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalResult:
    """A held-out evaluation: its metrics (a line of eval.jsonl) and every graded sample."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""
    """One line for the console."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``: a fixed function of the run seed and the step, so that a step samples the
    same completions whether the run got there in one go or resumed on the way."""
    return zlib.crc32(f"aha:{seed}:{step}".encode()) & 0x7FFFFFFF


def set_determinism(deterministic: bool, threads: int = 0, matmul_precision: str = "highest") -> None:
    """Deterministic kernels (see the ``deterministic`` setting), the CPU thread count and the precision of
    float32 matrix products (process-wide in torch, so set on every run, the default included)."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul_precision)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised memory: a pass
    # over each allocation (a tenth of a CPU step, mostly page faults on fresh memory) that changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False


class Policy:
    """The model being trained, with its tokenizer, optimiser and learning-rate schedule."""

    def __init__(self, model: torch.nn.Module, tokenizer, optimizer: torch.optim.Optimizer, scheduler,
                 world: World | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.world = world or current_world()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sharded = is_sharded(model)
        self.skipped = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        drop_row_gradients(self.model)

    def step(self, max_grad_norm: float, loss: float | None = None) -> float:
        """Clip the gradient norm (0: no clipping), take an optimiser and a scheduler step; returns the
        norm before clipping. A non-finite loss or gradient skips the update (gradients dropped, weights,
        optimiser and schedule untouched) and sets ``skipped``. In a distributed run the gradients are first
        summed over ranks (``loss``: already the global one), so every rank takes the same step; a sharded
        model's were summed by the backward pass itself (reduce-scatter), and each rank steps its shard."""
        fold_row_gradients(self.model)  # the input embedding's rows (aha.models.sparse_embedding_gradients)
        if not self.sharded:
            self.world.all_reduce_gradients(self.params)
        grads = [p for p in self.params if p.grad is not None]
        norm = 0.0
        if grads:
            limit = max_grad_norm if max_grad_norm > 0 else float("inf")
            total = torch.nn.utils.clip_grad_norm_(grads, limit)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)  # sharded: a DTensor
        self.skipped = not math.isfinite(norm) or (loss is not None and not math.isfinite(loss))
        if self.skipped:
            self.zero_grad()
            return norm
        self.optimizer.step()
        self.scheduler.step()
        self.zero_grad()  # the gradients' memory is free while the next rollouts are sampled
        release_free_memory()
        return norm


def adamw(params: list[torch.nn.Parameter], lr: float, config) -> torch.optim.AdamW:
    """AdamW with the betas and weight decay of ``config``; the fused kernel (one pass over each tensor: ~5x
    faster than the per-op update on a CPU, 0.05 against 0.29 s for 135M parameters) on plain CPU or CUDA
    tensors, the default implementation for sharded (DTensor) ones."""
    plain = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.weight_decay, fused=plain or None)


def build_policy(config, total_optimizer_steps: int, model_source: str | None = None) -> Policy:
    """Load the model named by ``config.model`` (or ``model_source``), add LoRA adapters when
    ``lora_rank > 0``, and make its AdamW optimiser and schedule (fields of ``ModelSection``,
    ``TuningSection`` and ``OptimSection``)."""
    import transformers
    from transformers import get_scheduler

    from aha.models import apply_lora, load_model, sparse_embedding_gradients
    from aha.models.checkpointing import enable_checkpointing
    from aha.models.linear import accumulate_weight_gradients

    transformers.utils.logging.disable_progress_bar()
    model, tokenizer = load_model(model_source or config.model, dtype=config.dtype, device=config.device,
                                  seed=config.seed)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if config.lora_rank > 0:
        model = apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout)
    world = current_world()
    if config.fsdp and world.distributed:  # the optimiser then holds each rank's shards
        model = shard_model(model, world)
    else:
        sparse_embedding_gradients(model)  # the optimiser gets it dense (Policy.step)
        accumulate_weight_gradients(model)  # micro-batch weight gradients added in place
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config.learning_rate, config)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=max(total_optimizer_steps, 1))
    return Policy(model, tokenizer, optimizer, scheduler)


class Trainer(ABC):
    """The loop and everything around it (see the module docstring); subclasses supply ``train_step``."""

    progress_label = "train"

    def __init__(self, config, layout: RunLayout, policy: Policy, *, console: Console | None = None):
        self.config = config
        self.layout = layout
        self.policy = policy
        self.world = current_world()
        self.console = console or make_console()
        if not self.world.is_main:  # one process speaks and writes for the run
            self.console = Console(quiet=True)
        self.logs = RunLogs(layout, write=self.world.is_main)
        self.train_seconds = 0.0
        self.trackers: Trackers | None = None

    # --- what a trainer supplies -------------------------------------------------------------------
    @abstractmethod
    def train_step(self, step: int) -> StepResult:
        """One step of training; ``step`` counts from 0."""

    def evaluate(self, step: int) -> EvalResult | None:
        """The held-out evaluation (None: this trainer has none)."""
        return None

    def modules(self) -> dict[str, torch.nn.Module]:
        """Networks besides the policy that a checkpoint must hold (e.g. a reference model)."""
        return {}

    def trainer_state(self) -> dict[str, Any]:
        """The trainer's own state to checkpoint (plain data)."""
        return {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        pass

    def describe_step(self, step: int, metrics: dict[str, Any]) -> str:
        return f"step {step}/{self.config.max_steps}"

    def trainable_parameters(self) -> int:
        """Weights the optimisers update (the policy's, and any other network's that trains)."""
        return sum(p.numel() for p in self.policy.params)

    def budget_spent(self) -> str | None:
        """Why training should stop before max_steps (a trainer's own budget), or None."""
        return None

    def progress_status(self, metrics: dict[str, Any]) -> str:
        return ""

    # --- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or the time limit), resuming when asked; returns summary.json's content."""
        c = self.config
        start, finished = self.restore() if c.resume else (0, False)
        if self.world.is_main:
            if start == 0:
                self.layout.clear()
            save_config(c, self.layout.config)
        self.world.barrier()
        if finished:
            left = "nothing left to do"
            if self.world.any(not self._evaluated_after(start)):  # killed in its final evaluation: run it again
                self.release_training_state()
                if self.run_evaluation(start, "after") is not None:
                    left = "its final evaluation had not, and has now run"
            self.console.log(f"{self.layout.root}: the run finished at step {start}; {left}")
            return self.summarise(start)
        if getattr(c, "report_to", None) and self.world.is_main:
            self.trackers = Trackers(c.report_to, self.layout.root, config_to_dict(c))
        try:
            return self._loop(start)
        finally:
            if self.trackers is not None:
                self.trackers.close()

    def _loop(self, start: int) -> dict[str, Any]:
        c = self.config
        if start == 0 and c.eval_before:
            self.run_evaluation(0, "before")
        step = start
        self.console.log(f"run directory: {self.layout.root}  (steps {start}..{c.max_steps})")
        stopped = None
        with GracefulStop(self.console, "this step") as stop, self._progress() as progress:
            bar = progress.add_task(self.progress_label, total=c.max_steps, completed=start, status="")
            while step < c.max_steps:
                t0 = time.perf_counter()
                seed_everything(step_seed(c.seed, step))
                result = self.train_step(step)
                step += 1
                self.train_seconds += time.perf_counter() - t0
                self.logs.metrics.append({"step": step, **result.metrics})
                if self.trackers:
                    self.trackers.log({"step": step, **result.metrics}, "train/")
                self.logs.samples.append(*({"step": step, **s} for s in result.samples))
                self.console.log(self.describe_step(step, result.metrics))
                progress.update(bar, advance=1, status=self.progress_status(result.metrics))
                self.check_numerics(step, result.metrics)
                if self.world.any(stop.requested):  # every rank stops after the same step
                    stopped = stop.signal_name or "a signal to another process"
                    break
                out_of_time = self.world.any(bool(c.max_train_minutes) and
                                             self.train_seconds > 60 * c.max_train_minutes)
                spent = self.budget_spent()
                if step == c.max_steps or out_of_time or spent:
                    if out_of_time:
                        self.console.log(f"max_train_minutes={c.max_train_minutes} reached after step {step}")
                    if spent:
                        self.console.log(f"{spent} after step {step}")
                    break
                if c.eval_steps and step % c.eval_steps == 0:
                    self.run_evaluation(step, f"step {step}")
                if c.save_steps and step % c.save_steps == 0:
                    self.save(step)
        if stopped:
            path = self.save(step)
            self.console.log(f"stopped by {stopped} after step {step}; checkpoint {path}. Resume with: "
                             f"aha {c.command} {self.layout.config} resume=true")
            return self.summarise(step, stopped=stopped)
        self.save(step, finished=True)  # the trained model is safe before the final evaluation runs
        self.release_training_state()
        self.run_evaluation(step, "after")
        return self.summarise(step)

    def release_training_state(self) -> None:
        """Free what only further steps would use, once the run's last checkpoint is written: the optimiser's
        state (AdamW's two moments: twice the trained weights; every step already frees its gradients), so that
        the final evaluation's memory does not add to it."""
        for learner in self.learners():
            learner.optimizer.state.clear()
        release_free_memory()

    def learners(self) -> list[Policy]:
        """The networks this trainer optimises, each with its optimiser: the policy (PPO adds its critic)."""
        return [self.policy]

    def _evaluated_after(self, step: int) -> bool:
        """Whether the held-out evaluation after the final ``step`` is in the logs (a finished run's last
        checkpoint comes before it)."""
        return any(e.get("label") == "after" and e.get("step") == step for e in self.logs.evals.read())

    def check_numerics(self, step: int, metrics: dict[str, Any]) -> None:
        """Count steps skipped for a non-finite loss or gradient; too many in a row stop the run (the weights
        were never updated with them, so the last checkpoint is good)."""
        if not metrics.get("nonfinite_skipped"):
            self.bad_steps = 0
            return
        self.bad_steps = getattr(self, "bad_steps", 0) + 1
        self.console.log(f"step {step}: non-finite loss or gradient; the update was skipped "
                         f"({self.bad_steps} in a row; examples {metrics.get('nonfinite_examples', [])[:8]})")
        if self.bad_steps >= self.config.max_nonfinite_steps:
            last = self.layout.latest_checkpoint()
            raise NonFiniteError(f"{self.bad_steps} steps in a row had a non-finite loss or gradient (the last: step "
                                 f"{step}); stopped. The last good checkpoint is {last or 'none (no checkpoint yet)'}; "
                                 "lower the learning rate or check the rewards and data, then resume from it")

    def run_evaluation(self, step: int, label: str) -> dict[str, Any] | None:
        result = self.evaluate(step)
        if result is None:
            return None
        self.logs.evals.append({"step": step, "label": label, **result.metrics})
        if self.trackers:
            self.trackers.log({"step": step, **result.metrics}, "heldout/")
        self.logs.write_eval_samples(step, result.samples)
        self.console.log(f"held-out {label}: {result.summary}")
        return result.metrics

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self, step: int, finished: bool = False):
        """Checkpoint ``step``; in a distributed run rank 0 writes it (the weights and optimiser state are the
        same on every rank) while the others wait, and it loads on any number of ranks."""
        p = self.policy
        path = self.layout.checkpoint(step)
        gathered = None
        if p.sharded:  # every rank takes part in gathering the full state; rank 0 writes it
            gathered = {"model": full_state(p.model), "optimizer": full_optimizer_state(p.model, p.optimizer),
                        "modules": {name: full_state(m) for name, m in self.modules().items() if is_sharded(m)}}
        if self.world.is_main:
            state = {"train_seconds": self.train_seconds, "log_sizes": self.logs.sizes(), "finished": finished,
                     "trainer": self.trainer_state(), "world_size": self.world.world_size}
            path = save_checkpoint(self.layout, step, model=p.model, tokenizer=p.tokenizer, optimizer=p.optimizer,
                                   scheduler=p.scheduler, modules=self.modules(), state=state,
                                   keep=self.config.keep_checkpoints, gathered=gathered)
        self.world.barrier()
        return path

    def restore(self) -> tuple[int, bool]:
        """Load the latest checkpoint and cut the logs back to it: (its step, whether the run had finished).
        Without a checkpoint the run starts again from step 0 in a clean directory."""
        path = self.trusted_checkpoint() if self.world.is_main else None
        path = self.world.broadcast(None if path is None else str(path))
        path = None if path is None else Path(path)
        if path is None:
            self.console.log(f"resume: no checkpoint in {self.layout.root}; starting again from step 0")
            return 0, False
        p = self.policy
        state = load_checkpoint(path, model=p.model, optimizer=p.optimizer, scheduler=p.scheduler,
                                modules=self.modules())
        self.train_seconds = state.get("train_seconds", 0.0)
        self.logs.restore(state.get("log_sizes", {}), state["step"], finished=bool(state.get("finished")))
        if self.world.is_main:
            self.layout.summary.unlink(missing_ok=True)
        self.load_trainer_state(state.get("trainer", {}))
        self.console.log(f"resumed from {path} at step {state['step']}")
        return state["step"], bool(state.get("finished")) and state["step"] >= self.config.max_steps

    def trusted_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match its manifest; a damaged one is reported and renamed
        ``step-N.damaged`` (kept for inspection, never loaded)."""
        for _, path in reversed(self.layout.checkpoint_dirs()):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            damaged = path.with_name(path.name + ".damaged")
            remove_directory(damaged)
            path.rename(damaged)
            self.console.log(f"checkpoint {path} is damaged ({problem}); set aside as {damaged.name}, trying the one "
                             "before it")
        return None

    # --- output ------------------------------------------------------------------------------------
    def summarise(self, step: int, stopped: str | None = None) -> dict[str, Any]:
        """summary.json: steps, time, peak memory, and the first and last held-out evaluations."""
        evals = self.logs.evals.read()
        before = next((e for e in evals if e.get("label") == "before"), None)
        after = next((e for e in reversed(evals) if e.get("label") == "after"), None)
        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        summary = {"run_dir": str(self.layout.root), "steps": step, "train_seconds": self.train_seconds,
                   "peak_rss_gb": round(peak_rss_gb, 2), "trainable_parameters": self.trainable_parameters(),
                   "before": _strip(before), "after": _strip(after)}
        if stopped:
            summary["stopped"] = stopped
        self.logs.write_summary(summary)
        return summary

    def _progress(self) -> Progress:
        """A progress bar on a terminal (step, status, time left); plain log lines elsewhere."""
        return Progress(TextColumn(f"[bold]{self.progress_label}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=self.console, disable=not self.console.is_terminal)


def _strip(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: v for k, v in record.items() if k not in ("step", "label")}
