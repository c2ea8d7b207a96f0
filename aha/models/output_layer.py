"""Log-probabilities of tokens straight from the last hidden states: the output layer and the log-softmax in one
pass over blocks of rows, so that no [batch, completion, vocabulary] tensor of logits — nor its gradient — is
held for the whole micro-batch.

A 1,024-token completion of a 49K-word vocabulary makes 200 MB of fp32 logits a row, and as much again for
their gradient (a 152K-word vocabulary: 620 MB each). Here the model runs with its output layer skipped
(:func:`hidden_outputs`); :func:`linear_token_logprobs` multiplies a block of rows by the output weight at a
time, takes what the log-probabilities need and lets the block go. When the whole micro-batch's logits are small
(``KEEP_BYTES``, 256 MiB: the default CPU recipe's are ~25 MB) they are kept for the backward pass, which turns
them into their gradient in place (the logits path holds both, and a copy when the prompts are shared);
otherwise the backward multiplies each block again — one more product by the output layer, for memory that no
longer grows with the completion length (as Liger-Kernel's fused linear cross-entropy does on GPUs).

Only where it gives the model's own numbers: :func:`output_layer` checks once per model, by a forward with and
without the output layer, that the logits are exactly the output layer's product of what the model hands it
(Gemma 2's soft-capping is not: such a model keeps the logits path; Cohere's and Granite's scales by a power of
two pass through the product exactly).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from aha.algorithms.logprobs import gradient_coefficients, logit_gradients, logprob_rows
from aha.models.linear import AccumulatingLinear, _linear, _times_transposed, grad_added_in_place

KEEP_BYTES = 256 << 20
"""fp32 logits of a micro-batch up to this size are kept for the backward pass (and turned into their gradient
in place) instead of computed again."""
BLOCK_BYTES = 128 << 20
"""fp32 logits of one block of rows, when they are computed again: ~680 rows of a 49K-word vocabulary. Smaller
blocks make thin products (one forward-backward of 1,024 rows on a 2-core Xeon: 1.2-1.4 s in blocks of 170 rows,
0.9-1.05 s in blocks of 682, 0.7-0.8 s with the logits kept; docs/benchmarks.md)."""


def _block_rows(vocab: int) -> int:
    return max(1, BLOCK_BYTES // (4 * vocab))


def output_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """``model``'s output layer when the model's logits are exactly that layer applied to its last hidden
    states (a plain linear layer, nothing applied after it), else None. Found once per model by a two-token
    forward with and without the layer (no gradient, the random state and each module's mode left as they
    were); the answer is kept on the model."""
    known = model.__dict__.get("_aha_output_layer")
    if known is not None:
        return known or None
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    fits = type(layer) in (torch.nn.Linear, AccumulatingLinear) and type(layer.weight) is torch.nn.Parameter
    if fits:
        modes = [(module, module.training) for module in model.modules()]
        device = layer.weight.device
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                model.eval()
                logits = model(input_ids=ids, use_cache=False).logits
                with hidden_outputs(layer):
                    hidden = model(input_ids=ids, use_cache=False).logits
                fits = hidden.shape[-1] == layer.in_features and torch.equal(layer(hidden), logits)
        finally:
            for module, training in modes:
                module.training = training
    model.__dict__["_aha_output_layer"] = layer if fits else False
    return layer if fits else None


@contextlib.contextmanager
def hidden_outputs(layer: torch.nn.Module | None) -> Iterator[None]:
    """Within the block the output ``layer`` passes its input through, so the model's ``logits`` are its last
    hidden states (nothing changes with None)."""
    if layer is None or layer.__dict__.get("forward") is _identity:  # nothing to do, or an outer block does it
        yield
        return
    layer.forward = _identity
    try:
        yield
    finally:
        del layer.forward  # the class's forward again


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class _LinearTokenLogprobs(torch.autograd.Function):
    """log softmax((hidden @ weight^T + bias) * scale)[label] per row (and the entropy), a block of rows at a
    time. The weight's gradient is added into ``weight.grad`` in place when the layer accumulates so
    (``in_place``), else returned."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                scale: float, with_entropy: bool, entropy_grad: bool, in_place: bool):
        vocab, width = weight.shape
        flat, flat_labels = hidden.reshape(-1, width), labels.reshape(-1, 1)
        n = flat.shape[0]
        logprobs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if with_entropy else None
        keep = n * vocab * 4 <= KEEP_BYTES
        step = n if keep else _block_rows(vocab)
        kept = None
        for start in range(0, n, step):
            end = min(start + step, n)
            logits = _linear(flat[start:end], weight, bias, reduced=False)  # [b, V]
            logprob_rows(logits, flat_labels[start:end], scale, logprobs[start:end], lse[start:end],
                         entropy[start:end] if entropy is not None else None)
            kept = logits if keep else None
        ctx.scale, ctx.in_place, ctx.has_bias = scale, in_place, bias is not None
        ctx.weight, ctx.bias = weight, bias  # the parameters themselves (see _LinearAccumulatingGrad)
        ctx.set_materialize_grads(False)
        saved = [hidden, labels, lse, kept if kept is not None else torch.empty(0, device=hidden.device)]
        if entropy is None:
            ctx.save_for_backward(*saved)
            return logprobs.view(labels.shape)
        if entropy_grad:
            saved.append(entropy)
        else:
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(*saved)
        return logprobs.view(labels.shape), entropy.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None = None):
        if getattr(ctx, "done", False):  # the kept logits became their gradient the first time
            raise RuntimeError("the fused output layer's log-probs support one backward pass (no retain_graph)")
        ctx.done = True
        hidden, labels, lse, kept, *saved_entropy = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        vocab, width = weight.shape
        flat, flat_labels = hidden.reshape(-1, width), labels.reshape(-1, 1)
        n = flat.shape[0]
        coef, entropy_coef = gradient_coefficients(grad_logprobs, grad_entropy if saved_entropy else None,
                                                   ctx.scale, n, flat.device)
        entropy = saved_entropy[0] if saved_entropy else None
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wants_bias = ctx.has_bias and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(flat) if wants_hidden else None
        grad_weight = grad_bias = None
        if wants_weight and not ctx.in_place:
            grad_weight = torch.zeros_like(weight)
        step = n if kept.numel() else _block_rows(vocab)
        for start in range(0, n, step):
            end = min(start + step, n)
            rows = flat[start:end]
            logits = kept if kept.numel() else _linear(rows, weight, bias, reduced=False)  # [b, V]
            out = logits if logits.dtype == torch.float32 else \
                torch.empty(logits.shape, dtype=torch.float32, device=logits.device)  # the logits' gradient
            grad = logit_gradients(logits, flat_labels[start:end], lse[start:end], ctx.scale, coef[start:end],
                                   out, entropy_coef[start:end] if entropy_coef is not None else None,
                                   entropy[start:end] if entropy is not None else None).to(weight.dtype)
            if wants_hidden:
                grad_hidden[start:end] = _times_transposed(grad, weight.t(), reduced=False)
            if wants_weight:
                target = grad_weight if grad_weight is not None else weight.grad
                if target is None:
                    weight.grad = grad.t() @ rows
                else:
                    target.addmm_(grad.t(), rows)
            if wants_bias:
                grad_bias = grad.sum(0) if grad_bias is None else grad_bias.add_(grad.sum(0))
        grad_hidden = grad_hidden.view_as(hidden) if grad_hidden is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def linear_token_logprobs(hidden: torch.Tensor, layer: torch.nn.Linear, labels: torch.Tensor,
                          temperature: float = 1.0, entropy: bool = False, entropy_grad: bool = False):
    """log p(label) at each position under softmax(layer(hidden) / temperature), hidden [B, T, H] and labels
    [B, T] -> [B, T] fp32 — with ``entropy``, also each position's entropy [B, T] (differentiable with
    ``entropy_grad``, else detached): :func:`aha.algorithms.token_logprobs` of ``layer(hidden)`` without the
    logits held whole. Differentiable with respect to the hidden states and the layer's parameters."""
    scale = 1.0 / temperature if temperature > 0 else 1.0
    out = _LinearTokenLogprobs.apply(hidden, layer.weight, layer.bias, labels, scale, entropy, entropy_grad,
                                     isinstance(layer, AccumulatingLinear) and grad_added_in_place(layer.weight))
    if not entropy:
        return out
    logprobs, entropies = out
    return logprobs, entropies if entropy_grad else entropies.detach()
