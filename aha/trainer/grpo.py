"""The GRPO trainer: sample a group of completions per prompt, score them with verifiable rewards, turn
the rewards into group-relative advantages, and take clipped policy-gradient steps. No value model
(Shao et al. 2024, DeepSeekMath; DeepSeek-AI 2025, DeepSeek-R1). Everything else — run directory,
checkpoints, resume, logs, evaluation schedule — is the run core's (:mod:`aha.trainer.core`).

One training step:
    prompts  = task.batch(step)                           P prompts
    rollouts = backend.generate(each prompt x G)          N = P * G completions
    rewards  = weighted verifiable rewards                [N]
    A        = compute_advantages(rewards, G)             [N]
    for mu passes: accumulate policy_loss over micro-batches, clip the gradient, AdamW step, sync the engine
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from aha.algorithms import compute_advantages, policy_loss
from aha.analysis.reflection import ReflectionCounter, rollout_stats
from aha.config import GRPOConfig
from aha.data.prompts import PromptBuilder
from aha.data.tasks import Task
from aha.eval.grading import grade_spec
from aha.eval.heldout import evaluate_heldout
from aha.models import is_peft, reusable_cache
from aha.models.attention import system_prompt_length
from aha.models.linear import bfloat16_weight_copies
from aha.rewards import RewardTerm, follows_format, score
from aha.rollout import Generation, GenerationBackend, HFBackend, SamplingParams
from aha.run import RunLayout, ShardedBackend, current_world, open_run_dir
from aha.run.sharding import full_weights, pad_to_equal
from aha.trainer.core import EvalResult, Policy, StepResult, Trainer, build_policy, seed_everything, set_determinism
from aha.trainer.forward import PromptPass, completion_logprobs, prompt_tokens
from aha.trainer.frozen import load_reference, load_teacher
from aha.trainer.preflight import Inputs, check_inputs
from aha.types import TrainBatch, build_train_batch
from aha.utils.sequences import split_by_positions
from aha.utils.stats import mean, std

ROWS_PER_MICRO_BATCH = 4
"""Micro-batches of short completions hold at most this many times micro_batch_size rows: each row also reads a
copy of its prompt's keys and values, which the completion positions do not count."""


class GRPOTrainer(Trainer):
    """GRPO on the run core; handed its policy, generation backend, task and rewards."""

    progress_label = "GRPO"

    def __init__(self, config: GRPOConfig, layout: RunLayout, policy: Policy, backend: GenerationBackend,
                 task: Task, rewards: list[RewardTerm], *, reference: torch.nn.Module | None = None,
                 teacher: torch.nn.Module | None = None, console=None):
        super().__init__(config, layout, policy, console=console)
        self.teacher = teacher
        self.sampled_completions = 0
        self.backend = backend
        self.task = task
        self.rewards = rewards
        self.reflection = ReflectionCounter(config.reflection_phrases or None)
        self.reference = reference
        self.prompts = PromptBuilder.from_config(policy.tokenizer, config)
        self.grader = grade_spec(task.reward, task.reward_options)
        self.timing: dict[str, float] = {}  # seconds per phase of the current step

    @classmethod
    def from_config(cls, config: GRPOConfig, *, task: Task | None = None, console=None) -> "GRPOTrainer":
        """Check every input (task, rewards, model) before anything heavy, then build the run: directory,
        policy, generation backend, reference model."""
        inputs: Inputs = check_inputs(config, task)
        world = current_world()
        if world.world_size > config.prompts_per_step:
            raise config.error("prompts_per_step", f"{config.prompts_per_step} prompts cannot be split over "
                                                   f"{world.world_size} processes: each samples whole groups")
        layout = open_run_dir(config.output_dir, config.resume)
        set_determinism(config.deterministic, config.threads, config.matmul_precision)
        seed_everything(config.seed)
        policy = build_policy(config, config.max_steps * config.num_iterations, inputs.model_source)
        backend = make_backend(config, policy)
        reference = None
        if config.beta > 0 and not is_peft(policy.model):  # LoRA: the reference is the base model
            reference = load_reference(config, policy, inputs.model_source)
        teacher = load_teacher(config, policy.tokenizer, "on-policy distillation scores the student's tokens and "
                                                          "needs a shared one") if config.teacher else None
        trainer = cls(config, layout, policy, backend, inputs.task, inputs.rewards, reference=reference,
                      teacher=teacher, console=console)
        if inputs.task.skipped:
            trainer.console.log(f"{config.task}: skipped {len(inputs.task.skipped)} malformed rows "
                                f"(on_error=skip); the first: {inputs.task.skipped[0]}")
        return trainer

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    @property
    def loss_beta(self) -> float:
        """The weight of the k3 KL term in the loss."""
        return self.config.beta

    def _rollout_analytics(self, completions, lengths, per_reward) -> dict[str, Any]:
        """Length, reflection and language statistics of the step's responses (aha.analysis.reflection);
        right and wrong by the accuracy reward when the run has one."""
        accuracy = per_reward.get("accuracy")
        correct = [None if r is None else r > 0 for r in accuracy] if accuracy else None
        stats = rollout_stats(completions, lengths, correct, counter=self.reflection)
        return {k: v for k, v in stats.items() if v is not None}

    # --- one step ----------------------------------------------------------------------------------
    def rollout(self, indices: list[int], step: int) -> Rollouts:
        """Sample a group of completions for each of the task's examples ``indices`` and score them. Each
        completion has a seed of its own (run seed, step, example, sample), so it does not depend on the
        batch it was sampled in. In a distributed run each rank samples and scores a contiguous share of the
        groups, and every rank gets all of them back, in order."""
        share = self.world.share(len(indices))
        with full_weights(self.model):  # a sharded model's weights gathered once for decoding
            local = self._rollout_share([indices[i] for i in share], step)
        if not self.world.distributed:
            return local
        parts = self.world.gather([local])
        return sum(parts[1:], parts[0])

    def _rollout_share(self, indices: list[int], step: int) -> Rollouts:
        c = self.config
        examples = [self.task.example(i) for i in indices]
        prompt_ids, cut = self._tokenize_prompts([ex["question"] for ex in examples])
        params = SamplingParams(c.max_completion_length, c.temperature, c.top_p, tuple(c.stop_strings),
                                logprobs=self._wants_sampled_logprobs())
        seeds = [completion_seed(c.seed, step, i, j) for i in indices for j in range(c.group_size)]
        t0 = time.perf_counter()
        generations = self.backend.generate(prompt_ids, params, self.prompts.prefill, num_samples=c.group_size,
                                            seeds=seeds)
        t_generated = time.perf_counter()
        completions = [g.text for g in generations]
        keys = sorted({k for ex in examples for k in ex})
        columns = {k: [ex.get(k) for ex in examples for _ in range(c.group_size)] for k in keys}
        columns["completion_ids"] = [g.token_ids for g in generations]  # token lengths for length rewards
        scored = score(self.rewards, completions, columns) if self.rewards else None
        self.timing["generation"] = self.timing.get("generation", 0.0) + t_generated - t0
        self.timing["scoring"] = self.timing.get("scoring", 0.0) + time.perf_counter() - t_generated
        return Rollouts(list(indices), examples, prompt_ids, generations,
                        scored.total if scored else [0.0] * len(completions),
                        scored.per_reward if scored else {}, dict(scored.failures) if scored else {}, cut,
                        c.group_size)

    def sample_step(self, step: int) -> tuple[Rollouts, dict[str, float]]:
        """The step's rollouts. With dynamic sampling (DAPO, Yu et al. 2025, §3.2), groups whose rewards are all
        equal are dropped and more prompts are sampled, up to dynamic_sampling_rounds extra rounds, until the
        step has prompts_per_step groups with reward spread (or max_completions are sampled)."""
        c = self.config
        first = list(range(step * c.prompts_per_step, (step + 1) * c.prompts_per_step))
        rollouts = self.rollout(first, step)
        if not c.dynamic_sampling:
            return rollouts, {}
        sampled = rollouts.num_groups
        kept = rollouts.select(rollouts.informative_groups())
        for extra in range(c.dynamic_sampling_rounds):
            if kept.num_groups >= c.prompts_per_step:
                break
            if c.max_completions and self.sampled_completions + sampled * c.group_size >= c.max_completions:
                break  # the sampling budget is spent: no round beyond it, as no step starts beyond it
            # extra prompts come from an index range of their own, so a step's draw depends only on (seed, step)
            base = (c.max_steps + step * c.dynamic_sampling_rounds + extra + 1) * c.prompts_per_step
            more = self.rollout(list(range(base, base + c.prompts_per_step)), step)
            sampled += more.num_groups
            kept = kept + more.select(more.informative_groups())
        kept = kept.select(list(range(min(kept.num_groups, c.prompts_per_step))))
        if kept.num_groups == 0:  # nothing informative at all: train on the first draw (zero advantages)
            kept = rollouts
        return kept, {"dynamic/sampled_groups": float(sampled), "dynamic/kept_groups": float(kept.num_groups),
                      "dynamic/oversampling": sampled / c.prompts_per_step}

    def train_step(self, step: int) -> StepResult:
        c = self.config
        t0 = time.perf_counter()
        self.timing: dict[str, float] = {}  # seconds per phase of this step
        rollouts, dynamic_stats = self.sample_step(step)
        generations = rollouts.generations
        sampled = int(dynamic_stats.get("dynamic/sampled_groups", rollouts.num_groups)) * c.group_size
        self.sampled_completions += sampled
        t_generated = time.perf_counter()
        rewards = fill_unscored(rollouts.total, c.group_size)  # [N]
        batch = build_train_batch(rollouts.group_prompts, [g.token_ids for g in generations],
                                  torch.zeros(len(generations)), self.backend.pad_id, c.group_size,
                                  engine_logprobs=[g.logprobs for g in generations])
        truncated = torch.tensor([g.finish_reason == "length" for g in generations])
        if c.mask_truncated:  # DAPO's overlong filtering: a cut-off completion teaches nothing
            batch.completion_mask[truncated] = 0.0
        batch.advantages = self.advantages(rewards, batch, rollouts)
        teacher_stats = self._add_teacher_advantages(batch) if self.teacher is not None else {}
        t_scored = time.perf_counter()
        train_stats = self.optimise(batch)
        if self.reference is not None and c.ref_sync_steps and (step + 1) % c.ref_sync_steps == 0:
            self.reference.load_state_dict(self.model.state_dict())
        t_done = time.perf_counter()

        completions = [g.text for g in generations]
        lengths = [len(g.token_ids) for g in generations]
        grouped = rewards.view(-1, c.group_size)
        per_reward, failures = rollouts.per_reward, rollouts.failures
        metrics: dict[str, Any] = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **{f"reward/{k}": mean(v for v in vals if v is not None) for k, vals in per_reward.items()},
            **{f"reward_std/{k}": std(v for v in vals if v is not None) for k, vals in per_reward.items()},
            **{f"reward_failures/{k}": failures.get(k, 0) for k in per_reward},
            "format_rate": mean(float(follows_format(t)) for t in completions),
            "completion_length": mean(lengths), "completion_length_max": max(lengths),
            "truncated_rate": float(truncated.float().mean()),
            "sampled_completions": sampled, "generated_tokens": sum(lengths),
            "train_tokens": int(batch.attention_mask.sum()) * c.num_iterations,
            "zero_std_groups": float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean()),
            "unscored": sum(r is None for r in rollouts.total), "reward_failures": sum(failures.values()),
            "prompts_truncated": rollouts.prompts_cut, "prompt_length": mean(len(p) for p in rollouts.prompt_ids),
            **self._rollout_analytics(completions, lengths, per_reward),
            **dynamic_stats, **teacher_stats, **train_stats,
            "lr": self.policy.lr,
            "time/step": t_done - t0, "time/sampling": t_generated - t0, "time/training": t_done - t_scored,
            **{f"time/{phase}": seconds for phase, seconds in self.timing.items()},
            "time/generated_tokens_per_s": sum(lengths) / max(t_generated - t0, 1e-9),
            "time/train_tokens_per_s": float(batch.attention_mask.sum()) / max(t_done - t_scored, 1e-9),
        }
        if train_stats["nonfinite_skipped"]:  # which training examples the skipped update came from
            metrics["nonfinite_examples"] = rollouts.indices
        advantage_of = batch.advantages if batch.advantages.dim() == 1 else batch.advantages[:, 0]
        samples = [{"question": rollouts.examples[i // c.group_size]["question"], "completion": completions[i],
                    "reward": rollouts.total[i], **{f"reward/{k}": v[i] for k, v in per_reward.items()},
                    "advantage": float(advantage_of[i]), "finish_reason": generations[i].finish_reason}
                   for i in range(min(c.log_completions, len(completions)))]
        return StepResult(metrics, samples)

    def advantages(self, rewards: torch.Tensor, batch: TrainBatch, rollouts: Rollouts) -> torch.Tensor:
        """The estimator's advantages: ``[N]``, or ``[N, C]`` for per-token ones (reinforce_pp, process)."""
        c = self.config
        token_rewards = token_reward_mask = None
        if c.advantage_estimator == "process":
            token_rewards, token_reward_mask = step_reward_tensors(self.task, rollouts, batch.completion_width)
        return compute_advantages(rewards, c.group_size, c.advantage_estimator,
                                  completion_mask=batch.completion_mask if c.advantage_estimator == "reinforce_pp"
                                  else None, token_rewards=token_rewards, token_reward_mask=token_reward_mask)

    @torch.no_grad()
    def _add_teacher_advantages(self, batch: TrainBatch) -> dict[str, float]:
        """On-policy distillation: each sampled token's advantage gains teacher_weight * (log p_teacher -
        log p_student), the per-token reverse KL whose expectation the student then minimises (Agarwal et al.
        2024, GKD; Thinking Machines 2025, "On-policy distillation"). Turns ``batch.advantages`` per-token.
        The student's log-probs are those its decode loop drew the tokens with, when it sampled them itself
        (:meth:`_sampled_logprobs_are_the_policys`); else a forward of the student."""
        splits, micro = self._scoring_micro_batches(batch)
        if self._sampled_logprobs_are_the_policys() and batch.engine_logprobs is not None:
            students = [mb.engine_logprobs for mb in micro]  # the decode loop's, of the tokens it drew
        else:
            students = self._scored(self.model, batch, micro)  # its prompt cache freed before the teacher's is made
        teacher_prompts = self._prompt_pass(self.teacher, batch, micro)
        gap = torch.zeros_like(batch.completion_mask)  # [N, C]
        for rows, mb, student in zip(splits, micro, students):
            teacher = completion_logprobs(self.teacher, mb, prompts=teacher_prompts,  # [m, C]
                                          share_prefix=self._shares_prefix()).to(student.device)
            gap[rows, : mb.completion_width] = ((teacher - student) * mb.completion_mask).cpu()
        mask = batch.completion_mask
        outcome = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None] * mask
        batch.advantages = outcome + self.config.teacher_weight * gap
        reverse_kl = float(-(gap * mask).sum() / mask.sum().clamp(min=1))
        return {"teacher_reverse_kl": reverse_kl}

    def _scoring_micro_batches(self, batch: TrainBatch) -> tuple[list[torch.Tensor], list[TrainBatch]]:
        """Every row of ``batch`` in micro-batches (the teacher's, the reference's and the critic's passes): the
        rows of each, and the micro-batches on the policy's device. With the prompts run once per model
        (:class:`PromptPass`) the rows are sorted by completion length, so a micro-batch pads little."""
        order = torch.arange(batch.size)
        if self._shares_prefix():
            order = batch.completion_mask.sum(dim=1).argsort(descending=True, stable=True)
        splits = list(order.split(self.config.micro_batch_size))
        return splits, [batch.select(rows).to(self.policy.device) for rows in splits]

    # --- optimisation ------------------------------------------------------------------------------
    def optimise(self, batch: TrainBatch) -> dict[str, float]:
        """mu optimiser steps on one rollout batch; returns loss statistics of the last pass.

        Each micro-batch's loss is normalised by the whole batch's sequence and token counts, so the sum
        of the micro-batch gradients is the full batch's gradient."""
        c = self.config
        num_sequences, num_tokens = batch.size, float(batch.completion_mask.sum())
        beta = self.loss_beta
        rows = self._micro_batch_rows(batch)
        trained_sequences = float(sum(len(r) for r in rows))
        trained_tokens = sum(float(batch.completion_mask[r].sum()) for r in rows)
        # data parallel: micro-batch i is trained by rank i mod world_size; gradients are summed over ranks
        micro = [batch.select(r) for r in rows[self.world.rank :: self.world.world_size]]
        if self.policy.sharded:  # sharded forwards are collective: every rank runs as many (masked filler)
            micro = pad_to_equal(micro, self.world, masked(batch.select(rows[0])) if rows else None)
        micro = [mb.to(self.policy.device) for mb in micro]  # batches are built on the CPU
        t0 = time.perf_counter()
        if c.num_iterations > 1 or beta > 0 or (c.engine_ratio_cap > 0 and batch.engine_logprobs is not None):
            self._fill_reference_logprobs(batch, micro)
        self.timing["logprobs"] = self.timing.get("logprobs", 0.0) + time.perf_counter() - t0  # old and reference
        self.timing["forward_backward"] = self.timing["optimizer"] = 0.0
        stats: dict[str, float] = {"trained_sequences": trained_sequences,  # tokens through the policy in a pass
                                   "forward_tokens": trained_tokens + self._prompt_work(batch, rows)}
        skipped = False
        for _ in range(c.num_iterations):
            self.policy.zero_grad()
            sums: dict[str, float] = {}
            entropy_sum = 0.0
            t0 = time.perf_counter()
            with bfloat16_weight_copies():  # the weights are fixed until the step
                prompts = self._prompt_pass(self.model, batch, micro)  # every prompt through the policy once a pass
                for mb in micro:
                    logprobs, entropy = self._logprobs(self.model, mb, prompts, entropy=True,  # [m, C] each
                                                       entropy_grad=c.entropy_coef > 0)
                    entropy_sum += float((entropy.detach() * mb.completion_mask).sum())
                    old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
                    loss, mb_stats = policy_loss(
                        logprobs, old, mb.advantages, mb.completion_mask, loss_type=c.loss_type, eps_low=c.eps_low,
                        eps_high=c.eps_high, beta=beta, ref_logprobs=mb.ref_logprobs,
                        max_completion_length=c.max_completion_length, num_sequences=num_sequences,
                        num_tokens=num_tokens, engine_logprobs=mb.engine_logprobs, engine_ratio_cap=c.engine_ratio_cap)
                    if c.entropy_coef > 0:  # the bonus: the batch's mean token entropy, summed over micro-batches
                        loss = loss - c.entropy_coef * (entropy * mb.completion_mask).sum() / max(num_tokens, 1.0)
                    loss.backward()
                    share = float(mb.completion_mask.sum()) / max(trained_tokens, 1)  # token-weighted stats
                    for k, v in mb_stats.items():
                        sums[k] = sums.get(k, 0.0) + (v if k == "loss" else v * share)
                if prompts is not None:
                    prompts.backward()
                    del prompts
            t_backward = time.perf_counter()
            self.timing["forward_backward"] += t_backward - t0
            sums = self.world.sum({**sums, "entropy_sum": entropy_sum})
            entropy_sum = sums.pop("entropy_sum")
            grad_norm = self.policy.step(c.max_grad_norm, loss=sums.get("loss"))
            skipped = skipped or self.policy.skipped
            self.backend.sync_weights()
            self.timing["optimizer"] += time.perf_counter() - t_backward
            stats.update(sums, grad_norm=grad_norm, entropy=entropy_sum / max(trained_tokens, 1))
        stats["nonfinite_skipped"] = int(skipped)
        return stats

    def _micro_batch_rows(self, batch: TrainBatch) -> list[torch.Tensor]:
        """Rows to train on, in micro-batches of at most micro_batch_size rows, longest completions first; when the
        prompts run once per pass, of at most micro_batch_size x max_completion_length padded completion positions
        (and ROWS_PER_MICRO_BATCH x micro_batch_size rows), so that short completions fill a micro-batch with more
        rows in about the activation memory of micro_batch_size full-length ones.

        With no KL term and no entropy bonus a zero-advantage row has exactly zero gradient, so it is skipped
        (whole groups with no reward spread, typically); the loss normalisers still count it, because they are
        the full batch's counts. When the prompts run once per pass (:class:`PromptPass`), rows are sorted by length
        over the whole batch, so a micro-batch pads its completions to a width close to their own; otherwise
        groups stay together so that a micro-batch computes each prompt once, longest groups first.
        """
        c = self.config
        nonzero = batch.advantages != 0 if batch.advantages.dim() == 1 else (batch.advantages != 0).any(dim=1)
        keep = torch.ones(batch.size, dtype=torch.bool) if self.loss_beta > 0 or c.entropy_coef > 0 else nonzero
        keep &= batch.completion_mask.sum(dim=1) > 0  # rows with no token to learn from (masked, empty)
        lengths = batch.completion_mask.sum(dim=1)
        if self._shares_prefix():
            rows = keep.nonzero().flatten()
            rows = rows[lengths[rows].argsort(descending=True, stable=True)]
            return split_by_positions(rows, lengths, c.micro_batch_size * c.max_completion_length,
                                      ROWS_PER_MICRO_BATCH * c.micro_batch_size)
        groups = [rows for g in batch.group_ids.unique()
                  if (rows := ((batch.group_ids == g) & keep).nonzero().flatten()).numel()]
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

    def _prompt_work(self, batch: TrainBatch, rows: list[torch.Tensor]) -> float:
        """Prompt tokens one optimisation pass runs through the policy (one process): with shared prefixes the
        system prompt once and each trained group's rest once, else every row's whole prompt."""
        if not rows:
            return 0.0
        if not self._shares_prefix():
            prompt_lengths = batch.attention_mask[:, : batch.prompt_width].sum(dim=1)  # [N]
            return float(sum(prompt_lengths[r].sum() for r in rows))
        groups = sorted({int(g) for r in rows for g in batch.group_ids[r]})
        prompts = prompt_tokens(batch, torch.tensor([int((batch.group_ids == g).nonzero()[0]) for g in groups]))
        shared = system_prompt_length(self.policy.model, prompts)
        return float(shared + sum(len(q) - shared for q in prompts))

    def _sampled_logprobs_are_the_policys(self) -> bool:
        """Whether the rollouts' log-probs stand in for a forward of the policy: it samples its own rollouts
        (``transformers``), and its decode loop reports each drawn token's log-probability at the sampling
        temperature — the policy's own weights and arithmetic at sampling time, what that forward computes (to
        ~1e-5). They are then the old policy's log-probs (num_iterations > 1), the student's scores in
        on-policy distillation and the policy's term of PPO's KL in the reward. Another engine's (vLLM, a
        server) carry its own numerics: the policy runs forward there."""
        return isinstance(self.backend, HFBackend)

    def _wants_sampled_logprobs(self) -> bool:
        c = self.config
        sampled_kl = c.algorithm == "ppo" and c.kl_in_reward and c.beta > 0
        return c.engine_ratio_cap > 0 or (self._sampled_logprobs_are_the_policys()
                                          and (self.teacher is not None or c.num_iterations > 1 or sampled_kl))

    def _shares_prefix(self) -> bool:
        # a sharded model's backward reaches a block only through its output, not through the KV cache it
        # wrote, so prompts shared through the cache would miss FSDP's gather before the block's backward
        return (self.config.share_prompt_prefix and not self.config.gradient_checkpointing and not self.policy.sharded
                and reusable_cache(self.model))

    def _logprobs(self, model: torch.nn.Module, mb: TrainBatch, prompts: PromptPass | None = None,
                  entropy: bool = False, entropy_grad: bool = False):
        """``model``'s log-probabilities [m, C] of ``mb``'s completion tokens at the sampling temperature (and
        with ``entropy``, each position's entropy, differentiable with ``entropy_grad``), from ``prompts`` (the
        pass's prompts run once) when given."""
        return completion_logprobs(model, mb, prompts=prompts, share_prefix=self._shares_prefix(),
                                   fuse=not self.policy.sharded, temperature=self.config.temperature,
                                   entropy=entropy, entropy_grad=entropy_grad)

    @torch.no_grad()
    def _fill_reference_logprobs(self, batch: TrainBatch, micro: list[TrainBatch]) -> None:
        c = self.config
        if self._sampled_logprobs_are_the_policys() and all(mb.engine_logprobs is not None for mb in micro):
            for mb in micro:  # the decode loop's: the sampling policy's own (else old = current, in the loss)
                mb.old_logprobs = mb.engine_logprobs if c.num_iterations > 1 else None
        elif c.num_iterations > 1 or (c.engine_ratio_cap > 0 and any(mb.engine_logprobs is not None for mb in micro)):
            for mb, old in zip(micro, self._scored(self.model, batch, micro)):  # else old = current, detached
                mb.old_logprobs = old
        if self.loss_beta > 0:
            for mb, r in zip(micro, self._reference_logprobs(batch, micro)):
                mb.ref_logprobs = r

    def _scored(self, model: torch.nn.Module, batch: TrainBatch, micro: list[TrainBatch]) -> list[torch.Tensor]:
        """``model``'s log-probs ``[m, C]`` of each micro-batch's completion tokens, the prompts run once for all."""
        prompts = self._prompt_pass(model, batch, micro)
        return [self._logprobs(model, mb, prompts) for mb in micro]

    def _reference_logprobs(self, batch: TrainBatch, micro: list[TrainBatch]) -> list[torch.Tensor]:
        """The reference model's log-probs of each micro-batch's completion tokens (with LoRA, the base model:
        the policy with its adapters off)."""
        if self.reference is not None:
            return self._scored(self.reference, batch, micro)
        with self.model.disable_adapter():
            return self._scored(self.model, batch, micro)

    def _prompt_pass(self, model: torch.nn.Module, batch: TrainBatch, micro: list[TrainBatch]) -> PromptPass | None:
        """Every prompt the micro-batches use through ``model`` once, when prompts are shared (else None)."""
        if not self._shares_prefix() or not micro or not reusable_cache(model):
            return None
        return PromptPass(model, batch, sorted({int(g) for mb in micro for g in mb.group_ids}),
                          fuse=not self.policy.sharded)

    # --- the run core's hooks ----------------------------------------------------------------------
    def evaluate(self, step: int) -> EvalResult | None:
        c = self.config
        examples = self.task.eval_examples()
        if not c.eval_size or not examples:
            return None
        backend = ShardedBackend(self.backend, self.world) if self.world.distributed else self.backend
        with full_weights(self.model):
            result = evaluate_heldout(backend, self.prompts, examples, c.max_completion_length,
                                      tuple(c.stop_strings), self.grader)
        return EvalResult({"size": len(result.samples), **result.metrics()}, result.samples, result.line())

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reference": self.reference} if self.reference is not None and self.config.ref_sync_steps else {}

    def trainer_state(self) -> dict[str, Any]:
        return {"sampled_completions": self.sampled_completions}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.sampled_completions = state.get("sampled_completions", 0)

    def budget_spent(self) -> str | None:
        c = self.config
        if c.max_completions and self.sampled_completions >= c.max_completions:
            return f"max_completions={c.max_completions} sampled ({self.sampled_completions})"
        return None

    def describe_step(self, step: int, m: dict[str, Any]) -> str:
        acc = m.get("reward/accuracy")
        acc_text = f" acc {acc:.2f}" if acc is not None and not math.isnan(acc) else ""
        return (f"step {step}/{self.config.max_steps} reward {m['reward']:.3f}{acc_text} "
                f"format {m['format_rate']:.2f} len {m['completion_length']:.1f} "
                f"zero-std {m['zero_std_groups']:.2f} clip {m.get('clip_ratio', 0):.3f} {m['time/step']:.1f}s")

    def progress_status(self, metrics: dict[str, Any]) -> str:
        return f"reward {metrics['reward']:.3f}"

    def summarise(self, step: int, stopped: str | None = None) -> dict[str, Any]:
        summary = super().summarise(step, stopped)
        before, after = summary["before"], summary["after"]
        if before and after:
            self.console.log(
                f"held-out strict accuracy {100 * before['strict_accuracy']:.1f}% -> "
                f"{100 * after['strict_accuracy']:.1f}%, lenient {100 * before['lenient_accuracy']:.1f}% -> "
                f"{100 * after['lenient_accuracy']:.1f}%")
        return summary

    # --- helpers -----------------------------------------------------------------------------------
    def _tokenize_prompts(self, questions: list[str]) -> tuple[list[list[int]], int]:
        texts = [self.prompts.build(q) for q in questions]
        ids = self.policy.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.config.max_prompt_length
        cut = sum(len(i) > limit for i in ids)
        return [i[-limit:] for i in ids], cut


@dataclass
class Rollouts:
    """The sampled, scored completions of some prompts: group after group, ``group_size`` completions each."""

    indices: list[int]  # [P] the task's example indices
    examples: list[dict[str, Any]]  # [P]
    prompt_ids: list[list[int]]  # [P]
    generations: list[Generation]  # [P * G]
    total: list[float | None]  # [P * G] weighted reward, None: unscorable
    per_reward: dict[str, list[float | None]]  # each [P * G]
    failures: dict[str, int]
    prompts_cut: int
    group_size: int

    @property
    def num_groups(self) -> int:
        return len(self.examples)

    @property
    def group_prompts(self) -> list[list[int]]:
        return [ids for ids in self.prompt_ids for _ in range(self.group_size)]

    def informative_groups(self) -> list[int]:
        """Groups whose rewards are not all equal (an unscorable sample counts as its group's mean)."""
        rewards = fill_unscored(self.total, self.group_size).view(-1, self.group_size)
        return [g for g in range(self.num_groups) if float(rewards[g].max()) != float(rewards[g].min())]

    def select(self, groups: list[int]) -> "Rollouts":
        g = self.group_size
        rows = [r for group in groups for r in range(group * g, (group + 1) * g)]
        return Rollouts([self.indices[i] for i in groups], [self.examples[i] for i in groups],
                        [self.prompt_ids[i] for i in groups], [self.generations[r] for r in rows],
                        [self.total[r] for r in rows], {k: [v[r] for r in rows] for k, v in self.per_reward.items()},
                        dict(self.failures), self.prompts_cut, g)

    def __add__(self, other: "Rollouts") -> "Rollouts":
        names = self.failures.keys() | other.failures.keys()
        failures = {k: self.failures.get(k, 0) + other.failures.get(k, 0) for k in names}
        per_reward = {k: v + other.per_reward.get(k, []) for k, v in self.per_reward.items()}
        return Rollouts(self.indices + other.indices, self.examples + other.examples,
                        self.prompt_ids + other.prompt_ids, self.generations + other.generations,
                        self.total + other.total, per_reward, failures, self.prompts_cut + other.prompts_cut,
                        self.group_size)


def step_reward_tensors(task: Task, rollouts: Rollouts, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, C]`` step rewards at each step's last token, and the mask of those tokens, from the task's
    ``step_rewards`` (process supervision)."""
    g = rollouts.group_size
    examples = [rollouts.examples[i // g] for i in range(len(rollouts.generations))]
    steps = task.step_rewards(examples, rollouts.generations)
    rewards = torch.zeros((len(examples), width))
    ends = torch.zeros((len(examples), width))
    for row, row_steps in enumerate(steps):
        for token, reward in row_steps:
            if 0 <= token < width:
                rewards[row, token], ends[row, token] = float(reward), 1.0
    return rewards, ends


def make_backend(config: GRPOConfig, policy: Policy) -> GenerationBackend:
    """The rollout engine ``rollout_engine`` names, following the policy."""
    if config.rollout_engine == "vllm":
        from aha.rollout.vllm import VLLMBackend, VLLMUnavailableError

        try:
            return VLLMBackend(policy.model, policy.tokenizer,
                               gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                               max_model_len=config.max_prompt_length + config.max_completion_length,
                               sleep=config.vllm_sleep, seed=config.seed)
        except VLLMUnavailableError as err:
            raise config.error("rollout_engine", str(err)) from None
    return HFBackend(policy.model, policy.tokenizer, config.generation_batch_size, config.decode_loop)


def masked(mb: TrainBatch) -> TrainBatch:
    """``mb`` with no token to learn from: a filler micro-batch whose loss and gradients are zero."""
    mb.completion_mask = torch.zeros_like(mb.completion_mask)
    return mb


def completion_seed(seed: int, step: int, example: int, sample: int) -> int:
    """The sampling seed of one completion: a fixed function of the run seed, the step, the task example and
    the sample's place in its group, so that it is the same however the step's prompts are batched or split
    over processes, and after a resume."""
    return zlib.crc32(f"aha:{seed}:{step}:{example}:{sample}".encode()) & 0x7FFFFFFF


def fill_unscored(total: list[float | None], group_size: int) -> torch.Tensor:
    """Rewards as a tensor; an unscorable sample takes its group's mean (so its advantage is ~0)."""
    rewards = torch.tensor([math.nan if r is None else float(r) for r in total], dtype=torch.float32)
    grouped = rewards.view(-1, group_size)
    means = torch.nanmean(grouped, dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(torch.isnan(grouped), means, grouped).reshape(-1)
