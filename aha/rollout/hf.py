"""Generation with ``transformers``: batched sampling with the KV cache, on CPU or GPU.

The G completions of a prompt share its prefix: the prompt is run through the model once, its KV cache
is repeated G times, and only the new tokens are computed for each sample.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from aha.models import cache_keyword, output_cache
from aha.rollout.base import Generation, SamplingParams


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


class HFBackend:
    """Samples from the training model itself (weights shared, so ``sync_weights`` has nothing to do)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
        self.eos_ids = {i for i in eos_ids if i is not None} | {tokenizer.eos_token_id}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cache_kw = cache_keyword(model)

    def sync_weights(self) -> None:
        return None

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1) -> list[Generation]:
        """``num_samples`` completions of each prompt, laid out prompt after prompt."""
        was_training = self.model.training
        self.model.eval()
        try:
            per_call = max(1, self.batch_size // num_samples)
            out: list[Generation] = []
            for start in range(0, len(prompt_ids), per_call):
                out.extend(self._generate_batch(prompt_ids[start : start + per_call], params, prefill, num_samples))
            return out
        finally:
            self.model.train(was_training)

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, prefill: str,
                        num_samples: int) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, ids in enumerate(prompts):  # left padding: every completion starts at column `width`
            input_ids[row, width - len(ids) :] = torch.tensor(ids, device=device)
            attention_mask[row, width - len(ids) :] = 1
        extra = {}
        if num_samples > 1 and width > 1:
            # Run the shared prompt (all but its last token) once, then copy its cache for each sample.
            prefix = self.model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                                position_ids=(attention_mask[:, :-1].cumsum(1) - 1).clamp(min=0), use_cache=True)
            cache = output_cache(prefix)
            cache.batch_repeat_interleave(num_samples)
            extra[self.cache_kw] = cache
        input_ids = input_ids.repeat_interleave(num_samples, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        if params.temperature <= 0:
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if params.stop:
            extra.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        recorder = _TokenLogprobs(params.temperature) if params.logprobs else None
        if recorder is not None:
            extra["logits_processor"] = LogitsProcessorList([recorder])
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
