"""Per-token log-probabilities and entropies from logits, in row chunks so memory stays bounded.

A full ``log_softmax`` over a 50k-word vocabulary makes a second [batch, seq, vocab] tensor; here only a
chunk of rows is expanded at a time (the logits themselves are the only full-size tensor).
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(label) at each position: logits [B, T, V], labels [B, T] -> [B, T] (differentiable)."""
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [B*T, V]
    flat_labels = labels.reshape(-1)  # [B*T]
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = flat_logits[start : start + chunk_size].float()
        picked = rows.gather(1, flat_labels[start : start + chunk_size].unsqueeze(1)).squeeze(1)
        pieces.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(pieces).view(labels.shape)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: [B, T, V] -> [B, T] (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        logp = torch.log_softmax(flat[start : start + chunk_size].float(), dim=-1)
        pieces.append(-(logp.exp() * logp).sum(dim=-1))
    return torch.cat(pieces).view(logits.shape[:-1])
