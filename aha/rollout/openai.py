"""Generation from an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, hosted APIs).

Prompts go to ``POST {api_base}/completions`` as text (built locally, chat template included, so the
server sees exactly what a local model would), or as messages to ``POST {api_base}/chat/completions``
when the server must apply its own chat template. Each sample is one request with ``n=1`` and its own
seed (servers that ignore ``n`` or seeds still give correct, if less reproducible, samples); requests
run ``concurrency`` at a time. Only the standard library is used.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aha.rollout.base import Generation, SamplingParams


@dataclass
class ServerGeneration(Generation):
    """A completion from a server, with the token count the server reported (exact, unlike a re-tokenisation)."""

    completion_tokens: int = 0


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


class ServerError(RuntimeError):
    """The server refused a request or answered something that is not a completion."""


class OpenAIBackend:
    """Samples from an OpenAI-compatible HTTP server.

    tokenizer: optional; when given, ``generate`` accepts token ids (decoded to text) and each
    generation's ``token_ids`` are its text re-tokenised locally.
    """

    def __init__(self, api_base: str, model: str, *, tokenizer=None, api_key: str | None = None,
                 concurrency: int = 8, timeout: float = 600.0, retries: int = 3):
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries

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

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1) -> list[Generation]:
        """The :class:`~aha.rollout.base.GenerationBackend` interface: token ids in (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("OpenAIBackend.generate(prompt_ids) needs a tokenizer; use generate_text for text prompts")
        prompts = [self.tokenizer.decode(ids) for ids in prompt_ids]
        return self.generate_text(prompts, params, prefill, num_samples)

    def generate_text(self, prompts: list[str], params: SamplingParams, prefill: str = "", num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` completions of each text prompt (laid out prompt after prompt). ``prefill`` is the
        text the prompts end with to open the response (as with HFBackend); it starts each completion's
        text. ``seeds[i]`` seeds prompt i's first sample (sample j gets ``seeds[i] + j``)."""
        payloads = []
        for i, prompt in enumerate(prompts):
            for j in range(num_samples):
                payload = {"prompt": prompt, **self._sampling(params)}
                if seeds is not None:
                    payload["seed"] = seeds[i] + j
                payloads.append(payload)
        return self._run("completions", payloads, prefill)

    def generate_chat(self, conversations: list[list[dict[str, str]]], params: SamplingParams, num_samples: int = 1,
                      seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` replies to each conversation (a list of ``{role, content}`` messages)."""
        payloads = []
        for i, messages in enumerate(conversations):
            for j in range(num_samples):
                payload = {"messages": messages, **self._sampling(params)}
                if params.logprobs:
                    payload["logprobs"] = True
                if seeds is not None:
                    payload["seed"] = seeds[i] + j
                payloads.append(payload)
        return self._run("chat/completions", payloads, "")

    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens, "n": 1,
                                "temperature": params.temperature}
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = 1  # /completions: top-1 plus the sampled token; chat: true (set in _run)
        return body

    def _run(self, endpoint: str, payloads: list[dict[str, Any]], prefill: str) -> list[Generation]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(payloads)))) as pool:
            return list(pool.map(lambda p: self._one(endpoint, p, prefill), payloads))

    def _one(self, endpoint: str, payload: dict[str, Any], prefill: str) -> Generation:
        reply = self._post(endpoint, payload)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if "messages" in payload else choice["text"]
            reason = choice.get("finish_reason") or "stop"
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError) as err:
            raise ServerError(f"{self.api_base}/{endpoint}: unexpected reply ({err!r}): {str(reply)[:300]}") from None
        text = text or ""
        token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if self.tokenizer else []
        tokens = int(usage.get("completion_tokens") or len(token_ids))
        return ServerGeneration(token_ids, prefill + text, "length" if reason == "length" else "stop",
                                logprobs=_logprobs(choice), completion_tokens=tokens)

    def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api_base}/{endpoint}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", errors="replace")[:500]
                if err.code < 500 and err.code != 429 or attempt == self.retries:
                    raise ServerError(f"{url}: HTTP {err.code}: {body}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise ServerError(f"{url}: cannot reach the server: {getattr(err, 'reason', err)}") from None
            except json.JSONDecodeError as err:
                raise ServerError(f"{url}: the reply is not JSON ({err})") from None
            time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")
