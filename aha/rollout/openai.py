"""Generation from an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, hosted APIs).

Prompts go to ``POST {api_base}/completions`` as text (built locally, chat template included, so the
server sees exactly what a local model would), or as messages to ``POST {api_base}/chat/completions``
when the server must apply its own chat template. Each sample is one request with ``n=1`` and its own
seed (servers that ignore ``n`` or seeds still give correct, if less reproducible, samples); requests
run ``concurrency`` at a time, at most ``rate_limit`` a second. A request that fails with 429, a 5xx
status, a dropped connection or a cut-off reply is retried with exponential back-off (the server's
``Retry-After`` when it sends one). Only the standard library is used.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from aha.rollout.base import Generation, SamplingParams
from aha.utils.http import JsonClient, ServerError

__all__ = ["OpenAIBackend", "ServerError", "ServerGeneration"]


@dataclass
class ServerGeneration(Generation):
    """A completion from a server, with the token count the server reported (exact, unlike a re-tokenisation)
    and the reasoning it returned apart (``reasoning_content``), if any."""

    completion_tokens: int = 0
    reasoning: str | None = None


def _logprobs(choice: dict[str, Any]) -> list[float] | None:
    """The sampled tokens' log-probabilities a server returned: ``logprobs.token_logprobs`` (/completions)
    or ``logprobs.content[i].logprob`` (/chat/completions); None when it returned none."""
    block = choice.get("logprobs")
    if not isinstance(block, dict):
        return None
    if isinstance(block.get("token_logprobs"), list):
        return [float(v) for v in block["token_logprobs"]]
    if isinstance(block.get("content"), list):
        return [float(item["logprob"]) for item in block["content"]]
    return None


class OpenAIBackend:
    """Samples from an OpenAI-compatible HTTP server.

    tokenizer: optional; when given, ``generate`` accepts token ids (decoded to text) and each
    generation's ``token_ids`` are its text re-tokenised locally.
    """

    def __init__(self, api_base: str, model: str, *, tokenizer=None, api_key: str | None = None,
                 concurrency: int = 8, timeout: float = 600.0, retries: int = 5, rate_limit: float = 0.0,
                 backoff: float = 1.0, max_backoff: float = 30.0):
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.concurrency = concurrency
        self.client = JsonClient(api_base, api_key=api_key, timeout=timeout, retries=retries, rate_limit=rate_limit,
                                 backoff=backoff, max_backoff=max_backoff)

    @property
    def pad_id(self) -> int:
        """The local tokenizer's padding id (training batches need one)."""
        if self.tokenizer is None:
            raise ValueError("OpenAIBackend needs a local tokenizer to build training batches")
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def sync_weights(self) -> None:
        """A server holds its own weights: it cannot be made to follow a trainer from here (serve the
        checkpoints, or use a backend that syncs)."""
        return None

    # --- whole batches -----------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1, seeds: list[int] | None = None) -> list[Generation]:
        """The :class:`~aha.rollout.base.GenerationBackend` interface: token ids in (needs a tokenizer).
        ``seeds`` (one per completion): each prompt's first one is sent as the request seed."""
        if self.tokenizer is None:
            raise ValueError("OpenAIBackend.generate(prompt_ids) needs a tokenizer; use generate_text for text prompts")
        prompts = [self.tokenizer.decode(ids) for ids in prompt_ids]
        per_prompt = None if seeds is None else seeds[::num_samples]
        return self.generate_text(prompts, params, prefill, num_samples, per_prompt)

    def generate_text(self, prompts: list[str], params: SamplingParams, prefill: str = "", num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` completions of each text prompt (laid out prompt after prompt). ``prefill`` is the
        text the prompts end with to open the response (as with HFBackend); it starts each completion's
        text. ``seeds[i]`` seeds prompt i's first sample (sample j gets ``seeds[i] + j``)."""
        return self._collect(self.text_requests(prompts, params, num_samples, seeds), prefill)

    def generate_chat(self, conversations: list[list[dict[str, str]]], params: SamplingParams, num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` replies to each conversation (a list of ``{role, content}`` messages)."""
        return self._collect(self.chat_requests(conversations, params, num_samples, seeds), "")

    def _collect(self, requests: list[dict[str, Any]], prefill: str) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        for index, outcome in self.stream(requests, prefill):
            if isinstance(outcome, Exception):
                raise outcome
            results[index] = outcome
        return results  # type: ignore[return-value]

    # --- requests, one reply at a time -------------------------------------------------------------
    def text_requests(self, prompts: list[str], params: SamplingParams, num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """One /completions request per sample, prompt after prompt."""
        return [{"prompt": prompt, **self._sampling(params), **({"seed": seeds[i] + j} if seeds is not None else {})}
                for i, prompt in enumerate(prompts) for j in range(num_samples)]

    def chat_requests(self, conversations: list[list[dict[str, str]]], params: SamplingParams, num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """One /chat/completions request per sample, conversation after conversation."""
        requests = []
        for i, messages in enumerate(conversations):
            for j in range(num_samples):
                body = {"messages": messages, **self._sampling(params)}
                if params.logprobs:
                    body["logprobs"] = True
                if seeds is not None:
                    body["seed"] = seeds[i] + j
                requests.append(body)
        return requests

    def stream(self, requests: list[dict[str, Any]], prefill: str = "",
               stop: Callable[[], bool] | None = None) -> Iterator[tuple[int, Generation | Exception]]:
        """Send the requests ``concurrency`` at a time and yield ``(index, generation)`` as each reply comes,
        or ``(index, ServerError)`` for a request that failed after every retry; the others go on. Once
        ``stop()`` is true no new request is sent; those in flight are still awaited and yielded."""
        if not requests:
            return
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(requests)))) as pool:
            futures = {pool.submit(self._one, body, prefill): i for i, body in enumerate(requests)}
            try:
                for future in as_completed(futures):
                    if stop is not None and stop():
                        for pending in futures:
                            pending.cancel()  # not started yet: never sent
                    if future.cancelled():
                        continue
                    try:
                        yield futures[future], future.result()
                    except ServerError as err:
                        yield futures[future], err
            finally:
                for future in futures:
                    future.cancel()

    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens, "n": 1,
                                "temperature": params.temperature}
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = 1  # /completions: top-1 plus the sampled token; chat requests set true
        return body

    def _one(self, payload: dict[str, Any], prefill: str) -> Generation:
        endpoint = "chat/completions" if "messages" in payload else "completions"
        reply = self.client.post(endpoint, payload)
        try:
            choice = reply["choices"][0]
            message = choice.get("message") or {}
            text = message["content"] if "messages" in payload else choice["text"]
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            reason = choice.get("finish_reason") or "stop"
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise ServerError(f"{self.api_base}/{endpoint}: unexpected reply ({err!r}): {str(reply)[:300]}") from None
        text = text or ""
        token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if self.tokenizer else []
        tokens = int(usage.get("completion_tokens") or len(token_ids))
        return ServerGeneration(token_ids, prefill + text, "length" if reason == "length" else "stop",
                                logprobs=_logprobs(choice), completion_tokens=tokens,
                                reasoning=reasoning if isinstance(reasoning, str) else None)
