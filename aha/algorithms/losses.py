"""Clipped policy-gradient losses for GRPO and its variants — the objective, and nothing else.

Notation ([batch, seq] tensors hold one row per completion, position t over completion tokens):
    log-ratio    l_it = logp_it - old_logp_it             ratio rho_it = exp(l_it)
    surrogate    J_it = min(rho_it * A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_it)
    KL (k3)      k_it = exp(ref_it - logp_it) - (ref_it - logp_it) - 1       (only when beta > 0)
    per token    L_it = w_it * (-J_it + beta * k_it)
    A_it = A_i for an advantage per completion; w_it = 1 unless the engine-ratio correction is on

Aggregations (m_it = completion mask, |o_i| = sum_t m_it, S = sequences, N_tok = tokens, L = max completion
length; S and N_tok count the whole optimiser batch, so a micro-batch's loss is its share of the batch's
and micro-batch losses add up to the batch loss, also across data-parallel ranks):
    grpo     sum_i ( sum_t m_it L_it / |o_i| ) / S              one vote per sequence    (DeepSeekMath)
    dapo     sum_it m_it L_it / N_tok                           one vote per token       (DAPO)
    dr_grpo  sum_it m_it L_it / (S * L)                         a constant normaliser    (Dr. GRPO)
    gspo     as grpo, but rho is the sequence ratio exp(sum_t m_it l_it / |o_i|) shared by all tokens (GSPO)

Papers: GRPO, Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300, eq. 3); the clipped surrogate, Schulman et
al. 2017 (PPO, arXiv:1707.06347); DAPO, Yu et al. 2025 (arXiv:2503.14476, token-level loss §3.3 and
clip-higher §3.1); Dr. GRPO, Liu et al. 2025 (arXiv:2503.20783, §3.1); GSPO, Zheng et al. 2025
(arXiv:2507.18071, eq. 5-7); k3, Schulman 2020 ("Approximating KL divergence"); the engine-ratio
correction is truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training"): w_it = min(exp(old_logp_it - engine_logp_it), cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from aha.utils.registry import Registry

Aggregate = Callable[[torch.Tensor, torch.Tensor, int, float, float], torch.Tensor]


@dataclass(frozen=True)
class LossType:
    """How a loss variant forms its ratio and reduces per-token terms to one scalar."""

    sequence_ratio: bool
    """True: one ratio per sequence (GSPO); False: one ratio per token."""
    aggregate: Aggregate
    """(per_token_loss [B, T], mask [B, T], max_completion_length, num_sequences, num_tokens) -> scalar."""


LOSS_TYPES: Registry = Registry("loss_type")


def _sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens: [B, T] -> [B]. Rows without tokens give 0."""
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _sum_of_sequence_means(per_token, mask, max_len, num_sequences, num_tokens):
    return _sequence_mean(per_token, mask).sum() / max(num_sequences, 1)


def _token_sum(per_token, mask, max_len, num_sequences, num_tokens):
    return (per_token * mask).sum() / max(num_tokens, 1)


def _constant_normaliser(per_token, mask, max_len, num_sequences, num_tokens):
    return (per_token * mask).sum() / (max(num_sequences, 1) * max_len)


LOSS_TYPES.register("grpo")(LossType(False, _sum_of_sequence_means))
LOSS_TYPES.register("dapo")(LossType(False, _token_sum))
LOSS_TYPES.register("dr_grpo")(LossType(False, _constant_normaliser))
LOSS_TYPES.register("gspo")(LossType(True, _sum_of_sequence_means))


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    loss_type: str = "grpo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    engine_logprobs: torch.Tensor | None = None,
    engine_ratio_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss (to minimise) and float statistics for logging.

    logprobs, old_logprobs, ref_logprobs, engine_logprobs, completion_mask: [batch, seq]; advantages:
    [batch] or [batch, seq]. num_sequences / num_tokens: the normalisers' counts over the whole optimiser
    batch (default: this batch's own), see the module docstring.
    """
    variant = LOSS_TYPES.get(loss_type)
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (log-probs of the reference model)")
    mask = completion_mask.to(logprobs.dtype)  # [B, T]
    max_len = max_completion_length if max_completion_length is not None else logprobs.shape[1]
    sequences = float(mask.shape[0]) if num_sequences is None else float(num_sequences)
    tokens = float(mask.sum()) if num_tokens is None else float(num_tokens)
    log_ratio = logprobs - old_logprobs  # [B, T]
    if variant.sequence_ratio:
        log_ratio = _sequence_mean(log_ratio, mask).unsqueeze(1).expand_as(logprobs)  # [B, T], rows constant
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)  # [B, T]
    kl = None
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)
        if beta > 0:
            per_token = per_token + beta * kl
    engine_weight = None
    if engine_logprobs is not None and engine_ratio_cap > 0:
        engine_weight = torch.exp(old_logprobs.detach() - engine_logprobs).clamp(max=engine_ratio_cap)  # [B, T]
        per_token = per_token * engine_weight
    loss = variant.aggregate(per_token, mask, max_len, sequences, tokens)

    with torch.no_grad():
        adv_b = adv.expand_as(ratio)
        low = ((ratio < 1 - eps_low) & (adv_b < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv_b > 0)).to(mask.dtype)
        if variant.sequence_ratio:  # one decision per sequence: count sequences
            rows = (mask.sum(dim=1) > 0).to(mask.dtype)
            n = rows.sum().clamp(min=1)
            low_frac, high_frac = (low[:, 0] * rows).sum() / n, (high[:, 0] * rows).sum() / n
        else:
            n = mask.sum().clamp(min=1)
            low_frac, high_frac = (low * mask).sum() / n, (high * mask).sum() / n
        stats = {
            "loss": float(loss.detach()),
            "clip_ratio": float(low_frac + high_frac),
            "clip_ratio_low": float(low_frac),
            "clip_ratio_high": float(high_frac),
        }
        if kl is not None:
            stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
        if engine_weight is not None:
            n = mask.sum().clamp(min=1)
            raw = torch.exp(old_logprobs.detach() - engine_logprobs)  # [B, T] pi_old / pi_engine, uncapped
            stats["engine_ratio"] = float((engine_weight * mask).sum() / n)
            # the train/inference mismatch: KL(engine || trainer) by k3 on the engine's samples, and how often the
            # cap bites
            stats["engine_kl"] = float(((raw - 1 - torch.log(raw)) * mask).sum() / n)
            stats["engine_capped"] = float(((raw > engine_ratio_cap).to(mask.dtype) * mask).sum() / n)
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss (Schulman et al. 2017; as in OpenAI's baselines and Open-Reasoner-Zero): the
    critic may move at most ``clip`` from the values it had when the rollouts were scored,

        L = 0.5 * mean_t max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -clip, clip) - R_t)^2)

    over masked tokens. values, old_values, returns, mask: ``[batch, tokens]``."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    count = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / count
    with torch.no_grad():
        clip_frac = (((values - old_values).abs() > clip).to(mask.dtype) * mask).sum() / count
        explained = 1 - (((returns - values) ** 2) * mask).sum() / (((returns - (returns * mask).sum() / count) ** 2)
                                                                    * mask).sum().clamp(min=1e-8)
    return loss, {"value_loss": float(loss.detach()), "value_clip_ratio": float(clip_frac),
                  "explained_variance": float(explained)}
