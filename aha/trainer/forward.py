"""The policy's forward pass over a training micro-batch, returning the logits that predict each
completion token. With ``share_prefix`` a group's prompt is computed once and its KV cache reused by
the group's completions — the same numbers as the plain pass, with the prompt's cost paid once per group
instead of once per completion (gradients flow back through the shared cache)."""

from __future__ import annotations

import torch

from aha.models import cache_keyword, output_cache
from aha.types import TrainBatch


def completion_logits(model: torch.nn.Module, mb: TrainBatch, *, temperature: float = 1.0,
                      share_prefix: bool = True) -> torch.Tensor:
    """Logits [m, C, V] at the positions that predict completion tokens, divided by ``temperature``."""
    device = next(model.parameters()).device
    if share_prefix and mb.prompt_width > 0:
        logits = _shared_prefix_logits(model, mb, device)
    else:
        out = model(input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device),
                    position_ids=mb.position_ids.to(device), logits_to_keep=mb.completion_width + 1, use_cache=False)
        logits = out.logits[:, :-1, :]
    logits = logits.float()
    return logits / temperature if temperature > 0 else logits


def _shared_prefix_logits(model: torch.nn.Module, mb: TrainBatch, device: torch.device) -> torch.Tensor:
    p, c = mb.prompt_width, mb.completion_width
    groups, inverse = torch.unique(mb.group_ids, return_inverse=True)  # inverse: row -> its group's slot
    first_row = torch.zeros(len(groups), dtype=torch.long)
    first_row.scatter_reduce_(0, inverse, torch.arange(mb.size), reduce="amin", include_self=False)
    prompt = model(input_ids=mb.input_ids[first_row, :p].to(device),
                   attention_mask=mb.attention_mask[first_row, :p].to(device),
                   position_ids=mb.position_ids[first_row, :p].to(device), use_cache=True, logits_to_keep=1)
    inverse = inverse.to(device)
    first_logits = prompt.logits[inverse]  # [m, 1, V]: predicts each row's first completion token
    if c == 1:
        return first_logits
    cache = output_cache(prompt)
    cache.batch_select_indices(inverse)  # one copy of the group's prompt cache per row (differentiable)
    rest = model(input_ids=mb.completion_ids[:, : c - 1].to(device),
                 attention_mask=mb.attention_mask[:, : p + c - 1].to(device),
                 position_ids=mb.position_ids[:, p : p + c - 1].to(device), use_cache=True,
                 **{cache_keyword(model): cache})
    return torch.cat([first_logits, rest.logits], dim=1)  # [m, C, V]
