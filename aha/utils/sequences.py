"""Token sequences: the prefix a batch of prompts shares, left-padded layouts around it, and micro-batches of
sorted rows by padded positions."""

from __future__ import annotations

import torch

MIN_SHARED_PREFIX = 8
"""Prompts sharing fewer tokens than this are computed whole (the saving would not pay for the extra pass)."""


def shared_prefix_length(sequences: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Tokens every sequence starts with, leaving at least one token of each (with ``minimum=1``:
    ``[[1, 2, 3], [1, 2, 4, 5]]`` -> 2, ``[[1, 2], [1, 2, 3]]`` -> 1); 0 for a single sequence (nothing to
    share) or when fewer than ``minimum`` tokens are common."""
    if len(sequences) < 2:
        return 0
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    shared = 0
    while shared < shortest - 1 and all(s[shared] == first[shared] for s in sequences):
        shared += 1
    return shared if shared >= minimum else 0


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, width]`` token ids padded on the left with ``pad_id``, and the mask (1 on real tokens)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def split_by_positions(rows: torch.Tensor, lengths: torch.Tensor, positions: int, most_rows: int) -> list[torch.Tensor]:
    """``rows`` (longest completion first) in consecutive micro-batches of at most ``positions`` padded completion
    positions each — a micro-batch pads to its first row's length — and at most ``most_rows`` rows (a row longer
    than ``positions`` alone): the fewest micro-batches, and of those the split with the fewest padded positions
    (a shortest path over the cut points)."""
    widths = [max(int(lengths[r]), 1) for r in rows]
    best: list[tuple[int, int] | None] = [(0, 0)] + [None] * len(widths)  # (micro-batches, padded positions)
    cut = [0] * (len(widths) + 1)  # where the last micro-batch of the best split of rows[:end] begins
    for end in range(1, len(widths) + 1):
        for begin in range(end - 1, max(end - most_rows, 0) - 1, -1):
            count = end - begin
            if count > 1 and widths[begin] * count > positions:
                break  # starting earlier only adds longer rows
            cost = (best[begin][0] + 1, best[begin][1] + widths[begin] * count)
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, begin
    parts, end = [], len(widths)
    while end:
        parts.append(rows[cut[end] : end])
        end = cut[end]
    return parts[::-1]
