"""The policy's forward pass over a training micro-batch, returning the logits that predict each
completion token. With ``share_prefix`` a group's prompt is computed once and its KV cache reused by
the group's completions — the same numbers as the plain pass, with the prompt's cost paid once per group
instead of once per completion (gradients flow back through the shared cache). The tokens every group's
prompt starts with (the system prompt) are computed once per micro-batch. :func:`completion_logprobs` takes the
log-probabilities from the last hidden states through the output layer a block of rows at a time
(``aha.models.output_layer``), where the model allows it, so the micro-batch's logits are never held whole."""

from __future__ import annotations

import copy

import torch

from aha.algorithms import token_logprobs, token_logprobs_and_entropy
from aha.models import cache_keyword, output_cache, prefix_cache, reusable_cache
from aha.models.attention import system_prompt_length
from aha.models.checkpointing import checkpointed_layers
from aha.models.output_layer import hidden_outputs, linear_token_logprobs, output_layer
from aha.types import TrainBatch
from aha.utils.sequences import left_pad


def completion_logprobs(model: torch.nn.Module, mb: TrainBatch, *, prompts: PromptPass | None = None,
                        share_prefix: bool = True, fuse: bool = True, temperature: float = 1.0,
                        entropy: bool = False, entropy_grad: bool = False):
    """``model``'s log-probabilities [m, C] of ``mb``'s completion tokens under softmax(logits / temperature) —
    with ``entropy``, also each position's entropy (differentiable with ``entropy_grad``) — from ``prompts`` (the
    pass's prompts run once) when given. With ``fuse`` (and ``prompts`` made with it) the output layer and the
    log-softmax run together a block of rows at a time where the model allows it (``output_layer``): the same
    numbers without the [m, C, V] logits."""
    layer = prompts.layer if prompts is not None else output_layer(model) if fuse else None
    with hidden_outputs(layer):  # the model's "logits" are then its last hidden states
        if prompts is not None:
            outputs = prompts.completion_logits(mb)
        else:
            outputs = completion_logits(model, mb, share_prefix=share_prefix)
    labels = mb.completion_ids.to(outputs.device)
    if layer is not None:
        return linear_token_logprobs(outputs, layer, labels, temperature, entropy, entropy_grad)
    if entropy:
        return token_logprobs_and_entropy(outputs, labels, temperature, entropy_grad)
    return token_logprobs(outputs, labels, temperature)


def completion_logits(model: torch.nn.Module, mb: TrainBatch, *, share_prefix: bool = True) -> torch.Tensor:
    """Logits [m, C, V] at the positions that predict completion tokens (the sampling temperature is applied
    by ``aha.algorithms.token_logprobs``)."""
    device = next(model.parameters()).device
    if share_prefix and mb.prompt_width > 0 and reusable_cache(model):
        logits = _shared_prefix_logits(model, mb, device)
    else:
        with checkpointed_layers(model):  # with gradient_checkpointing: the layers run again in the backward
            out = model(input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device),
                        position_ids=mb.position_ids.to(device), logits_to_keep=mb.completion_width + 1,
                        use_cache=False)
        logits = out.logits[:, :-1, :]
    return logits


def _shared_prefix_logits(model: torch.nn.Module, mb: TrainBatch, device: torch.device) -> torch.Tensor:
    p, c = mb.prompt_width, mb.completion_width
    groups, inverse = torch.unique(mb.group_ids.cpu(), return_inverse=True)  # inverse: row -> its group's slot
    first_row = torch.zeros(len(groups), dtype=torch.long)
    first_row.scatter_reduce_(0, inverse, torch.arange(mb.size), reduce="amin", include_self=False)
    prompt, prompt_mask = _prompt_pass(model, mb, first_row, device)
    inverse = inverse.to(device)
    first_logits = prompt.logits[inverse]  # [m, 1, V]: predicts each row's first completion token
    if c == 1:
        return first_logits
    cache = output_cache(prompt)
    cache.batch_select_indices(inverse)  # one copy of the group's prompt cache per row (differentiable)
    rest = model(input_ids=mb.completion_ids[:, : c - 1].to(device),
                 attention_mask=torch.cat([prompt_mask[inverse], mb.attention_mask[:, p : p + c - 1].to(device)], 1),
                 position_ids=mb.position_ids[:, p : p + c - 1].to(device), use_cache=True,
                 **{cache_keyword(model): cache})
    return torch.cat([first_logits, rest.logits], dim=1)  # [m, C, V]


def prompt_tokens(batch: TrainBatch, rows: torch.Tensor) -> list[list[int]]:
    """The prompt tokens (padding left out) of the batch's ``rows``."""
    p = batch.prompt_width
    return [ids[m.bool()].tolist() for ids, m in zip(batch.input_ids[rows, :p], batch.attention_mask[rows, :p])]


def _prompt_pass(model: torch.nn.Module, mb: TrainBatch, first_row: torch.Tensor, device: torch.device):
    """Each group's prompt through the model once: (the output, with the last position's logits and the cache;
    the prompt's attention mask ``[groups, width]``). When the prompts start with the same tokens (a system
    prompt), those are computed once for all and the prompts laid out as [shared][left padding][the rest]."""
    p = mb.prompt_width
    ids, mask = mb.input_ids[first_row, :p], mb.attention_mask[first_row, :p]
    prompts = prompt_tokens(mb, first_row)
    shared = system_prompt_length(model, prompts)
    if not shared:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=mb.position_ids[first_row, :p].to(device), use_cache=True, logits_to_keep=1)
        return out, mask.to(device)
    cache = prefix_cache(model, torch.tensor([prompts[0][:shared]], device=device), len(prompts))
    rest_ids, rest_mask = left_pad([q[shared:] for q in prompts], 0, device)  # padding is masked: any id does
    full_mask = torch.cat([torch.ones((len(prompts), shared), dtype=torch.long, device=device), rest_mask], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)[:, shared:]
    out = model(input_ids=rest_ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{cache_keyword(model): cache})
    return out, full_mask


class PromptPass:
    """Every prompt of an optimisation pass through the policy once, however many micro-batches use it.

    A micro-batch's loss needs the KV cache of its rows' prompts and the logits at each prompt's last position
    (they predict the first completion token). Computing them per micro-batch repeats the shared system prompt
    and every group split over micro-batches. Here the prompts run once (the system prompt once for all), each
    micro-batch reads detached copies of the results, its backward accumulates their gradients, and
    :meth:`backward` sends the accumulated gradients through the prompt pass once: the same gradients as
    computing the prompts per micro-batch (``tests/trainer/test_forward.py``), for a fraction of the work. The
    prompts' graph is held while the micro-batches run (a few hundred MB for the default recipe), so they run
    forward once: computing them again for the backward instead cost 2-4% of the pass (docs/benchmarks.md).

        prompts = PromptPass(model, batch, groups)      # [groups] prompts, with the graph
        for mb in micro_batches:
            completion_logits = prompts.completion_logits(mb)
            loss(mb).backward()                          # gradients stop at the copies
        prompts.backward()                               # ... and go on through the prompts, once
    """

    def __init__(self, model: torch.nn.Module, batch: TrainBatch, group_ids: list[int], fuse: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.slot = {g: i for i, g in enumerate(group_ids)}
        self.first_row = torch.tensor([int((batch.group_ids == g).nonzero()[0]) for g in group_ids], dtype=torch.long)
        self.layer = output_layer(model) if fuse else None
        """With ``fuse``, the output layer its results skip (None: they are logits): ``completion_logprobs``."""
        with hidden_outputs(self.layer):
            out, self.mask = _prompt_pass(model, batch, self.first_row, self.device)  # mask: [groups, W]
        self.cache = output_cache(out)
        # the results with their graph (None under no_grad), and the detached copies the micro-batches read
        self.outputs: list[torch.Tensor] | None = _outputs(out, self.cache) if torch.is_grad_enabled() else None
        self.copies = [t.detach().requires_grad_(self.outputs is not None) for t in _outputs(out, self.cache)]
        self.first_logits = self.copies[0]  # [groups, 1, V]
        self.layers = [(self.copies[1 + 2 * i], self.copies[2 + 2 * i]) for i in range(len(self.cache.layers))]

    def completion_logits(self, mb: TrainBatch) -> torch.Tensor:
        """Logits [m, C, V] at the positions that predict ``mb``'s completion tokens (with :attr:`layer`, the last
        hidden states [m, C, H] there, when called within ``hidden_outputs(layer)``)."""
        p, c = mb.prompt_width, mb.completion_width
        slots = torch.tensor([self.slot[int(g)] for g in mb.group_ids], dtype=torch.long, device=self.device)
        logits = self.first_logits[slots]  # [m, 1, V]
        if c > 1:
            cache = copy.copy(self.cache)
            cache.layers = []
            for layer, (keys, values) in zip(self.cache.layers, self.layers):
                mine = copy.copy(layer)
                mine.keys, mine.values = keys[slots], values[slots]
                cache.layers.append(mine)
            rest = self.model(input_ids=mb.completion_ids[:, : c - 1].to(self.device),
                              attention_mask=torch.cat([self.mask[slots],
                                                        mb.attention_mask[:, p : p + c - 1].to(self.device)], 1),
                              position_ids=mb.position_ids[:, p : p + c - 1].to(self.device), use_cache=True,
                              **{cache_keyword(self.model): cache})
            logits = torch.cat([logits, rest.logits], dim=1)
        return logits

    def backward(self) -> None:
        """The gradients the micro-batches left on the copies, through the prompt pass (once); its graph is
        freed."""
        outputs, self.outputs = self.outputs, None
        if outputs is None:
            return
        pairs = [(t, c.grad) for t, c in zip(outputs, self.copies) if c.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [grad for _, grad in pairs])


def _outputs(out, cache) -> list[torch.Tensor]:
    """A prompt pass's results: the last position's logits, then every layer's keys and values."""
    return [out.logits] + [t for layer in cache.layers for t in (layer.keys, layer.values)]
