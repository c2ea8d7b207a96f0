"""Group-relative advantage estimators (no value model).

Rewards arrive laid out group after group: with ``group_size = G`` the first G entries are the G
completions of prompt 0, the next G those of prompt 1, and so on.

Worked example, one group of G = 4 with rewards [1, 0, 0, 1]:
    mean = 0.5, unbiased std = sqrt((4 * 0.25) / 3) = 0.5774
    group  (GRPO)     -> (r - 0.5) / (0.5774 + eps) = [ 0.866, -0.866, -0.866,  0.866]
    none   (Dr. GRPO) ->  r - 0.5                    = [ 0.5,   -0.5,   -0.5,    0.5  ]
    rloo              ->  r_i - mean_{j != i} r_j     = [ 0.667, -0.667, -0.667,  0.667]
"""

from __future__ import annotations

import torch

from aha.algorithms.registry import Registry

ADVANTAGE_SCALES: Registry = Registry("advantage scale")


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


@ADVANTAGE_SCALES.register("group")
def group_scaled(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """GRPO: (r - group mean) / (group std + eps)."""
    grouped = _grouped(rewards, group_size)  # [num_groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (_std(grouped, dim=1) + eps)).view(-1)


@ADVANTAGE_SCALES.register("none")
def unscaled(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """Dr. GRPO: r - group mean, no division by the std (which favours too-easy and too-hard prompts)."""
    grouped = _grouped(rewards, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


@ADVANTAGE_SCALES.register("batch")
def batch_scaled(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(r - group mean) / (std of the whole batch's rewards + eps)."""
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (_std(rewards) + eps)).view(-1)


@ADVANTAGE_SCALES.register("rloo")
def leave_one_out(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """RLOO: r_i - mean of the other G-1 rewards of the group (= G/(G-1) * (r_i - group mean))."""
    grouped = _grouped(rewards, group_size)
    if group_size < 2:
        return torch.zeros_like(rewards)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).view(-1)


def compute_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages for rewards laid out group after group; returns a tensor shaped like ``rewards``.

    A group whose rewards are all equal gets zero advantage (never NaN): it carries no learning signal.
    """
    estimator = ADVANTAGE_SCALES.get(scale)
    rewards = torch.as_tensor(rewards, dtype=torch.float32) if not torch.is_tensor(rewards) else rewards
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; drop or fill unscorable samples before computing advantages")
    return estimator(rewards.float(), group_size, eps).to(rewards.dtype)
