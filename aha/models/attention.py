"""Attention on CPU for this project's loops: grouped key/value heads attended to as they are (registered with
transformers as ``aha_sdpa_gqa``), and :class:`SharedPrefix`, decoding that reads a prompt's KV cache once
for all the samples that continue it."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicLayer

from aha.utils.sequences import shared_prefix_length

GQA_ATTENTION = "aha_sdpa_gqa"


def _sdpa_gqa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except that a masked multi-token query on CPU attends to the grouped
    key/value heads as they are (``enable_gqa``) instead of to copies repeated for every query head: the same
    numbers without a [batch, heads, keys, head_dim] key and value copy per layer, made in the forward, kept
    for the backward and summed back in it (the training pass's largest per-row tensors)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    shared = kwargs.get(SHARED_PREFIX_KEYWORD)
    if shared is not None:
        with float32_products():
            return shared.attend(module.layer_idx, query, key, value, scaling), None
    plain = (getattr(module, "num_key_value_groups", 1) == 1 or query.device.type != "cpu" or query.shape[2] == 1
             or not isinstance(attention_mask, torch.Tensor) or kwargs.get("position_bias") is not None
             or kwargs.get("softcap") is not None or kwargs.get("output_attentions"))
    if plain:
        return float32_attention(lambda q, k, v: sdpa_attention_forward(
            module, q, k, v, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)[0],
            query, key, value), None
    out = float32_attention(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True), query, key, value)
    return out.transpose(1, 2).contiguous(), None


def reduced_products() -> bool:
    """Whether oneDNN computes float32 products in a lower precision now (``matmul_precision`` medium: bfloat16)."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "ieee") not in ("ieee", "none")


@contextlib.contextmanager
def float32_products():
    """oneDNN's float32 products in float32 within the block, whatever ``torch.set_float32_matmul_precision``
    says. CPU flash attention computes in blocks of a few dozen queries and keys; with bfloat16 products
    (``medium``) every block's operands are converted, and the forward and backward of the default recipe's
    attention took ~3x as long (24.9 against 8.0 ms for 4 rows of 190 tokens on a 2-core Xeon with AMX,
    benchmarks/precision.py), which ate the gain of the linear layers' bfloat16 products."""
    if not reduced_products():
        yield
        return
    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def float32_attention(attend: Callable[..., torch.Tensor], query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor) -> torch.Tensor:
    """``attend(query, key, value)`` with its float32 products in float32 (:func:`float32_products`), in the
    forward and, when it is part of a graph, in its backward too. Other devices than the CPU compute as set."""
    if query.device.type != "cpu" or not reduced_products():
        return attend(query, key, value)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (query, key, value)):
        with float32_products():
            return attend(query, key, value)
    return _Float32Attention.apply(attend, query, key, value)


class _Float32Attention(torch.autograd.Function):
    """The attention's own graph, built and run back under :func:`float32_products` (autograd runs a node's
    backward after the forward's context has closed). One backward per forward, as the training loops run."""

    @staticmethod
    def forward(ctx, attend: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        with float32_products(), torch.enable_grad():
            detached = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            out = attend(*detached)
        ctx.inner = (detached, out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        detached, out = ctx.inner
        wanted = [t for t in detached if t.requires_grad]
        with float32_products():
            grads = iter(torch.autograd.grad(out, wanted, grad))
        del ctx.inner
        return (None, *(next(grads) if t.requires_grad else None for t in detached))


SHARED_PREFIX_KEYWORD = "aha_shared_prefix"
"""The forward() keyword that hands a :class:`SharedPrefix` to :func:`_sdpa_gqa_attention`."""


def _flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None,
                     scaling: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU flash attention with its log-sum-exp: ``[n, kv, q, d]`` queries of the same key/value heads."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=bias,
                                                                     scale=scaling)


class SharedPrefix:
    """Decoding where groups of rows continue the same prompt (the G samples of a GRPO group, the k samples of
    an evaluation problem): each group's prompt keys and values are held once, and a decoded token attends to
    them and to its own row's tokens separately, the two parts merged by their log-sum-exp (cascade attention,
    as FlashInfer's shared-prefix decoding). The plain way repeats the prompt's cache for every row, so each
    decoded token of each row reads its own copy of the prompt: with 8 samples a prompt, 8x the reads.

    ``cache``: the prompts' KV cache ``[groups, kv heads, width, head_dim]`` per layer; ``mask``: which of its
    positions are tokens (``[groups, width]``, 0 at left padding); ``row_group``: each decoded row's group.
    The rows' own cache holds only what follows the prefix. Passed to the model as ``aha_shared_prefix=``, read
    by :func:`_sdpa_gqa_attention` (CPU, single-token queries); :meth:`select` follows the rows kept when the
    batch is compacted."""

    def __init__(self, cache, mask: torch.Tensor, row_group: torch.Tensor):
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]
        dtype = self.keys[0].dtype
        self.bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask == 0, float("-inf"))
        self.bias = self.bias[:, None, None, :]  # [groups, 1, 1, width], added to the attention scores
        self.empty = mask.sum(dim=1) == 0  # a group with no prefix token (its prompt is its last token alone)
        self.row_group = row_group.to(mask.device)
        self._index()

    @staticmethod
    def supports(model: torch.nn.Module, cache) -> bool:
        """Whether ``model`` decodes through :func:`_sdpa_gqa_attention` on CPU and ``cache`` is plain
        full-attention layers (no sliding window, no quantisation) whose keys and values are as wide (CPU flash
        attention's condition; multi-head latent attention's keys are wider)."""
        config = getattr(model, "config", None)
        layers = getattr(cache, "layers", None)
        return (getattr(config, "_attn_implementation", None) == GQA_ATTENTION and bool(layers)
                and all(type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
                        and layer.keys.shape[-1] == layer.values.shape[-1]  # not MLA's wider keys
                        and layer.keys.device.type == "cpu" for layer in layers))

    def _index(self) -> None:
        """``gather`` [groups, most rows of a group]: the rows of each group (``rows``: none); ``slot`` [rows]:
        each row's place in ``gather`` flattened."""
        rows = self.row_group.shape[0]
        order = torch.argsort(self.row_group, stable=True)
        counts = torch.bincount(self.row_group, minlength=len(self.keys[0]))
        starts = counts.cumsum(0) - counts
        rank = torch.arange(rows, device=order.device) - starts[self.row_group[order]]
        self.width = int(counts.max()) if rows else 0
        self.gather = torch.full((len(counts), self.width), rows, dtype=torch.long, device=order.device)
        self.gather[self.row_group[order], rank] = order
        self.slot = torch.empty(rows, dtype=torch.long, device=order.device)
        self.slot[order] = self.row_group[order] * self.width + rank

    def select(self, keep: torch.Tensor) -> None:
        """Keep the rows ``keep`` (in that order); groups left with no row are dropped."""
        row_group = self.row_group[keep]
        present, row_group = torch.unique(row_group, return_inverse=True)
        if len(present) < len(self.keys[0]):
            self.keys = [k[present] for k in self.keys]
            self.values = [v[present] for v in self.values]
            self.bias, self.empty = self.bias[present], self.empty[present]
        self.row_group = row_group
        self._index()

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
        """Attention of single-token queries ``[rows, heads, 1, d]`` to the group's prefix and to the row's own
        ``key``/``value`` ``[rows, kv heads, n, d]``; returns ``[rows, 1, heads, d]``."""
        rows, heads, length, dim = query.shape
        if length != 1:
            raise ValueError(f"shared-prefix attention decodes one token a row, got {length}")
        kv = key.shape[1]
        q = query.reshape(rows, kv, heads // kv, dim)  # the query heads of each key/value head, as its queries
        own, own_lse = _flash_attention(q, key, value, None, scaling)  # [rows, kv, n_rep, d], [rows, kv, n_rep]
        padded = torch.cat([q, q.new_zeros(1, *q.shape[1:])])  # row `rows`: the filler of short groups
        grouped = padded[self.gather].transpose(1, 2).reshape(len(self.gather), kv, -1, dim)  # [g, kv, w*n_rep, d]
        pre, pre_lse = _flash_attention(grouped, self.keys[layer], self.values[layer], self.bias, scaling)
        pre_lse = pre_lse.masked_fill(self.empty[:, None, None], float("-inf"))
        pre = pre.reshape(len(self.gather), kv, self.width, -1, dim).transpose(1, 2).flatten(0, 1)[self.slot]
        pre_lse = pre_lse.reshape(len(self.gather), kv, self.width, -1).transpose(1, 2).flatten(0, 1)[self.slot]
        total = torch.logaddexp(pre_lse, own_lse)
        out = pre * (pre_lse - total).exp_()[..., None] + own * (own_lse - total).exp_()[..., None]
        return out.reshape(rows, 1, heads, dim).to(query.dtype)


def grouped_query_attention(model: torch.nn.Module) -> bool:
    """Switch a model that uses transformers' ``sdpa`` attention to :func:`_sdpa_gqa_attention` (registered as
    ``aha_sdpa_gqa``, with sdpa's masks); returns whether it did. Not saved with the model: a checkpoint's
    config.json does not record the attention implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if not isinstance(model, PreTrainedModel) or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if GQA_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(GQA_ATTENTION, _sdpa_gqa_attention)
        AttentionMaskInterface.register(GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GQA_ATTENTION)
    return model.config._attn_implementation == GQA_ATTENTION


def windowed_attention(model: torch.nn.Module) -> bool:
    """Whether some attention layer of ``model`` sees only a window of the columns before a query (sliding-window
    or chunked attention: Mistral, Gemma 2 and 3, Qwen2 with ``use_sliding_window``, gpt-oss, Llama 4). Such a
    window counts padding columns, so a prompt laid out as [shared prefix][left padding][rest] (the system prompt
    computed once for every row) would see fewer of its own tokens than alone: on those models the shared prefix
    stays in each row, and the rows are left-padded as a whole."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    types = getattr(config, "layer_types", None)
    if types:
        return any(kind in ("sliding_attention", "chunked_attention") for kind in types)
    return any(getattr(config, name, None) is not None for name in ("sliding_window", "attention_chunk_size"))


def system_prompt_length(model: torch.nn.Module, prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with that may run through ``model`` once for all of them, the rows laid out
    [shared][left padding][rest] after it (``aha.utils.sequences.shared_prefix_length``); 0 on a model with
    windowed attention (:func:`windowed_attention`), where that layout is not exact."""
    return 0 if windowed_attention(model) else shared_prefix_length(prompts)
