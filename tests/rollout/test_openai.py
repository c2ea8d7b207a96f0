"""The OpenAI-compatible backend against a fake server on the loopback address."""

import pytest

from aha.models import char_tokenizer
from aha.rollout.base import SamplingParams
from aha.rollout.openai import OpenAIBackend, ServerError
from tests.rollout.fake_server import FakeServer


def test_completions_requests_and_generations():
    def reply(body):
        return f" reply to {body['prompt'].removesuffix('<think>')} seed {body.get('seed')}"

    with FakeServer(reply) as server:
        backend = OpenAIBackend(server.url, "served-model", api_key="sk-test", concurrency=3)
        params = SamplingParams(max_new_tokens=20, temperature=0.6, top_p=0.95, stop=("</answer>",))
        gens = backend.generate_text(["first?<think>", "second?<think>"], params, prefill="<think>", num_samples=2,
                                    seeds=[10, 20])
    assert [g.text for g in gens] == ["<think> reply to first? seed 10", "<think> reply to first? seed 11",
                                      "<think> reply to second? seed 20", "<think> reply to second? seed 21"]
    assert all(g.finish_reason == "stop" and g.completion_tokens == 5 for g in gens)
    body = next(r for r in server.requests if r["seed"] == 10)
    assert body == {"prompt": "first?<think>", "model": "served-model", "max_tokens": 20, "n": 1, "temperature": 0.6,
                    "top_p": 0.95, "stop": ["</answer>"], "seed": 10}
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_chat_endpoint_length_finish_and_greedy_without_top_p():
    with FakeServer(lambda body: body["messages"][-1]["content"].upper(), finish_reason="length") as server:
        backend = OpenAIBackend(server.url, "m")
        gens = backend.generate_chat([[{"role": "user", "content": "hello"}]], SamplingParams(8, temperature=0.0))
    assert gens[0].text == "HELLO" and gens[0].finish_reason == "length"
    assert "top_p" not in server.requests[0] and server.requests[0]["temperature"] == 0.0


def test_token_ids_through_a_local_tokenizer():
    tokenizer = char_tokenizer()
    with FakeServer(lambda body: "42") as server:
        backend = OpenAIBackend(server.url, "m", tokenizer=tokenizer)
        gens = backend.generate([tokenizer("7*6=", add_special_tokens=False)["input_ids"]], SamplingParams(4))
    assert server.requests[0]["prompt"] == "7*6=" and gens[0].token_ids == tokenizer("42")["input_ids"]


def test_busy_server_is_retried_and_errors_are_clear():
    with FakeServer(lambda body: "ok", fail_first=1) as server:
        assert OpenAIBackend(server.url, "m", retries=1).generate_text(["q"], SamplingParams(4))[0].text == "ok"
    with FakeServer(lambda body: "ok", fail_first=5) as server:
        with pytest.raises(ServerError, match=r"/v1/completions: HTTP 503: .*busy"):
            OpenAIBackend(server.url, "m", retries=0).generate_text(["q"], SamplingParams(4))
    with pytest.raises(ServerError, match=r"cannot reach the server"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", retries=0, timeout=5).generate_text(["q"], SamplingParams(4))


def test_the_servers_token_logprobs_are_carried_when_asked_for():
    def reply(body):
        return "a b"

    with FakeServer(reply, logprobs=[-0.5, -1.25]) as server:
        backend = OpenAIBackend(server.url, "m")
        gens = backend.generate_text(["q"], SamplingParams(4, logprobs=True))
        chat = backend.generate_chat([[{"role": "user", "content": "q"}]], SamplingParams(4, logprobs=True))
        plain = backend.generate_text(["q"], SamplingParams(4))
    assert gens[0].logprobs == [-0.5, -1.25] and chat[0].logprobs == [-0.5, -1.25]
    assert server.requests[0]["logprobs"] == 1 and server.requests[1]["logprobs"] is True
    assert "logprobs" not in server.requests[2] and plain[0].logprobs is None
