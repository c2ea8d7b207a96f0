"""``aha train``: R1-Zero reinforcement learning with GRPO and its variants."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from aha.config.sections import (CheckpointSection, DataSection, HeldoutDataSection, ModelSection, OptimSection,
                                 PromptSection, RunSection, SamplingSection, TaskSection, TeacherSection, TuningSection)


@dataclass
class GRPOConfig(TeacherSection, CheckpointSection, RunSection, OptimSection, SamplingSection, PromptSection,
                 DataSection, HeldoutDataSection, TaskSection, TuningSection, ModelSection):
    """R1-Zero reinforcement learning with GRPO (and its variants) on verifiable rewards."""

    command: typing.ClassVar[str] = "train"
    renamed: typing.ClassVar[dict[str, str]] = {"advantage_scale": "advantage_estimator"}

    # --- rollouts ----------------------------------------------------------------------------------
    prompts_per_step: int = 8
    """Distinct prompts sampled per training step."""
    group_size: int = 8
    """Completions sampled per prompt (G); advantages compare completions within a group."""
    max_prompt_length: int = 512
    """Longer prompts are cut from the left (counted in the metrics)."""
    share_prompt_prefix: bool = True
    """Compute each prompt once per group (shared KV cache) in generation and training; same numbers,
    less compute. Off when gradient checkpointing is on."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop groups whose rewards are all equal (no learning signal) and sample more
    prompts until the step has prompts_per_step groups with reward spread."""
    dynamic_sampling_rounds: int = 3
    """With dynamic_sampling: at most this many extra rounds of prompts_per_step prompts per step."""
    mask_truncated: bool = False
    """DAPO's overlong filtering: completions cut at max_completion_length carry no loss."""
    max_completions: int = 0
    """Stop once this many completions have been sampled (a generation budget, e.g. to compare variants that
    sample different amounts per step; 0: no limit)."""
    rollout_engine: Literal["transformers", "vllm"] = "transformers"
    """transformers: the policy samples its own rollouts (CPU or GPU). vllm: a vLLM engine in the same process,
    on the GPU, that takes the policy's weights after every optimiser step (pip install 'aha[vllm]'; pair it
    with engine_ratio_cap, e.g. 2, to correct for the engine's numerics)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm: the share of the GPU's memory the engine may take (weights, KV cache); the trainer keeps the rest."""
    vllm_sleep: bool = True
    """vllm: free the engine's GPU memory while the trainer steps (weights to the CPU, KV cache dropped)."""

    # --- rewards and objective ---------------------------------------------------------------------
    rewards: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "accuracy": {"weight": 1.0, "fallback_last_number": True},
        "tag_count": {"weight": 0.5, "requires": "accuracy"},
        "format": {"weight": 1.0, "requires": "accuracy"},
    })
    """Reward name -> weight, or -> {weight, requires: <other reward>, ...options}. `requires` pays a
    reward only where the other one is positive: by default the format is paid only on a correct answer,
    so tags alone never earn anything and correctness is never traded for format."""
    loss_type: str = "grpo"
    """grpo (per-sequence mean), dapo (token-level), dr_grpo (constant normaliser) or gspo (sequence-level
    ratio)."""
    algorithm: Literal["grpo", "ppo"] = "grpo"
    """grpo: group-relative advantages, no value model. ppo: a learned value model (critic) and GAE advantages
    over tokens, the verifiable outcome as the last token's reward (the paper's point of comparison)."""
    advantage_estimator: str = "group"
    """group (GRPO: group mean and std), none (Dr. GRPO: group mean only), batch (group mean, batch std), rloo
    (leave-one-out mean), reinforce_pp (REINFORCE++: batch-normalised over tokens) or process (DeepSeekMath's
    process supervision, for tasks that give step rewards). Ignored by ppo."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio."""
    eps_high: float = 0.2
    """Upper clip range (DAPO's clip-higher raises it, e.g. 0.28)."""
    beta: float = 0.0
    """Weight of the k3 KL penalty to the reference model; 0 loads no reference model."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus: the loss less entropy_coef x the mean token entropy of the completions (at the
    sampling temperature), against the entropy collapse that leaves a prompt's samples identical and its group
    without a gradient (verl's entropy_coeff). > 0 trains every row, groups without reward spread included."""
    ref_sync_steps: int = 0
    """Reset the reference model to the current policy every N steps (0: never)."""
    num_iterations: int = 1
    """Optimiser passes over each rollout batch (mu); > 1 makes the clipped ratio matter."""
    engine_ratio_cap: float = 0.0
    """With a generation engine that reports its own log-probs (vLLM, a server): weight each token by
    min(pi_old / pi_engine, cap), truncated importance sampling for the engine's numerics (0: off)."""

    teacher_weight: float = 1.0
    """With a teacher: the weight of its per-token term in the advantage."""

    # --- ppo ---------------------------------------------------------------------------------------
    value_learning_rate: float = 1e-5
    """ppo: the critic's AdamW learning rate."""
    value_clip: float = 0.2
    """ppo: how far the critic's value may move from the value it gave when the rollout was scored."""
    gae_gamma: float = 1.0
    """ppo: discount of GAE (1: Open-Reasoner-Zero's choice for outcome rewards)."""
    gae_lambda: float = 1.0
    """ppo: GAE's lambda (1: Monte-Carlo returns minus the value; 0: one-step TD)."""
    kl_in_reward: bool = False
    """ppo with beta > 0: subtract beta * KL(policy || reference) from each token's reward (InstructGPT's
    penalty) instead of adding the k3 term to the loss."""

    # --- logging -----------------------------------------------------------------------------------
    log_completions: int = 64
    """Completions per step written to samples.jsonl (the report's rollouts); 64 keeps every one of the default
    run's, a few kilobytes a step."""
    reflection_phrases: list[str] = dataclasses.field(default_factory=list)
    """Phrases that mark reflection in a response ("wait", "let me check"), counted per step in metrics.jsonl
    (reflection/rate, reflection/per_1k_tokens, ...); empty: the multilingual defaults of
    aha.analysis.reflection."""

    def check(self) -> None:
        from aha.algorithms import ADVANTAGE_ESTIMATORS, LOSS_TYPES

        for name, registry in (("loss_type", LOSS_TYPES), ("advantage_estimator", ADVANTAGE_ESTIMATORS)):
            if getattr(self, name) not in registry:
                raise self.error(name, f"unknown {registry.kind} {getattr(self, name)!r}; valid: "
                                       f"{', '.join(registry.names())}")
        self.require_positive("prompts_per_step", "group_size", "num_iterations", "max_prompt_length")
        self.require_non_negative("dynamic_sampling_rounds", "value_clip", "max_completions")
        self.require(self.value_learning_rate > 0, "value_learning_rate", "must be > 0")
        for name in ("gae_gamma", "gae_lambda"):
            self.require(0 <= getattr(self, name) <= 1, name, f"must be in [0, 1], got {getattr(self, name)}")
        self.require(not (self.dynamic_sampling and self.algorithm == "ppo" and self.group_size < 2),
                     "dynamic_sampling", "needs groups (group_size >= 2) to find reward spread in")
        self.require_non_negative("ref_sync_steps", "log_completions", "engine_ratio_cap")
        self.require(0 < self.vllm_gpu_memory_utilization < 1, "vllm_gpu_memory_utilization",
                     f"must be in (0, 1), got {self.vllm_gpu_memory_utilization}")
        self.require(not (self.fsdp and self.algorithm == "ppo"), "fsdp",
                     "ppo's value model is not sharded; use fsdp with algorithm=grpo")
        for name in ("beta", "entropy_coef", "eps_low", "eps_high"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        self.require(isinstance(self.rewards, dict) and (bool(self.rewards) or bool(self.teacher)), "rewards",
                     "give at least one reward, e.g. {accuracy: 1.0} (or a teacher, for on-policy distillation)")
