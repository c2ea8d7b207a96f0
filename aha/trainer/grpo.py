"""The GRPO loop: sample a group of completions per prompt, score them with verifiable rewards, turn the
rewards into group-relative advantages, and take clipped policy-gradient steps. No value model.

One training step:
    prompts  = task.batch(step)                           P prompts
    rollouts = policy.generate(each prompt x G)           N = P * G completions
    rewards  = weighted verifiable rewards                [N]
    A        = compute_advantages(rewards, G)             [N]
    for mu passes: accumulate policy_loss over micro-batches, clip the gradient, AdamW step
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from transformers import get_scheduler

from aha.algorithms import compute_advantages, micro_batch_weight, policy_loss, token_entropy, token_logprobs
from aha.config import GRPOConfig, save_config
from aha.data.prompts import PromptBuilder
from aha.data.tasks import Task, make_task
from aha.eval.heldout import evaluate_heldout
from aha.models import apply_lora, is_peft, load_model
from aha.rewards import build_rewards, follows_format, score
from aha.rollout import HFBackend, SamplingParams
from aha.trainer.forward import completion_logits
from aha.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from aha.trainer.metrics import JsonlLog, mean, std
from aha.types import TrainBatch, build_train_batch

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it would overwrite a run, or has nothing to resume)."""


def prepare_run_dir(config: GRPOConfig) -> Path:
    run_dir = Path(config.output_dir or time.strftime("runs/%Y%m%d-%H%M%S"))
    if not config.resume and ((run_dir / "metrics.jsonl").exists() or latest_checkpoint(run_dir)):
        raise RunDirError(f"{run_dir} already holds a run; continue it with resume=true, or pick another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@dataclass
class StepResult:
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]


class GRPOTrainer:
    def __init__(self, config: GRPOConfig, *, task: Task | None = None, console: Console | None = None):
        self.config = c = config
        self.console = console or _console()
        self.run_dir = prepare_run_dir(c)
        transformers.utils.logging.disable_progress_bar()
        if c.threads:
            torch.set_num_threads(c.threads)
        _seed_everything(c.seed)
        self.model, self.tokenizer = load_model(c.model, dtype=c.dtype, device=c.device, seed=c.seed)
        if c.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.config.use_cache = False
        if c.lora_rank > 0:
            self.model = apply_lora(self.model, c.lora_rank, c.lora_alpha, c.lora_dropout)
        self.reference = self._make_reference()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                           weight_decay=c.weight_decay)
        self.scheduler = get_scheduler(c.lr_scheduler, self.optimizer, num_warmup_steps=c.warmup_steps,
                                       num_training_steps=max(c.max_steps * c.num_iterations, 1))
        self.backend = HFBackend(self.model, self.tokenizer, c.generation_batch_size)
        self.prompts = PromptBuilder(self.tokenizer, c.prompt_template, c.system_prompt, c.prefill, c.use_chat_template)
        self.task = task or make_task(c.task, c.task_options, c.eval_size, c.seed, c.field_map, c.eval_dataset)
        self.rewards = build_rewards(c.rewards)
        self.metrics_log = JsonlLog(self.run_dir / "metrics.jsonl")
        self.samples_log = JsonlLog(self.run_dir / "samples.jsonl")
        self.eval_log = JsonlLog(self.run_dir / "eval.jsonl")
        self.device = next(self.model.parameters()).device
        self.train_seconds = 0.0

    def _make_reference(self) -> torch.nn.Module | None:
        """A frozen copy of the initial policy, only when the KL term needs it (LoRA uses the base model)."""
        if self.config.beta <= 0 or is_peft(self.model):
            return None
        reference = copy.deepcopy(self.model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        return reference

    # --- the loop ----------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        c = self.config
        start = self._resume() if c.resume else 0
        save_config(c, self.run_dir / "config.yaml")
        before = self.evaluate(0, "before") if c.eval_before and start == 0 and c.eval_size else None
        step, last_saved = start, start
        self.console.log(f"run directory: {self.run_dir}  (steps {start}..{c.max_steps})")
        with self._progress() as progress:
            bar = progress.add_task("train", total=c.max_steps, completed=start, status="")
            while step < c.max_steps:
                t0 = time.perf_counter()
                result = self.train_step(step)
                step += 1
                self.train_seconds += time.perf_counter() - t0
                self._maybe_sync_reference(step)
                self.metrics_log.write({"step": step, **result.metrics})
                for sample in result.samples:
                    self.samples_log.write({"step": step, **sample})
                self._print_step(step, result.metrics)
                progress.update(bar, advance=1, status=f"reward {result.metrics['reward']:.3f}")
                if c.save_steps and step % c.save_steps == 0:
                    self.save(step)
                    last_saved = step
                if c.eval_steps and step % c.eval_steps == 0 and step < c.max_steps:
                    self.evaluate(step, f"step {step}")
                if c.max_train_minutes and self.train_seconds > 60 * c.max_train_minutes:
                    self.console.log(f"max_train_minutes={c.max_train_minutes} reached after step {step}")
                    break
        if last_saved != step:
            self.save(step)
        after = self.evaluate(step, "after") if c.eval_size else None
        return self._summarise(before, after, step)

    def train_step(self, step: int) -> StepResult:
        c = self.config
        t0 = time.perf_counter()
        examples = self.task.batch(step, c.prompts_per_step)
        prompt_ids, cut = self._tokenize_prompts([ex["question"] for ex in examples])
        group_prompts = [ids for ids in prompt_ids for _ in range(c.group_size)]
        params = SamplingParams(c.max_completion_length, c.temperature, c.top_p, tuple(c.stop_strings))
        generations = self.backend.generate(prompt_ids, params, self.prompts.prefill, num_samples=c.group_size)
        t_generated = time.perf_counter()

        completions = [g.text for g in generations]
        keys = sorted({k for ex in examples for k in ex})
        columns = {k: [ex.get(k) for ex in examples for _ in range(c.group_size)] for k in keys}
        columns["completion_ids"] = [g.token_ids for g in generations]  # token lengths for length rewards
        scored = score(self.rewards, completions, columns)
        rewards = _fill_unscored(scored.total, c.group_size)  # [N]
        advantages = compute_advantages(rewards, c.group_size, c.advantage_scale)  # [N]
        batch = build_train_batch(group_prompts, [g.token_ids for g in generations], advantages,
                                  self.backend.pad_id, c.group_size)
        t_scored = time.perf_counter()
        train_stats = self.optimise(batch)
        t_done = time.perf_counter()

        lengths = [len(g.token_ids) for g in generations]
        grouped = rewards.view(-1, c.group_size)
        formatted = [follows_format(t) for t in completions]
        metrics: dict[str, Any] = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **{f"reward/{k}": mean([v for v in vals if v is not None]) for k, vals in scored.per_reward.items()},
            **{f"reward_std/{k}": std([v for v in vals if v is not None]) for k, vals in scored.per_reward.items()},
            **{f"reward_failures/{k}": scored.failures.get(k, 0) for k in scored.per_reward},
            "format_rate": mean([float(f) for f in formatted]),
            "completion_length": mean(lengths), "completion_length_max": max(lengths),
            "truncated_rate": mean([float(g.finish_reason == "length") for g in generations]),
            "zero_std_groups": float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean()),
            "unscored": sum(r is None for r in scored.total), "reward_failures": sum(scored.failures.values()),
            "prompts_truncated": cut, "prompt_length": mean([len(p) for p in prompt_ids]),
            **train_stats,
            "lr": self.scheduler.get_last_lr()[0],
            "step_time": t_done - t0, "generation_time": t_generated - t0, "train_time": t_done - t_scored,
            "generated_tokens_per_s": sum(lengths) / max(t_generated - t0, 1e-9),
            "train_tokens_per_s": float(batch.attention_mask.sum()) / max(t_done - t_scored, 1e-9),
        }
        samples = [{"question": columns["question"][i], "completion": completions[i], "reward": scored.total[i],
                    **{f"reward/{k}": v[i] for k, v in scored.per_reward.items()},
                    "advantage": float(advantages[i]), "finish_reason": generations[i].finish_reason}
                   for i in range(min(c.log_completions, len(completions)))]
        return StepResult(metrics, samples)

    # --- optimisation ------------------------------------------------------------------------------
    def optimise(self, batch: TrainBatch) -> dict[str, float]:
        """mu optimiser steps on one rollout batch; returns loss statistics of the last pass."""
        c = self.config
        num_tokens = int(batch.completion_mask.sum())
        micro = [batch.select(rows) for rows in self._micro_batch_rows(batch)]
        if c.num_iterations > 1 or c.beta > 0:
            self._fill_reference_logprobs(micro)
        stats: dict[str, float] = {"trained_sequences": float(sum(mb.size for mb in micro))}
        for _ in range(c.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            entropy_sum = 0.0
            trained_tokens = sum(float(m.completion_mask.sum()) for m in micro)
            for mb in micro:
                logits = self._logits(self.model, mb)  # [m, C, V]
                logprobs = token_logprobs(logits, mb.completion_ids)  # [m, C]
                entropy_sum += float((token_entropy(logits.detach()) * mb.completion_mask).sum())
                old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
                loss, mb_stats = policy_loss(logprobs, old, mb.advantages, mb.completion_mask, loss_type=c.loss_type,
                                             eps_low=c.eps_low, eps_high=c.eps_high, beta=c.beta,
                                             ref_logprobs=mb.ref_logprobs,
                                             max_completion_length=c.max_completion_length)
                weight = micro_batch_weight(c.loss_type, mb.completion_mask, batch.size, num_tokens)
                (loss * weight).backward()
                share = float(mb.completion_mask.sum()) / max(trained_tokens, 1)  # token-weighted stats
                for k, v in mb_stats.items():
                    sums[k] = sums.get(k, 0.0) + (v * weight if k == "loss" else v * share)
            grad_norm = self._clip_gradients()
            self.optimizer.step()
            self.scheduler.step()
            stats.update(sums, grad_norm=grad_norm, entropy=entropy_sum / max(trained_tokens, 1))
        return stats

    def _clip_gradients(self) -> float:
        grads = [p for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(grads, limit))

    def _micro_batch_rows(self, batch: TrainBatch) -> list[torch.Tensor]:
        """Rows to train on, packed group by group into micro-batches of at most micro_batch_size rows.

        With no KL term a zero-advantage row has exactly zero gradient, so it is skipped (whole groups
        with no reward spread, typically); the loss normalisers still count it, because
        micro_batch_weight divides by the full batch's sizes. Groups stay together so that a micro-batch
        computes each prompt once; longer completions go first so each micro-batch trims its padding.
        """
        c = self.config
        keep = torch.ones(batch.size, dtype=torch.bool) if c.beta > 0 else batch.advantages != 0
        lengths = batch.completion_mask.sum(dim=1)
        groups = [rows for g in batch.group_ids.unique() if (rows := ((batch.group_ids == g) & keep).nonzero().flatten()).numel()]
        groups.sort(key=lambda rows: -float(lengths[rows].max()))
        packed: list[torch.Tensor] = []
        current: list[torch.Tensor] = []
        for rows in groups:
            for part in rows.split(c.micro_batch_size):
                if current and sum(len(r) for r in current) + len(part) > c.micro_batch_size:
                    packed.append(torch.cat(current))
                    current = []
                current.append(part)
        if current:
            packed.append(torch.cat(current))
        return packed

    def _logits(self, model: torch.nn.Module, mb: TrainBatch) -> torch.Tensor:
        share = self.config.share_prompt_prefix and not self.config.gradient_checkpointing
        return completion_logits(model, mb, temperature=self.config.temperature, share_prefix=share)

    @torch.no_grad()
    def _fill_reference_logprobs(self, micro: list[TrainBatch]) -> None:
        c = self.config
        for mb in micro:
            if c.num_iterations > 1:
                mb.old_logprobs = token_logprobs(self._logits(self.model, mb), mb.completion_ids)
            if c.beta > 0:
                if self.reference is not None:
                    logits = self._logits(self.reference, mb)
                else:  # LoRA: the reference is the base model, i.e. the policy with adapters off
                    with self.model.disable_adapter():
                        logits = self._logits(self.model, mb)
                mb.ref_logprobs = token_logprobs(logits, mb.completion_ids)

    # --- helpers -----------------------------------------------------------------------------------
    def _tokenize_prompts(self, questions: list[str]) -> tuple[list[list[int]], int]:
        texts = [self.prompts.build(q) for q in questions]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.config.max_prompt_length
        cut = sum(len(i) > limit for i in ids)
        return [i[-limit:] for i in ids], cut

    def evaluate(self, step: int, label: str) -> dict[str, float]:
        c = self.config
        result = evaluate_heldout(self.backend, self.prompts, self.task.eval_examples(), c.max_completion_length,
                                  tuple(c.stop_strings))
        metrics = result.metrics()
        self.eval_log.write({"step": step, "label": label, "size": len(result.samples), **metrics})
        JsonlLog(self.run_dir / f"eval-step-{step:06d}.jsonl").path.unlink(missing_ok=True)
        sample_log = JsonlLog(self.run_dir / f"eval-step-{step:06d}.jsonl")
        for sample in result.samples:
            sample_log.write(sample)
        self.console.log(f"held-out {label} ({len(result.samples)} problems, greedy): "
                         f"strict {100 * metrics['strict_accuracy']:.1f}%  lenient "
                         f"{100 * metrics['lenient_accuracy']:.1f}%  format {100 * metrics['format_rate']:.1f}%")
        return metrics

    def save(self, step: int) -> Path:
        c = self.config
        keep_reference = self.reference if c.ref_sync_steps else None
        return save_checkpoint(self.run_dir, step, model=self.model, tokenizer=self.tokenizer,
                               optimizer=self.optimizer, scheduler=self.scheduler, reference=keep_reference,
                               extra={"train_seconds": self.train_seconds}, keep=c.keep_checkpoints)

    def _resume(self) -> int:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            self.console.log(f"resume: no checkpoint in {self.run_dir}; starting from step 0")
            return 0
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                reference=self.reference)
        self.train_seconds = state.get("train_seconds", 0.0)
        for log_file in (self.metrics_log, self.samples_log):
            log_file.truncate_after(state["step"])
        self.console.log(f"resumed from {path} at step {state['step']}")
        return state["step"]

    def _maybe_sync_reference(self, step: int) -> None:
        c = self.config
        if self.reference is not None and c.ref_sync_steps and step % c.ref_sync_steps == 0:
            self.reference.load_state_dict(self.model.state_dict())

    def _progress(self) -> Progress:
        """A progress bar on a terminal (step, reward, time left); plain log lines elsewhere."""
        return Progress(TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                        disable=not self.console.is_terminal)

    def _print_step(self, step: int, m: dict[str, Any]) -> None:
        acc = m.get("reward/accuracy")
        acc_text = f" acc {acc:.2f}" if acc is not None and not math.isnan(acc) else ""
        self.console.log(f"step {step}/{self.config.max_steps} reward {m['reward']:.3f}{acc_text} "
                         f"format {m['format_rate']:.2f} len {m['completion_length']:.1f} "
                         f"zero-std {m['zero_std_groups']:.2f} clip {m.get('clip_ratio', 0):.3f} "
                         f"{m['step_time']:.1f}s")

    def _summarise(self, before, after, step: int) -> dict[str, Any]:
        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
        summary = {"run_dir": str(self.run_dir), "steps": step, "train_seconds": self.train_seconds,
                   "peak_rss_gb": round(peak_rss_gb, 2), "before": before, "after": after}
        if before and after:
            self.console.log(
                f"held-out strict accuracy {100 * before['strict_accuracy']:.1f}% -> "
                f"{100 * after['strict_accuracy']:.1f}%, lenient {100 * before['lenient_accuracy']:.1f}% -> "
                f"{100 * after['lenient_accuracy']:.1f}%")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _console() -> Console:
    console = Console(stderr=True, log_path=False)
    if not console.is_terminal:  # logs and CI: one line per record, not wrapped at 80 columns
        console.width = 200
    return console


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fill_unscored(total: list[float | None], group_size: int) -> torch.Tensor:
    """Rewards as a tensor; an unscorable sample takes its group's mean (so its advantage is ~0)."""
    rewards = torch.tensor([math.nan if r is None else float(r) for r in total], dtype=torch.float32)
    grouped = rewards.view(-1, group_size)
    means = torch.nanmean(grouped, dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(torch.isnan(grouped), means, grouped).reshape(-1)
