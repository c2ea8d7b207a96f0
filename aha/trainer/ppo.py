"""PPO with a learned value model — the paper's point of comparison for GRPO (DeepSeekMath §4.1; Schulman
et al. 2017; Open-Reasoner-Zero, Hu et al. 2025, for PPO on verifiable rewards with GAE and gamma = lambda
= 1). The rollouts, rewards, clipped policy loss and the run core are GRPO's; what PPO adds:

    token rewards  r_t = 0, the verifiable outcome on the last token (minus beta * KL_t with kl_in_reward)
    values         V_t from the critic (the policy's architecture, a linear head instead of the LM head)
    advantages     GAE(r, V, gamma, lambda), whitened over the batch's tokens; returns R_t = A_t + V_t
    updates        the policy with the clipped surrogate on A_t; the critic with the clipped value loss

Two networks train, so each step costs about twice GRPO's training compute and the critic's weights and
optimiser state double the memory — the trade GRPO removes.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from transformers.modeling_outputs import CausalLMOutputWithPast

from aha.algorithms import compute_gae, value_loss
from aha.models import cache_keyword, output_cache
from aha.models.linear import bfloat16_weight_copies
from aha.trainer.core import Policy, adamw
from aha.trainer.forward import PromptPass, completion_logits
from aha.trainer.grpo import GRPOTrainer, Rollouts
from aha.types import TrainBatch


class ValueModel(torch.nn.Module):
    """A critic: a causal LM's body (no LM head) and a linear head giving one value per position.

    It is called as the causal LM is, and returns its values as the ``logits`` (``[b, t, 1]``) with the KV cache,
    so the trainer's forward helpers run it as they run the policy: :class:`~aha.trainer.forward.PromptPass` runs
    each prompt through it once per pass and the completions continue from the prompts' cache."""

    def __init__(self, causal_lm: torch.nn.Module):
        super().__init__()
        self.body = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = causal_lm.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, use_cache: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutputWithPast:
        """V(s_t) at every position (the state: the tokens up to it) — of the last ``logits_to_keep`` positions when
        given — as ``logits`` ``[b, t, 1]``, and the cache with ``use_cache``."""
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=use_cache, **({cache_keyword(self.body): cache} if cache is not None else {}))
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.head(hidden.float()), cache=output_cache(out))


class PPOTrainer(GRPOTrainer):
    """PPO on the GRPO trainer: token-level GAE advantages from a critic trained alongside."""

    progress_label = "PPO"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.critic: ValueModel | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_learner: Policy | None = None  # the critic with its optimiser: zero_grad and step as the policy's

    @classmethod
    def from_config(cls, config, *, task=None, console=None) -> "PPOTrainer":
        trainer = super().from_config(config, task=task, console=console)
        from aha.models import load_model, sparse_embedding_gradients
        from aha.models.checkpointing import enable_checkpointing
        from aha.models.linear import accumulate_weight_gradients
        from aha.trainer.preflight import check_model

        source = check_model(config)
        body, _ = load_model(source, dtype=config.dtype, device=config.device, seed=config.seed,
                             tokenizer=trainer.policy.tokenizer)
        if config.gradient_checkpointing:
            enable_checkpointing(body)
        trainer.critic = ValueModel(body).to(trainer.policy.device)
        sparse_embedding_gradients(trainer.critic.body)  # the rows of the tokens seen, made dense before the step
        accumulate_weight_gradients(trainer.critic)  # micro-batch weight gradients added in place
        optimizer = adamw(list(trainer.critic.parameters()), config.value_learning_rate, config)
        trainer.critic_optimizer = optimizer
        constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # value_learning_rate throughout
        trainer.critic_learner = Policy(trainer.critic, trainer.policy.tokenizer, optimizer, constant)
        return trainer

    # --- advantages from the critic ------------------------------------------------------------------
    def advantages(self, rewards: torch.Tensor, batch: TrainBatch, rollouts: Rollouts) -> torch.Tensor:
        c = self.config
        mask = batch.completion_mask  # [N, C]
        lengths = mask.sum(dim=1).long()
        token_rewards = torch.zeros_like(mask)
        rows = torch.nonzero(lengths > 0).flatten()
        token_rewards[rows, lengths[rows] - 1] = rewards[rows]  # the outcome, on the last token
        t0 = time.perf_counter()
        self._values = self._critic_values(batch)  # [N, C], the critic before this step's update
        t_values = time.perf_counter()
        self.timing["critic"] = t_values - t0  # the critic's values and update
        if c.kl_in_reward and c.beta > 0:
            token_rewards = token_rewards - c.beta * self._sampled_kl(batch)
            self.timing["logprobs"] = time.perf_counter() - t_values  # the reference's side of the KL
        advantages, self._returns = compute_gae(token_rewards, self._values, mask, c.gae_gamma, c.gae_lambda)
        count = mask.sum().clamp(min=1)
        mean = (advantages * mask).sum() / count
        std = ((((advantages - mean) ** 2) * mask).sum() / count).sqrt()
        return (advantages - mean) / (std + 1e-8) * mask  # whitened over the batch's tokens

    def _predict_values(self, mb: TrainBatch, prompts: PromptPass | None) -> torch.Tensor:
        """The critic's V(s_t) ``[m, C]`` for every completion token t of ``mb`` (the state: the prompt and the
        tokens before t), from ``prompts`` (the critic's pass over the batch's prompts) when given."""
        if prompts is not None:
            return prompts.completion_logits(mb)[..., 0]
        return completion_logits(self.critic, mb, share_prefix=self._shares_prefix())[..., 0]

    @torch.no_grad()
    def _critic_values(self, batch: TrainBatch) -> torch.Tensor:
        values = torch.zeros_like(batch.completion_mask)
        splits, micro = self._scoring_micro_batches(batch)
        prompts = self._prompt_pass(self.critic, batch, micro)  # each prompt through the critic once
        for rows, mb in zip(splits, micro):
            values[rows, : mb.completion_width] = self._predict_values(mb, prompts).cpu() * mb.completion_mask.cpu()
        return values

    @torch.no_grad()
    def _sampled_kl(self, batch: TrainBatch) -> torch.Tensor:
        """log pi(token) - log ref(token) of every sampled token (the k1 estimator, as a per-token penalty)."""
        kl = torch.zeros_like(batch.completion_mask)
        splits, micro = self._scoring_micro_batches(batch)
        if self._sampled_logprobs_are_the_policys() and all(mb.engine_logprobs is not None for mb in micro):
            policy = [mb.engine_logprobs for mb in micro]  # the decode loop's, of the tokens it drew
        else:
            policy = self._scored(self.model, batch, micro)
        reference = self._reference_logprobs(batch, micro)
        for rows, mb, mine, ref in zip(splits, micro, policy, reference):
            kl[rows, : mb.completion_width] = (mine.to(ref.device) - ref).cpu() * mb.completion_mask.cpu()
        return kl

    # --- updates ---------------------------------------------------------------------------------------
    @property
    def loss_beta(self) -> float:
        """With kl_in_reward the KL is in the token rewards, not in the loss."""
        return 0.0 if self.config.kl_in_reward else self.config.beta

    def optimise(self, batch: TrainBatch) -> dict[str, float]:
        stats = super().optimise(batch)  # the policy, with the clipped surrogate on the GAE advantages
        t0 = time.perf_counter()
        stats.update(self._update_critic(batch))
        self.timing["critic"] = self.timing.get("critic", 0.0) + time.perf_counter() - t0
        return stats

    def _update_critic(self, batch: TrainBatch) -> dict[str, float]:
        c = self.config
        old_values, returns = self._values, self._returns
        total_tokens = float(batch.completion_mask.sum())
        splits, micro = self._scoring_micro_batches(batch)
        mine = slice(self.world.rank, None, self.world.world_size)  # data parallel: micro-batch i on rank i mod N
        splits, micro = splits[mine], micro[mine]
        for _ in range(c.num_iterations):
            sums: dict[str, float] = {}  # statistics of the last pass
            self.critic_learner.zero_grad()
            with bfloat16_weight_copies():  # the critic's weights are fixed until its step
                prompts = self._prompt_pass(self.critic, batch, micro)  # each prompt through the critic once a pass
                for rows, mb in zip(splits, micro):
                    width = mb.completion_width
                    values = self._predict_values(mb, prompts)  # [m, C]
                    loss, part = value_loss(values, old_values[rows, :width].to(values.device),
                                            returns[rows, :width].to(values.device),
                                            mb.completion_mask.to(values.device), clip=c.value_clip)
                    share = float(mb.completion_mask.sum()) / max(total_tokens, 1)
                    (loss * share).backward()  # the token mean over the whole batch
                    for k, v in part.items():
                        sums[k] = sums.get(k, 0.0) + v * share
                if prompts is not None:
                    prompts.backward()  # the micro-batches' gradients through the prompts, once
                    del prompts
            sums = self.world.sum(sums)
            # summed over ranks, clipped; a non-finite one skips the update; dropped after the step, so the
            # critic holds no gradients while the next rollouts are sampled and the policy trains
            norm = self.critic_learner.step(c.max_grad_norm, loss=sums.get("value_loss"))
        mask = batch.completion_mask
        count = mask.sum().clamp(min=1)
        sums.update(value_mean=float((old_values * mask).sum() / count), value_grad_norm=norm,
                    return_mean=float((returns * mask).sum() / count))
        return sums

    # --- the run core's hooks --------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {**super().modules(), "critic": self.critic}

    def trainable_parameters(self) -> int:
        return super().trainable_parameters() + sum(p.numel() for p in self.critic.parameters())

    def learners(self) -> list[Policy]:
        return [*super().learners(), self.critic_learner]

    def trainer_state(self) -> dict[str, Any]:
        return {**super().trainer_state(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        super().load_trainer_state(state)
        if "critic_optimizer" in state:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


__all__ = ["PPOTrainer", "ValueModel"]
