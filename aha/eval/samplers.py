"""What the evaluator samples from: a local model through the rollout backend, or an OpenAI-compatible
server; and where a model name points (a folder, a checkpoint, a run directory, a GGUF file, ...)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, Union

from aha.config import EvalConfig
from aha.data.prompts import PromptBuilder
from aha.rollout.base import Generation, SamplingParams
from aha.run.layout import resolve_model_source

log = logging.getLogger(__name__)

Prompt = Union[str, list[dict[str, str]]]
"""Prompt text, or chat messages for a server that applies its own chat template."""


class Sampler(Protocol):
    """Builds prompts and samples k completions of each."""

    backend_name: str
    model_path: str

    def prompts(self, questions: list[str]) -> list[Prompt]:
        ...

    def sample(self, prompts: list[Prompt], k: int, params: SamplingParams, seeds: list[int]) -> list[Generation]:
        """k completions of each prompt, laid out prompt after prompt; sample j of prompt i is drawn from the seed
        ``seeds[i] + j`` (a local model: its own random stream, whatever else is in the batch; a server: the
        request's seed)."""
        ...


def _builder(tokenizer: Any, config: EvalConfig) -> PromptBuilder:
    return PromptBuilder.from_config(tokenizer, config)


class LocalSampler:
    """A model loaded here, sampled with batched generation through :class:`aha.rollout.HFBackend` (the k
    samples of a prompt share its KV cache)."""

    backend_name = "transformers"

    def __init__(self, config: EvalConfig):
        import torch

        from aha.models import load_model
        from aha.rollout.hf import HFBackend

        if config.threads:
            torch.set_num_threads(config.threads)
        torch.set_float32_matmul_precision(config.matmul_precision)
        self.model_path = resolve_model_source(config.model)
        model, self.tokenizer = load_model(self.model_path, dtype=config.dtype, device=config.device, seed=config.seed)
        self.backend = HFBackend(model, self.tokenizer, config.generation_batch_size, config.decode_loop)
        self.builder = _builder(self.tokenizer, config)

    def prompts(self, questions: list[str]) -> list[Prompt]:
        return [self.builder.build(q) for q in questions]

    def sample(self, prompts: list[Prompt], k: int, params: SamplingParams, seeds: list[int]) -> list[Generation]:
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        per_sample = [seed + j for seed in seeds for j in range(k)]
        return self.backend.generate(ids, params, self.builder.prefill, num_samples=k, seeds=per_sample)


class ServerSampler:
    """An OpenAI-compatible server (``--api-base``): prompt text to /completions, or messages to
    /chat/completions (``api_chat``)."""

    backend_name = "openai"

    def __init__(self, config: EvalConfig):
        self.model_path = config.model
        self.chat = config.api_chat
        tokenizer_name = config.tokenizer or (config.model if Path(config.model).is_dir() else None)
        tokenizer = None
        if tokenizer_name:
            from aha.models import load_tokenizer

            tokenizer = load_tokenizer(resolve_model_source(tokenizer_name))
        elif config.use_chat_template and config.prompt_template != "plain" and not config.api_chat:
            log.warning("no local tokenizer for %s: prompts use the plain layout; pass --tokenizer to use the "
                        "model's chat template, or --api-chat to let the server apply it", config.model)
        if self.chat and config.prefill_text:
            log.warning("--api-chat: the prefill %r is not sent (chat endpoints start the reply themselves)",
                        config.prefill_text)
        self.builder = _builder(tokenizer, config)
        self.backend = server_backend(config, tokenizer)

    def prompts(self, questions: list[str]) -> list[Prompt]:
        if not self.chat:
            return [self.builder.build(q) for q in questions]
        instruction = self.builder.instruction
        system = [{"role": "system", "content": instruction}] if instruction else []
        return [system + [{"role": "user", "content": self.builder.question(q)}] for q in questions]

    def sample(self, prompts: list[Prompt], k: int, params: SamplingParams, seeds: list[int]) -> list[Generation]:
        if self.chat:
            return self.backend.generate_chat(prompts, params, k, seeds)  # type: ignore[arg-type]
        return self.backend.generate_text(prompts, params, self.builder.prefill, k, seeds)  # type: ignore[arg-type]


def server_backend(config, tokenizer=None):
    """The OpenAI-compatible backend of a config's server settings (``ServerSection``)."""
    from aha.rollout.openai import OpenAIBackend

    return OpenAIBackend(config.api_base or "", config.model, tokenizer=tokenizer,
                         api_key=os.environ.get(config.api_key_env) or None, concurrency=config.api_concurrency,
                         timeout=config.api_timeout, retries=config.api_retries, rate_limit=config.api_rate_limit,
                         backoff=config.api_backoff)


def make_sampler(config: EvalConfig) -> Sampler:
    return ServerSampler(config) if config.api_base else LocalSampler(config)
