"""Advantage estimators without a value model, registered by name.

Rewards arrive laid out group after group: with ``group_size = G`` the first G entries are the G
completions of prompt 0, the next G those of prompt 1, and so on. An estimator receives an
:class:`AdvantageInputs` (outcome rewards, and where a task or critic supplies them per-token rewards and
values) and returns one advantage per completion ``[N]`` or one per token ``[N, T]``; the policy losses
accept both.

Worked example, one group of G = 4 with rewards [1, 0, 0, 1]:
    mean = 0.5, unbiased std = sqrt((4 * 0.25) / 3) = 0.5774
    group  (GRPO)     -> (r - 0.5) / (0.5774 + eps) = [ 0.866, -0.866, -0.866,  0.866]
    none   (Dr. GRPO) ->  r - 0.5                    = [ 0.5,   -0.5,   -0.5,    0.5  ]
    rloo              ->  r_i - mean_{j != i} r_j     = [ 0.667, -0.667, -0.667,  0.667]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from aha.utils.registry import Registry


@dataclass
class AdvantageInputs:
    """What an estimator may use; ``rewards`` is always there, the rest only where something supplies it."""

    rewards: torch.Tensor  # [N] float, the outcome reward of each completion, group after group
    group_size: int
    completion_mask: torch.Tensor | None = None  # [N, T], 1 on completion tokens
    token_rewards: torch.Tensor | None = None  # [N, T], per-token (process) rewards where a task gives them
    token_reward_mask: torch.Tensor | None = None  # [N, T], 1 where token_rewards holds a reward (a step's end)
    values: torch.Tensor | None = None  # [N, T], a critic's value estimates where there is a critic


Estimator = Callable[[AdvantageInputs, float], torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_groups * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)  # [num_groups, G]


def _std(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Unbiased standard deviation; 0 where only one value exists (no spread to measure)."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim, keepdim=True))
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


@ADVANTAGE_ESTIMATORS.register("group")
def group_normalised(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """GRPO (Shao et al., 2024, DeepSeekMath, arXiv:2402.03300, eq. 3 and §4.1.2, outcome supervision):
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)."""
    grouped = _grouped(inputs.rewards, inputs.group_size)  # [num_groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (_std(grouped, dim=1) + eps)).view(-1)


@ADVANTAGE_ESTIMATORS.register("none")
def group_centred(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783, §3.1):
    A_i = r_i - mean(r_group); dividing by the group std favours too-easy and too-hard prompts."""
    grouped = _grouped(inputs.rewards, inputs.group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


@ADVANTAGE_ESTIMATORS.register("batch")
def batch_normalised(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """A_i = (r_i - mean(r_group)) / (std of the whole batch's rewards + eps): the group baseline with a
    batch-level scale (as in REINFORCE++-baseline, Hu et al., 2025, arXiv:2501.03262)."""
    grouped = _grouped(inputs.rewards, inputs.group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (_std(inputs.rewards) + eps)).view(-1)


@ADVANTAGE_ESTIMATORS.register("rloo")
def leave_one_out(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """RLOO (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics", arXiv:2402.14740):
    A_i = r_i - mean of the other G-1 rewards of the group (= G/(G-1) * (r_i - group mean))."""
    grouped = _grouped(inputs.rewards, inputs.group_size)
    if inputs.group_size < 2:
        return torch.zeros_like(inputs.rewards)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (inputs.group_size - 1)
    return (grouped - others_mean).view(-1)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def global_normalised(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """REINFORCE++ (Hu et al., 2025, arXiv:2501.03262, §3): no critic and no group baseline; every token of
    completion i gets its return r_i, normalised by the mean and std over all tokens of the global batch:
    A_it = (r_i - mean_tokens(r)) / (std_tokens(r) + eps). Without a completion mask, over completions."""
    rewards = inputs.rewards
    if inputs.completion_mask is None:
        return (rewards - rewards.mean()) / (_std(rewards) + eps)
    mask = inputs.completion_mask.to(rewards.dtype)  # [N, T]
    per_token = rewards[:, None].expand_as(mask)  # [N, T]
    count = mask.sum().clamp(min=1)
    mean = (per_token * mask).sum() / count
    var = (((per_token - mean) ** 2) * mask).sum() / (count - 1).clamp(min=1)
    return (per_token - mean) / (var.sqrt() + eps) * mask


@ADVANTAGE_ESTIMATORS.register("process")
def process_supervised(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    """GRPO with process supervision (Shao et al., 2024, DeepSeekMath, §4.1.3): each step's reward is
    normalised by the mean and std of all step rewards of its group, and a token's advantage is the sum of the
    normalised rewards of the steps that end at or after it. ``token_rewards`` holds each step's reward at the
    step's last token, ``token_reward_mask`` marks those tokens."""
    if inputs.token_rewards is None or inputs.token_reward_mask is None:
        raise ValueError("the process estimator needs step rewards (token_rewards and token_reward_mask) from the task")
    g = inputs.group_size
    rewards, ends = inputs.token_rewards.float(), inputs.token_reward_mask.float()  # [N, T]
    n, t = rewards.shape
    grouped_r, grouped_m = rewards.view(-1, g * t), ends.view(-1, g * t)  # [groups, G*T]
    count = grouped_m.sum(dim=1, keepdim=True)
    mean = (grouped_r * grouped_m).sum(dim=1, keepdim=True) / count.clamp(min=1)
    var = (((grouped_r - mean) ** 2) * grouped_m).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    normalised = ((grouped_r - mean) / (var.sqrt() + eps) * grouped_m).view(n, t)  # zero off the step ends
    return normalised.flip(1).cumsum(1).flip(1)  # sum over the steps ending at or after each token


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, arXiv:1506.02438) over completion tokens:

        delta_t = r_t + gamma * V_{t+1} - V_t          (V past the last token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}      returns_t = A_t + V_t

    rewards, values, mask: ``[batch, tokens]``, the mask 1 on a completion's tokens (a prefix of each row);
    returns ``(advantages, returns)``, zero where the mask is zero. With gamma = lam = 1 (Open-Reasoner-Zero's
    choice) A_t is the sum of the rewards from t on, minus V_t.

    Worked example, one completion of 3 tokens, the outcome 1.0 on its last token, V = [0.5, 0.6, 0.8],
    gamma = lam = 1: deltas [0.1, 0.2, 0.2] -> A = [0.5, 0.4, 0.2], returns [1, 1, 1].
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def compute_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "group", eps: float = 1e-4, *,
                       completion_mask: torch.Tensor | None = None, token_rewards: torch.Tensor | None = None,
                       token_reward_mask: torch.Tensor | None = None,
                       values: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages for rewards laid out group after group: ``[N]``, or ``[N, T]`` for a per-token estimator.

    A group whose rewards are all equal gets zero advantage (never NaN): it carries no learning signal.
    Per-token outputs are zero where ``completion_mask`` is zero.
    """
    estimate = ADVANTAGE_ESTIMATORS.get(estimator)
    rewards = torch.as_tensor(rewards, dtype=torch.float32) if not torch.is_tensor(rewards) else rewards
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; drop or fill unscorable samples before computing advantages")
    _grouped(rewards, group_size)
    inputs = AdvantageInputs(rewards.float(), group_size, completion_mask, token_rewards, token_reward_mask, values)
    advantages = estimate(inputs, eps)
    if advantages.dim() == 2 and completion_mask is not None:
        advantages = advantages * completion_mask.to(advantages.dtype)
    return advantages.to(rewards.dtype)
