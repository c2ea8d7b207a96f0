"""The generation-backend interface: prompts (token ids) in, completions with finish reasons out.

A trainer is handed a backend and calls :meth:`GenerationBackend.sync_weights` after every optimiser
step, so an engine that holds its own copy of the weights (vLLM, a server) samples from the current
policy; a backend that shares the trainer's model has nothing to do there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a completion (kept in its text), besides the end-of-sequence token."""
    logprobs: bool = False
    """Also return each sampled token's log-probability as the engine computed it."""


@dataclass
class Generation:
    """One completion of one prompt."""

    token_ids: list[int]
    """The generated tokens, up to and including the end-of-sequence token when one was produced."""
    text: str
    """The decoded completion (special tokens removed), prefixed by the prompt's prefill if any."""
    finish_reason: Literal["stop", "length"]
    """``stop``: the model ended the sequence; ``length``: cut at ``max_new_tokens``."""
    logprobs: list[float] | None = None
    """Per token of ``token_ids``: its log-probability under the engine's temperature-scaled distribution
    (before top-p truncation), when asked for with ``SamplingParams(logprobs=True)`` and the engine gives it.
    A trainer compares them with its own to correct for an engine whose numerics differ."""


def end_token_ids(model, tokenizer) -> set[int]:
    """The tokens that end a completion: the model's generation config's end token(s) and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ends = (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]
    return {i for i in ends if i is not None}


def pad_token_id(tokenizer) -> int:
    """The id that pads prompts and completions: the tokenizer's pad token, else its end token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class GenerationBackend(Protocol):
    """What the trainer and evaluator need from a rollout engine (transformers, vLLM, a server)."""

    pad_id: int
    """The token id that pads prompts and completions in training batches."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1, seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` completions of each prompt, laid out prompt after prompt. ``seeds`` (one per
        completion, same layout), where the engine supports them, make each completion a function of its
        seed alone, whatever else is in the batch."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights (a no-op when it shares them)."""
        ...
