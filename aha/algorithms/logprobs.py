"""Per-token log-probabilities and entropies from logits, in row chunks so memory and time stay bounded.

A ``log_softmax`` over a 50k-word vocabulary makes more [batch, seq, vocab] tensors than the logits: the logits
divided by the temperature, the shifted and exponentiated copies, the gradient's zeros and scatter. Here one
chunk of rows (a few MB: it stays in the CPU's cache) is expanded at a time, forward and backward, and the
gradient of the logits is written in one pass: ``softmax(z / T)`` scaled, minus at the label. The logits
themselves (kept for the backward pass, as ``log_softmax`` keeps its output) are the only full-size tensor.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 4 << 20
"""Working set of one chunk of rows (fp32): small enough to stay in cache, large enough to amortise the loop."""


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _scaled(rows: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """``out`` (fp32) = rows * scale, computed in fp32 whatever the logits' dtype."""
    if rows.dtype == torch.float32:
        return torch.mul(rows, scale, out=out)
    return out.copy_(rows).mul_(scale)


def logprob_rows(flat: torch.Tensor, labels: torch.Tensor, scale: float, logprobs: torch.Tensor, lse: torch.Tensor,
                 entropy: torch.Tensor | None = None) -> None:
    """For logits ``flat`` [n, V] and ``labels`` [n, 1]: fill ``logprobs`` [n] with log softmax(flat * scale) at
    the label, ``lse`` [n] with the log-sum-exp of the scaled logits (what :func:`logit_gradients` needs) and,
    when given, ``entropy`` [n] with each row's entropy — in chunks of rows, fp32 whatever ``flat``'s dtype."""
    n, vocab = flat.shape
    step = _chunk_rows(vocab)
    work = torch.empty(min(step, n), vocab, dtype=torch.float32, device=flat.device)
    for start in range(0, n, step):
        end = min(start + step, n)
        x = _scaled(flat[start:end], scale, work[: end - start])  # [c, V] scaled logits (fp32)
        top = x.amax(dim=-1, keepdim=True)
        x.sub_(top)
        picked = x.gather(1, labels[start:end]).squeeze(1)
        if entropy is not None:  # H = log s - sum(e * x) / s with e = exp(x), s = sum(e), x shifted
            e = x.exp()
            total = e.sum(dim=-1)
            entropy[start:end] = total.log() - (e.mul_(x)).sum(dim=-1) / total
        else:
            total = x.exp_().sum(dim=-1)
        log_total = total.log()
        logprobs[start:end] = picked - log_total
        lse[start:end] = top.squeeze(1) + log_total


def logit_gradients(flat: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, scale: float, coef: torch.Tensor,
                    out: torch.Tensor, entropy_coef: torch.Tensor | None = None,
                    entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient of the logits ``flat`` [n, V] written into ``out`` [n, V] (which may be ``flat`` itself when
    fp32), chunk by chunk, in one pass: ``coef`` [n, 1] is d loss / d (scaled logit of the label) — so the
    gradient is ``coef * (onehot - softmax)`` — and ``entropy_coef`` [n, 1] d loss / d entropy times the scale
    (with ``entropy`` [n], each row's entropy)."""
    n, vocab = flat.shape
    step = _chunk_rows(vocab)
    same_dtype = out.dtype == torch.float32
    work = None if same_dtype else torch.empty(min(step, n), vocab, dtype=torch.float32, device=flat.device)
    for start in range(0, n, step):
        end = min(start + step, n)
        x = _scaled(flat[start:end], scale, out[start:end] if same_dtype else work[: end - start])
        x.sub_(lse[start:end, None])  # log p
        if entropy_coef is None:
            x.exp_().mul_(coef[start:end].neg())  # -softmax * coef
        else:  # d H / d x_j = -p_j (log p_j + H): -p * (coef + entropy_coef * (log p + H))
            p = x.exp()
            x.add_(entropy[start:end, None]).mul_(entropy_coef[start:end]).add_(coef[start:end])
            x.mul_(p).neg_()
        x.scatter_add_(1, labels[start:end], coef[start:end])  # + coef at the label
        if not same_dtype:
            out[start:end] = x
    return out


def gradient_coefficients(grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None, scale: float,
                          n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The [n, 1] coefficients of :func:`logit_gradients` from the gradients of the log-probs and the entropies
    (either None: no gradient reached them)."""
    coef = (grad_logprobs.reshape(-1, 1).float() * scale if grad_logprobs is not None
            else torch.zeros(n, 1, dtype=torch.float32, device=device))
    entropy_coef = grad_entropy.reshape(-1, 1).float() * scale if grad_entropy is not None else None
    return coef, entropy_coef


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits * scale)[label] per row, with the entropy of that distribution (differentiable with
    ``entropy_grad``, for an entropy bonus in the loss)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, scale: float, with_entropy: bool,
                entropy_grad: bool = False):
        vocab = logits.shape[-1]
        flat, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1, 1)
        logprobs = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logprobs)  # log-sum-exp of the scaled logits, for the backward pass
        entropy = torch.empty_like(logprobs) if with_entropy else None
        logprob_rows(flat, flat_labels, scale, logprobs, lse, entropy)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        if entropy is None:
            ctx.save_for_backward(logits, labels, lse)
            return logprobs.view(labels.shape)
        if entropy_grad:
            ctx.save_for_backward(logits, labels, lse, entropy)
        else:
            ctx.save_for_backward(logits, labels, lse)
            ctx.mark_non_differentiable(entropy)
        return logprobs.view(labels.shape), entropy.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None = None):
        logits, labels, lse, *saved_entropy = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1, 1)
        coef, entropy_coef = gradient_coefficients(grad_logprobs, grad_entropy if saved_entropy else None,
                                                   ctx.scale, flat.shape[0], flat.device)
        grad = logit_gradients(flat, flat_labels, lse, ctx.scale, coef, torch.empty_like(flat), entropy_coef,
                               saved_entropy[0] if saved_entropy else None)
        return grad.view_as(logits), None, None, None, None


def _scale(temperature: float) -> float:
    return 1.0 / temperature if temperature > 0 else 1.0


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label) at each position under softmax(logits / temperature): logits [B, T, V], labels [B, T] ->
    [B, T] (differentiable with respect to the logits; temperature <= 0 means 1)."""
    return _TokenLogprobs.apply(logits, labels, _scale(temperature), False)


def token_logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` and, from the same pass over the logits, the entropy of each position's
    next-token distribution (differentiable with respect to the logits with ``entropy_grad``, else detached)."""
    logprobs, entropy = _TokenLogprobs.apply(logits, labels, _scale(temperature), True, entropy_grad)
    return logprobs, entropy if entropy_grad else entropy.detach()


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution softmax(logits / temperature) at each position: [B, T, V] ->
    [B, T] (no gradient)."""
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return _TokenLogprobs.apply(logits, labels, _scale(temperature), True)[1]
