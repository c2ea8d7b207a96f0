"""Clipped policy-gradient losses for GRPO and its variants — the objective, and nothing else.

Notation ([batch, seq] tensors hold one row per completion, position t over completion tokens):
    log-ratio    l_it = logp_it - old_logp_it             ratio rho_it = exp(l_it)
    surrogate    J_it = min(rho_it * A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_i)
    KL (k3)      k_it = exp(ref_it - logp_it) - (ref_it - logp_it) - 1       (only when beta > 0)
    per token    L_it = -J_it + beta * k_it

Aggregations (m_it = completion mask, |o_i| = sum_t m_it, B = batch, L = max completion length):
    grpo     mean_i ( sum_t m_it L_it / |o_i| )                one vote per sequence
    dapo     sum_it m_it L_it / sum_it m_it                    one vote per token
    dr_grpo  sum_it m_it L_it / (B * L)                        a constant normaliser
    gspo     as grpo, but rho is the sequence ratio exp(sum_t m_it l_it / |o_i|) shared by all tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from aha.algorithms.registry import Registry


@dataclass(frozen=True)
class LossType:
    """How a loss variant forms its ratio and reduces per-token terms to one scalar."""

    sequence_ratio: bool
    """True: one ratio per sequence (GSPO); False: one ratio per token."""
    aggregate: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    """(per_token_loss [B, T], mask [B, T], max_completion_length) -> scalar."""
    per_token_normaliser: bool
    """True when the denominator counts tokens of the whole batch (dapo), so a micro-batch's share of
    the full-batch loss is its token count; otherwise its share is its sequence count."""


LOSS_TYPES: Registry = Registry("loss_type")


def _sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens: [B, T] -> [B]. Rows without tokens give 0."""
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _mean_of_sequence_means(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    return _sequence_mean(per_token, mask).mean()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _constant_normaliser(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / (mask.shape[0] * max_len)


LOSS_TYPES.register("grpo")(LossType(False, _mean_of_sequence_means, per_token_normaliser=False))
LOSS_TYPES.register("dapo")(LossType(False, _token_mean, per_token_normaliser=True))
LOSS_TYPES.register("dr_grpo")(LossType(False, _constant_normaliser, per_token_normaliser=False))
LOSS_TYPES.register("gspo")(LossType(True, _mean_of_sequence_means, per_token_normaliser=False))


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss (to minimise) and float statistics for logging.

    logprobs, old_logprobs, ref_logprobs, completion_mask: [batch, seq]; advantages: [batch].
    """
    variant = LOSS_TYPES.get(loss_type)
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (log-probs of the reference model)")
    mask = completion_mask.to(logprobs.dtype)  # [B, T]
    max_len = max_completion_length if max_completion_length is not None else logprobs.shape[1]
    log_ratio = logprobs - old_logprobs  # [B, T]
    if variant.sequence_ratio:
        log_ratio = _sequence_mean(log_ratio, mask).unsqueeze(1).expand_as(logprobs)  # [B, T], rows constant
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)  # [B, T]
    kl = None
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)
        if beta > 0:
            per_token = per_token + beta * kl
    loss = variant.aggregate(per_token, mask, max_len)

    with torch.no_grad():
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
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
    return loss, stats


def micro_batch_weight(loss_type: str, micro_mask: torch.Tensor, num_sequences: int, num_tokens: int) -> float:
    """The factor that turns a micro-batch's `policy_loss` into its share of the full batch's loss.

    Summing ``weight * policy_loss(micro)`` over the micro-batches of a batch gives exactly
    ``policy_loss(batch)``, so gradient accumulation is the same update as one big batch.
    """
    variant = LOSS_TYPES.get(loss_type)
    if variant.per_token_normaliser:
        return float(micro_mask.sum()) / max(num_tokens, 1)
    return micro_mask.shape[0] / num_sequences
