"""A stand-in for the parts of ``vllm`` that :mod:`aha.rollout.vllm` uses, runnable on a CPU: ``LLM`` loads the
model folder it is given (its own copy of the weights), generates one token at a time with it, and records
every call; ``SamplingParams``, ``RequestOutput``, ``CompletionOutput`` and ``Logprob`` have vLLM's shapes.

What it mimics of vLLM (0.10.2 to 0.33): greedy below temperature 1e-5 (top-p then off); per-request seeds;
top-p keeps the smallest set of tokens whose mass reaches ``top_p``; ``logprobs_mode`` "raw_logprobs"
(log softmax of the logits) or "processed_logprobs" (after temperature and top-p); the end token kept in
``token_ids``; stop strings checked on the completion's text; sleep levels with tags; ``apply_model`` on a
model whose ``load_weights`` takes checkpoint names (and fails on an unknown one); global generators seeded
as the engine starts.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__version__ = "0.33.0"

_SAMPLING_EPS = 1e-5
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self):
        if self.n != 1:
            raise ValueError("the stand-in serves n=1 only")
        if self.top_k < -1:
            raise ValueError("top_k must be 0 (disable), or at least 1")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be non-negative")
        if self.temperature < _SAMPLING_EPS:
            self.top_p, self.top_k = 1.0, 0


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


class EngineModel(torch.nn.Module):
    """The engine's model: ``load_weights`` as vLLM's models have it (checkpoint names, copied in place)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.model.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(name)  # vLLM's loaders fail on a name the model does not have
            if params[name].shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}")
            params[name].data.copy_(tensor)
            loaded.add(name)
        return loaded


class LLM:
    """Records ``calls`` as (name, detail) in order; ``engine_args`` are the constructor's keywords."""

    finish_reason_override: str | None = None
    """Set to make every completion end with this reason (e.g. "abort")."""

    def __init__(self, model: str, *, dtype: str = "auto", seed: int = 0, enable_sleep_mode: bool = False,
                 logprobs_mode: str = "raw_logprobs", max_model_len: int | None = None, **kwargs: Any):
        self.engine_args = dict(model=model, dtype=dtype, seed=seed, enable_sleep_mode=enable_sleep_mode,
                                logprobs_mode=logprobs_mode, max_model_len=max_model_len, **kwargs)
        self.multiprocessing_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.calls: list[tuple[str, Any]] = []
        torch_dtype = _DTYPES[dtype] if dtype != "auto" else None
        self.hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).eval()
        self.engine_model = EngineModel(self.hf_model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_model_len = max_model_len or self.hf_model.config.max_position_embeddings
        self.sleep_mode = enable_sleep_mode
        self.logprobs_mode = logprobs_mode
        self.asleep: set[str] = set()
        self.saved_weights: dict[str, torch.Tensor] = {}
        random.seed(seed)  # as vLLM's set_random_seed, in the caller's process
        np.random.seed(seed)
        torch.manual_seed(seed)

    # --- memory --------------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        if not self.sleep_mode:
            raise AssertionError("Sleep mode is not enabled in the model config")
        self.calls.append(("sleep", level))
        if level == 2:  # weights discarded: what wakes is garbage until loaded again
            for param in self.hf_model.parameters():
                param.data.fill_(float("nan"))
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", None if tags is None else list(tags)))
        self.asleep -= set(tags) if tags is not None else self.asleep

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache", None))
        return True

    def apply_model(self, func: Callable[[torch.nn.Module], Any]) -> list[Any]:
        if "weights" in self.asleep:
            raise RuntimeError("apply_model while the weights sleep: their memory is not mapped")
        result = func(self.engine_model)
        self.calls.append(("apply_model", sorted(result) if isinstance(result, set) else result))
        return [result]

    # --- generation ----------------------------------------------------------------------------------
    def generate(self, prompts: list[dict[str, list[int]]], sampling_params: list[SamplingParams] | SamplingParams,
                 *, use_tqdm: bool = True) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError(f"generate while {sorted(self.asleep)} sleep")
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("one SamplingParams per prompt")
        self.calls.append(("generate", [(list(p["prompt_token_ids"]), sp) for p, sp in zip(prompts, sampling_params)]))
        with torch.no_grad():
            return [RequestOutput(str(i), None, list(p["prompt_token_ids"]),
                                  [self._complete(p["prompt_token_ids"], sp)])
                    for i, (p, sp) in enumerate(zip(prompts, sampling_params))]

    def _complete(self, prompt: list[int], sp: SamplingParams) -> CompletionOutput:
        generator = torch.Generator().manual_seed(sp.seed) if sp.seed is not None else None
        ends = set(sp.stop_token_ids or ()) | {self.tokenizer.eos_token_id}
        ids, out, logprobs = list(prompt), [], []
        reason, stop_reason, cut = "length", None, None
        while len(out) < sp.max_tokens and len(ids) < self.max_model_len:
            logits = self.hf_model(torch.tensor([ids])).logits[0, -1].float()  # [vocab]
            if sp.temperature < _SAMPLING_EPS:
                processed = logits
                token = int(logits.argmax())
            else:
                processed = _top_p(logits / sp.temperature, sp.top_p)
                token = int(torch.multinomial(torch.softmax(processed, -1), 1, generator=generator))
            scores = processed if self.logprobs_mode == "processed_logprobs" else logits
            logprobs.append({token: Logprob(float(torch.log_softmax(scores, -1)[token]), rank=1)})
            ids.append(token)
            out.append(token)
            if token in ends:
                reason, stop_reason = "stop", (token if token in (sp.stop_token_ids or ()) else None)
                break
            text = self.tokenizer.decode(out, skip_special_tokens=sp.skip_special_tokens)
            hit = min(((text.find(s), s) for s in sp.stop or () if s in text), default=None)
            if hit is not None:
                reason, stop_reason = "stop", hit[1]
                cut = hit[0] + (len(hit[1]) if sp.include_stop_str_in_output else 0)
                break
        if self.finish_reason_override is not None:
            reason = self.finish_reason_override
        text = self.tokenizer.decode(out, skip_special_tokens=sp.skip_special_tokens)[:cut]
        return CompletionOutput(0, text, out, sum(next(iter(p.values())).logprob for p in logprobs),
                                logprobs if sp.logprobs is not None else None, reason, stop_reason)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """As vLLM: drop the least likely tokens while the mass dropped stays <= 1 - top_p (one always kept)."""
    if top_p >= 1.0:
        return logits
    ascending, order = logits.sort()
    dropped = torch.softmax(ascending, -1).cumsum(-1) <= 1 - top_p
    dropped[-1] = False
    return logits.scatter(0, order, ascending.masked_fill(dropped, float("-inf")))
