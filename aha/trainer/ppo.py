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

from typing import Any

import torch

from aha.algorithms import compute_gae, value_loss
from aha.trainer.core import adamw
from aha.trainer.grpo import GRPOTrainer, Rollouts
from aha.types import TrainBatch


class ValueModel(torch.nn.Module):
    """A critic: a causal LM's body (no LM head) and a linear head giving one value per position."""

    def __init__(self, causal_lm: torch.nn.Module):
        super().__init__()
        self.body = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = causal_lm.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, mb: TrainBatch) -> torch.Tensor:
        """V(s_t) for every completion token t of the micro-batch (the state: the prompt and the tokens
        before t): ``[m, C]``."""
        device = self.head.weight.device
        out = self.body(input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device),
                        position_ids=mb.position_ids.to(device), use_cache=False)
        start = mb.prompt_width - 1
        hidden = out.last_hidden_state[:, start: start + mb.completion_width]  # [m, C, H]
        return self.head(hidden.float()).squeeze(-1)


class PPOTrainer(GRPOTrainer):
    """PPO on the GRPO trainer: token-level GAE advantages from a critic trained alongside."""

    progress_label = "PPO"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.critic: ValueModel | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_config(cls, config, *, task=None, console=None) -> "PPOTrainer":
        trainer = super().from_config(config, task=task, console=console)
        from aha.models import accumulate_weight_gradients, load_model
        from aha.trainer.preflight import check_model

        source = check_model(config)
        body, _ = load_model(source, dtype=config.dtype, device=config.device, seed=config.seed,
                             tokenizer=trainer.policy.tokenizer)
        trainer.critic = ValueModel(body).to(trainer.policy.device)
        accumulate_weight_gradients(trainer.critic)  # micro-batch weight gradients added in place
        trainer.critic_optimizer = adamw(list(trainer.critic.parameters()), config.value_learning_rate, config)
        return trainer

    # --- advantages from the critic ------------------------------------------------------------------
    def advantages(self, rewards: torch.Tensor, batch: TrainBatch, rollouts: Rollouts) -> torch.Tensor:
        c = self.config
        mask = batch.completion_mask  # [N, C]
        lengths = mask.sum(dim=1).long()
        token_rewards = torch.zeros_like(mask)
        rows = torch.nonzero(lengths > 0).flatten()
        token_rewards[rows, lengths[rows] - 1] = rewards[rows]  # the outcome, on the last token
        self._values = self._critic_values(batch)  # [N, C], the critic before this step's update
        if c.kl_in_reward and c.beta > 0:
            token_rewards = token_rewards - c.beta * self._sampled_kl(batch)
        advantages, self._returns = compute_gae(token_rewards, self._values, mask, c.gae_gamma, c.gae_lambda)
        count = mask.sum().clamp(min=1)
        mean = (advantages * mask).sum() / count
        std = ((((advantages - mean) ** 2) * mask).sum() / count).sqrt()
        return (advantages - mean) / (std + 1e-8) * mask  # whitened over the batch's tokens

    @torch.no_grad()
    def _critic_values(self, batch: TrainBatch) -> torch.Tensor:
        values = torch.zeros_like(batch.completion_mask)
        for rows in torch.arange(batch.size).split(self.config.micro_batch_size):
            mb = batch.select(rows)
            values[rows, : mb.completion_width] = self.critic(mb).cpu() * mb.completion_mask
        return values

    @torch.no_grad()
    def _sampled_kl(self, batch: TrainBatch) -> torch.Tensor:
        """log pi(token) - log ref(token) of every sampled token (the k1 estimator, as a per-token penalty)."""
        kl = torch.zeros_like(batch.completion_mask)
        for rows in torch.arange(batch.size).split(self.config.micro_batch_size):
            mb = batch.select(rows)
            if self._sampled_logprobs_are_the_policys() and mb.engine_logprobs is not None:
                policy = mb.engine_logprobs.to(self.policy.device)  # the decode loop's, of the tokens it drew
            else:
                policy = self._logprobs(self.model, mb)
            if self.reference is not None:
                reference = self._logprobs(self.reference, mb)
            else:  # LoRA: the reference is the base model
                with self.model.disable_adapter():
                    reference = self._logprobs(self.model, mb)
            kl[rows, : mb.completion_width] = (policy - reference).cpu() * mb.completion_mask
        return kl

    # --- updates ---------------------------------------------------------------------------------------
    @property
    def loss_beta(self) -> float:
        """With kl_in_reward the KL is in the token rewards, not in the loss."""
        return 0.0 if self.config.kl_in_reward else self.config.beta

    def optimise(self, batch: TrainBatch) -> dict[str, float]:
        stats = super().optimise(batch)  # the policy, with the clipped surrogate on the GAE advantages
        stats.update(self._update_critic(batch))
        return stats

    def _update_critic(self, batch: TrainBatch) -> dict[str, float]:
        c = self.config
        old_values, returns = self._values, self._returns
        total_tokens = float(batch.completion_mask.sum())
        for _ in range(c.num_iterations):
            sums: dict[str, float] = {}  # statistics of the last pass
            self.critic_optimizer.zero_grad(set_to_none=True)
            chunks = torch.arange(batch.size).split(c.micro_batch_size)
            for rows in chunks[self.world.rank :: self.world.world_size]:  # data parallel, as the policy
                mb = batch.select(rows)
                width = mb.completion_width
                values = self.critic(mb)  # [m, C]
                loss, part = value_loss(values, old_values[rows, :width].to(values.device),
                                        returns[rows, :width].to(values.device), mb.completion_mask.to(values.device),
                                        clip=c.value_clip)
                share = float(mb.completion_mask.sum()) / max(total_tokens, 1)
                (loss * share).backward()  # the token mean over the whole batch
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v * share
            sums = self.world.sum(sums)
            self.world.all_reduce_gradients([p for p in self.critic.parameters() if p.requires_grad])
            limit = c.max_grad_norm if c.max_grad_norm > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(self.critic.parameters(), limit))
            if norm == norm and norm != float("inf"):
                self.critic_optimizer.step()
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

    def trainer_state(self) -> dict[str, Any]:
        return {**super().trainer_state(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        super().load_trainer_state(state)
        if "critic_optimizer" in state:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


__all__ = ["PPOTrainer", "ValueModel"]
