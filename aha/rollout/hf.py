"""Generation with a ``transformers`` model: batched sampling with the KV cache, on CPU or GPU.

The G completions of a prompt share its prefix: the prompt is run through the model once, and only the new
tokens are computed for each sample. In the decode loop on the CPU the samples attend to one copy of the
prompt's KV cache (:class:`aha.models.attention.SharedPrefix`); elsewhere the cache is repeated G times.
The loop runs one forward per token over the rows still going: a row that ends (end token or stop string)
stops costing compute once a quarter of the batch has ended and the ended rows are dropped from the batch
and its cache (``transformers.generate``, the alternative, computes every row until the longest ends). On the CPU the
linear layers compute with oneDNN-packed copies of their weights while the loop runs, except on Intel processors
(:func:`packed_linears`).

With a seed per completion, each row samples from its own random stream (inverse-CDF sampling with one
uniform number per row and token), so a completion depends on its seed and the model only — not on which
other prompts share its batch, or on how many processes split the step's prompts.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          TopPLogitsWarper)

from aha.models import cache_keyword, output_cache, prefix_cache as shared_cache, reserve_cache, reusable_cache
from aha.models.attention import SHARED_PREFIX_KEYWORD, SharedPrefix, system_prompt_length
from aha.models.linear import (ONEDNN_LINEAR, AccumulatingLinear, bfloat16_products, output_layer_of,
                               packs_for_decoding)
from aha.rollout.base import Generation, SamplingParams, end_token_ids, pad_token_id
from aha.utils.memory import release_free_memory
from aha.utils.sequences import left_pad


class _TokenLogprobs(LogitsProcessor):
    """Records each sampled token's log-probability under softmax(logits / temperature) while generate()
    runs: a call sees the logits of one step, and the next call (or :meth:`finish`) sees which token was
    sampled from them. One [batch, vocab] tensor is held at a time."""

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.pending: torch.Tensor | None = None  # [batch, vocab] log-probs of the step not yet sampled
        self.picked: list[torch.Tensor] = []  # per step: [batch]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.finish(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sampled: torch.Tensor) -> None:
        if self.pending is not None:
            self.picked.append(self.pending.gather(1, sampled[:, None].to(self.pending.device)).squeeze(1))
            self.pending = None

    def rows(self) -> list[list[float]]:
        return torch.stack(self.picked, dim=1).tolist() if self.picked else []


class _SeededSampling(LogitsProcessor):
    """Sampling under greedy decoding: each row's next token is drawn from softmax(logits / temperature),
    top-p truncated, by inverse CDF with one uniform number from the row's own generator; the returned
    scores are -inf except at the drawn token, so generate()'s argmax picks it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def select(self, rows: list[int]) -> None:
        """Keep the generators of these batch rows only (the others' rows left the batch)."""
        self.generators = [self.generators[r] for r in rows]

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """The next token of each row [batch] from its logits [batch, vocab]: the first whose cumulative
        (unnormalised) probability reaches the row's uniform number times the total."""
        logits = scores.float() / self.temperature  # [batch, vocab], a new tensor
        if self.top_p is not None:
            logits = self.top_p(None, logits)
        cdf = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)  # [batch, vocab]
        uniform = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators])  # [batch]
        drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None].to(cdf.dtype))  # [batch, 1]
        return drawn.clamp_(max=cdf.shape[1] - 1).squeeze(1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter_(1, self.draw(scores)[:, None], 0.0)


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, layer: torch.nn.Linear,
                   x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear``'s forward with a oneDNN-packed weight (``[..., in] -> [..., out]``); the activations stay
    dense when this torch has oneDNN's dense-input linear (no conversion in and out of every product). Under
    ``torch.autocast`` (a model whose forward a trainer wrapped in it) or with activations not in float32, the
    ``layer``'s own product, as autocast expects."""
    if x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    rows = x.reshape(-1, x.shape[-1])
    if weight.dtype == torch.bfloat16:  # bfloat16_products: the rows rounded too, the output widened
        y = ONEDNN_LINEAR(rows.to(torch.bfloat16), weight, None, "none", [], "").float()
        if bias is not None:
            y.add_(bias)
    elif ONEDNN_LINEAR is not None:
        y = ONEDNN_LINEAR(rows, weight, bias, "none", [], "")
    else:
        bias = bias if bias is not None else rows.new_zeros(weight.shape[0])
        y = torch._C._nn.mkldnn_linear(rows.to_mkldnn(), weight, bias.to_mkldnn()).to_dense()  # [rows, out]
    return y.view(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module) -> Iterator[None]:
    """For the duration, the model's fp32 CPU linear layers compute with oneDNN-packed copies of their weights
    (in bfloat16 under :func:`aha.models.linear.bfloat16_products`, all but the output layer, as in training).

    Decoding multiplies a few rows by every weight matrix at each step; the plain path repacks each weight for
    every product, the packed copy is made once per generation call (about 0.1 s for 135M parameters; the
    copy is freed after). On this project's 2-core AMD CPU it decodes the default recipe's shape ~1.5x faster,
    with the same tokens (benchmarks/decode.py). Inference only (no gradients); other devices, dtypes, a torch
    without oneDNN and Intel processors (MKL's plain products are faster there: ``packs_for_decoding``) run as
    they are."""
    patched = []
    if packs_for_decoding():
        reduced = bfloat16_products() and ONEDNN_LINEAR is not None
        output = output_layer_of(model)
        for module in model.modules():
            if type(module) in (torch.nn.Linear, AccumulatingLinear) and module.weight.device.type == "cpu" \
                    and module.weight.dtype == torch.float32:
                bias = module.bias.detach() if module.bias is not None else None
                weight = module.weight.detach()
                if reduced and module is not output:  # the output layer keeps float32, as in training
                    weight = weight.to(torch.bfloat16)
                module.forward = functools.partial(_packed_linear, weight.to_mkldnn(), bias, module)
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again
        if patched:
            release_free_memory()


class HFBackend:
    """Samples from the training model itself (weights shared, so ``sync_weights`` has nothing to do)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64,
                 decode_loop: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.decode_loop = decode_loop
        """The project's decode loop (ended rows leave the batch); False: ``transformers.generate``."""
        self.eos_ids = end_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        self.cache_kw = cache_keyword(model)

    def sync_weights(self) -> None:
        return None

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1, seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` completions of each prompt, laid out prompt after prompt; ``seeds``: one per
        completion (same layout), each completion then sampled from its own random stream."""
        if seeds is not None and len(seeds) != len(prompt_ids) * num_samples:
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts x {num_samples} samples")
        was_training = self.model.training
        self.model.eval()
        packed = packed_linears(self.model) if self.decode_loop else contextlib.nullcontext()
        try:
            with packed:
                per_call = max(1, self.batch_size // num_samples)
                out: list[Generation] = []
                for start in range(0, len(prompt_ids), per_call):
                    batch_seeds = None if seeds is None else \
                        seeds[start * num_samples: (start + per_call) * num_samples]
                    out.extend(self._generate_batch(prompt_ids[start : start + per_call], params, prefill,
                                                    num_samples, batch_seeds))
                return out
        finally:
            self.model.train(was_training)

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, prefill: str,
                        num_samples: int, seeds: list[int] | None = None) -> list[Generation]:
        device = next(self.model.parameters()).device
        reuse = reusable_cache(self.model)  # else transformers.generate from the prompts, as they are
        loop = self.decode_loop and reuse
        shared = system_prompt_length(self.model, prompts) if loop else 0
        if shared:  # [shared prefix][left padding][rest of the prompt]: the prefix is computed once for all
            rest_ids, rest_mask = left_pad([p[shared:] for p in prompts], self.pad_id, device)
            prefix_ids = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=device)  # [1, shared]
            input_ids = torch.cat([prefix_ids.expand(len(prompts), -1), rest_ids], dim=1)
            attention_mask = torch.cat([torch.ones_like(prefix_ids).expand(len(prompts), -1), rest_mask], dim=1)
        else:  # left padding: every completion starts at the same column
            input_ids, attention_mask = left_pad(prompts, self.pad_id, device)
        width = input_ids.shape[1]
        prefix_cache = shared_prompts = None
        if width > 1 and reuse and (num_samples > 1 or loop):
            # Run the prompts (all but their last token) once; their samples share the cache or get a copy each.
            positions = (attention_mask[:, :-1].cumsum(1) - 1).clamp(min=0)
            inputs = {}
            if shared:
                prefix_cache = shared_cache(self.model, prefix_ids, len(prompts))
                inputs = {self.cache_kw: prefix_cache}
            if width - 1 > shared:
                prefix = self.model(input_ids=input_ids[:, shared:-1], attention_mask=attention_mask[:, :-1],
                                    position_ids=positions[:, shared:], use_cache=True, logits_to_keep=1, **inputs)
                prefix_cache = output_cache(prefix)
            if num_samples > 1 and loop and SharedPrefix.supports(self.model, prefix_cache):
                # the samples of a prompt read its cache once (cascade attention), not a copy each
                rows = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)
                shared_prompts = SharedPrefix(prefix_cache, attention_mask[:, :-1], rows)
                prefix_cache = None
            elif num_samples > 1:
                prefix_cache.batch_repeat_interleave(num_samples)
        input_ids = input_ids.repeat_interleave(num_samples, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
        if loop:
            return self._decode(input_ids, attention_mask, prefix_cache, params, prefill, seeds, shared_prompts)
        return self._generate(input_ids, attention_mask, prefix_cache, params, prefill, seeds)

    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, params: SamplingParams,
                prefill: str, seeds: list[int] | None, shared: SharedPrefix | None = None) -> list[Generation]:
        """The decode loop: one forward of the last tokens per step with the KV cache; a row ends at an end
        token or a stop string (checked on the text of its last tokens: a stop string counts within the
        completion, where ``transformers`` also matches one that starts in the prompt); when a quarter of the
        batch has ended, those rows leave the batch and its cache, so the compute follows the rows still going.
        With ``shared`` the prompts but their last tokens are in it, and ``cache`` starts empty."""
        rows = input_ids.shape[0]
        device = input_ids.device
        temperature = params.temperature
        sampler = _SeededSampling(seeds, temperature, params.top_p, device) if seeds and temperature > 0 else None
        top_p = TopPLogitsWarper(params.top_p) if temperature > 0 and params.top_p < 1.0 else None
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        reasons = ["length"] * rows
        origin = list(range(rows))  # the original row of each batch row
        live = [True] * rows  # batch rows still generating (ended rows stay until the batch is compacted)
        tail = max((len(s) for s in params.stop), default=0)  # tokens to decode for the stop check (>= 1 char each)
        next_ids = input_ids[:, -1:]  # [b, 1]
        positions = attention_mask.sum(dim=1, keepdim=True) - 1  # [b, 1] the position of each row's last token
        mask = attention_mask if shared is None else attention_mask[:, -1:]  # the rows' own tokens only
        for step in range(params.max_new_tokens):
            inputs = {self.cache_kw: cache} if cache is not None else {}
            if shared is not None:
                inputs[SHARED_PREFIX_KEYWORD] = shared
            out = self.model(input_ids=next_ids, attention_mask=mask, position_ids=positions, use_cache=True, **inputs)
            cache = output_cache(out)
            if step == 0:  # room for the rest of the completion: no copy of the whole cache per token
                reserve_cache(cache, params.max_new_tokens - 1)
            logits = out.logits[:, -1, :].float()  # [b, V]
            if temperature <= 0:
                picked = logits.argmax(dim=-1)
            elif sampler is not None:
                picked = sampler.draw(logits)
            else:
                scaled = logits / temperature
                scaled = top_p(next_ids, scaled) if top_p is not None else scaled
                picked = torch.multinomial(torch.softmax(scaled, dim=-1), 1).squeeze(1)
            chosen = picked.tolist()
            if params.logprobs:
                scale = temperature if temperature > 0 else 1.0
                picked_logprobs = torch.log_softmax(logits / scale, dim=-1).gather(1, picked[:, None]).squeeze(1)
                picked_logprobs = picked_logprobs.tolist()
            for b, row in enumerate(origin):
                if not live[b]:
                    continue
                tokens[row].append(chosen[b])
                if params.logprobs:
                    logprobs[row].append(picked_logprobs[b])
                if chosen[b] in self.eos_ids:
                    live[b], reasons[row] = False, "stop"
                elif tail and any(s in self.tokenizer.decode(tokens[row][-tail:]) for s in params.stop):
                    # as transformers: the stop string ends in the last token, which may run past it
                    live[b], reasons[row] = False, "stop"
            if not any(live):
                break
            ended = live.count(False)
            if ended * 4 >= len(live):  # drop the ended rows from the batch and the cache
                keep = torch.tensor([b for b, alive in enumerate(live) if alive], dtype=torch.long, device=device)
                cache.batch_select_indices(keep)
                if shared is not None:
                    shared.select(keep)
                mask, picked, positions = mask[keep], picked[keep], positions[keep]
                origin = [origin[b] for b in keep.tolist()]
                live = [True] * len(origin)
                if sampler is not None:
                    sampler.select(keep.tolist())
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            next_ids = picked[:, None]
            positions = positions + 1
        generations = []
        for row in range(rows):
            text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
            generations.append(Generation(tokens[row], prefill + text, reasons[row],
                                          logprobs[row] if params.logprobs else None))
        return generations

    def _generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, params: SamplingParams,
                  prefill: str, seeds: list[int] | None) -> list[Generation]:
        """The same through ``transformers.generate`` (``decode_loop=False``)."""
        device = input_ids.device
        width = input_ids.shape[1]
        extra = {} if cache is None else {self.cache_kw: cache}
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        processors: list[LogitsProcessor] = []
        recorder = _TokenLogprobs(params.temperature) if params.logprobs else None
        if recorder is not None:
            processors.append(recorder)  # first: it records the unprocessed logits
        if params.temperature <= 0:
            sampling = greedy
        elif seeds is not None:
            sampling = greedy  # the draw is made by the seeded processor; argmax then picks it
            processors.append(_SeededSampling(seeds, params.temperature, params.top_p, device))
        if params.stop:
            extra.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if processors:
            extra["logits_processor"] = LogitsProcessorList(processors)
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=params.max_new_tokens,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id, use_cache=True, **sampling, **extra,
        )
        generations = [self._finish(row, params, prefill) for row in sequences[:, width:].tolist()]
        if recorder is not None:
            recorder.finish(sequences[:, -1])
            for generation, logprobs in zip(generations, recorder.rows()):
                generation.logprobs = logprobs[: len(generation.token_ids)]
        return generations

    def _finish(self, row: list[int], params: SamplingParams, prefill: str) -> Generation:
        """Cut a generated row at its end and say why it ended."""
        end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
        tokens = row if end is None else row[: end + 1]
        if end is None:
            while tokens and tokens[-1] == self.pad_id:
                tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if params.stop and end is not None:
            before_end = self.tokenizer.decode(tokens[:-1], skip_special_tokens=True)
            if any(before_end.endswith(s) for s in params.stop):
                # generate() stopped at a stop string and padded the rest: the end token was not sampled.
                return Generation(tokens[:-1], prefill + before_end, "stop")
        finished = end is not None or any(text.endswith(s) for s in params.stop)
        return Generation(tokens, prefill + text, "stop" if finished else "length")
