"""An LLM judge as a reward: each question and completion goes, inside a rubric prompt, to an
OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API); the score is read from the reply and scaled
to [0, 1].

    rewards:
      judged: {reward: judge, api_base: http://127.0.0.1:8000/v1, model: judge-model, max_score: 10,
               cache: runs/judge-cache.jsonl, when: {kind: general}}

Requests run ``concurrency`` at a time with retries and back-off on 429, 5xx and dropped connections
(:mod:`aha.utils.http`). The score is the number after ``Score:`` in the reply (else its last number); a reply
without one, or with one outside 0..max_score, scores None (the sample is left out, counted as a failure).
Verdicts are cached by (model, rubric, question, completion) in memory and, with ``cache``, in a JSONL file
that later runs read back, so a resumed run does not pay for the same verdict twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aha.rewards.registry import register_reward, report_failure
from aha.utils.http import JsonClient, ServerError

DEFAULT_RUBRIC = (
    "You are grading an answer to a user's request. Judge whether it is correct, helpful, complete and clearly "
    "written.\n\nRequest:\n{question}\n\nAnswer:\n{completion}\n\nExplain briefly, then end with a line "
    "'Score: N' where N is an integer from 0 (useless) to {max_score} (excellent).")
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(reply: str, max_score: float) -> float | None:
    """The score in a judge's reply, scaled to [0, 1]; None when there is none or it is out of range."""
    found = _SCORE.findall(reply) or _NUMBER.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    if not 0 <= value <= max_score:
        return None
    return value / max_score


class Judge:
    def __init__(self, client: JsonClient, model: str, rubric: str, max_score: float, concurrency: int,
                 cache: str | None, question_field: str, temperature: float, max_tokens: int):
        self.client = client
        self.model = model
        self.rubric = rubric
        self.max_score = max_score
        self.concurrency = concurrency
        self.question_field = question_field
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache_path = Path(cache) if cache else None
        self.cache: dict[str, str] = {}
        self.lock = threading.Lock()
        if self.cache_path and self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.cache[record["key"]] = record["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by a crash

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model}\0{prompt}".encode()).hexdigest()

    def reply(self, prompt: str) -> str:
        key = self.key(prompt)
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        answer = self.client.post("chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature, "max_tokens": self.max_tokens})
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.client.api_base}/chat/completions: not a chat completion: "
                              f"{json.dumps(answer)[:200]}") from None
        with self.lock:
            self.cache[key] = text
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "reply": text}) + "\n")
        return text

    def __call__(self, completions: list[str], **columns) -> list[float | None]:
        questions = columns.get(self.question_field) or [""] * len(completions)
        prompts = [self.rubric.format(question=q or "", completion=c, max_score=f"{self.max_score:g}")
                   for q, c in zip(questions, completions)]

        def one(i: int) -> tuple[float | None, str | None]:
            try:
                reply = self.reply(prompts[i])
            except ServerError as err:
                return None, f"judge: {err}"
            value = parse_score(reply, self.max_score)
            if value is None:
                return None, f"judge: no score between 0 and {self.max_score:g} in its reply: {reply[-200:]!r}"
            return value, None

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            outcomes = list(pool.map(one, range(len(completions))))
        for i, (_, problem) in enumerate(outcomes):  # reported from the caller's thread, where they are counted
            if problem:
                report_failure(i, problem)
        return [value for value, _ in outcomes]


@register_reward("judge")
def judge(api_base: str, model: str, rubric: str = DEFAULT_RUBRIC, max_score: float = 10.0, concurrency: int = 8,
          cache: str | None = None, api_key_env: str = "OPENAI_API_KEY", retries: int = 5, backoff: float = 1.0,
          timeout: float = 120.0, rate_limit: float = 0.0, question_field: str = "question", temperature: float = 0.0,
          max_tokens: int = 512):
    """Scores from an LLM judge behind an OpenAI-compatible endpoint (see the module docstring)."""
    for name in ("{completion}",):
        if name not in rubric:
            raise ValueError(f"judge: the rubric must contain {name}")
    if max_score <= 0:
        raise ValueError(f"judge: max_score must be > 0, got {max_score}")
    client = JsonClient(api_base, api_key=os.environ.get(api_key_env), timeout=timeout, retries=retries,
                        rate_limit=rate_limit, backoff=backoff)
    return Judge(client, model, rubric, float(max_score), concurrency, cache, question_field, temperature,
                 max_tokens)
