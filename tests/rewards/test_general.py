"""Rewards for general prompts: a reward model (batched scores equal to scoring one sample at a time), an LLM
judge behind a flaky OpenAI-compatible server (retries, score parsing, a cache that later runs read back), and
routing a reward to the samples whose dataset column matches."""

from __future__ import annotations

import math
import re

import pytest
import torch

from aha.models import ModelLoadError, char_tokenizer
from aha.rewards import build_rewards, get_reward, register_reward, score
from aha.rewards.judge import parse_score
from tests.rollout.fake_server import FakeServer, random_faults

CALLS: list[list[str]] = []


@register_reward("test_echo_length")
def _echo_length():
    def reward(completions, **columns):
        CALLS.append(list(completions))
        return [float(len(c)) for c in completions]

    return reward


def test_when_routes_a_reward_to_the_samples_whose_column_matches():
    CALLS.clear()
    terms = build_rewards({"accuracy": 1.0,
                           "general": {"reward": "test_echo_length", "weight": 0.5, "when": {"kind": "general"}}})
    completions = ["<answer>4</answer>", "hello", "<answer>5</answer>", "hi there"]
    columns = {"answer": ["4", None, "6", None], "kind": ["math", "general", "math", "general"]}
    result = score(terms, completions, columns)
    assert CALLS == [["hello", "hi there"]]  # the routed reward saw only its samples
    assert result.per_reward["general"] == [None, 5.0, None, 8.0]
    assert result.total[0] == pytest.approx(1.0)           # math: accuracy only
    assert result.total[2] == pytest.approx(0.0)
    assert result.total[1] == pytest.approx(0.5 * 5.0)     # general: the routed reward (accuracy cannot score it)
    assert result.total[3] == pytest.approx(0.5 * 8.0)
    with pytest.raises(ValueError, match="rewards.general.when must map a column"):
        build_rewards({"general": {"reward": "test_echo_length", "when": "general"}})


@pytest.mark.parametrize("reply, expected", [
    ("Clear and right.\nScore: 7", 0.7),
    ("score = 10", 1.0),
    ("**Score:** 3", 0.3),
    ("I would give it 4 out of 10", 1.0),   # no `Score:`: the last number
    ("Score: 12", None),                   # out of range
    ("no verdict", None),
])
def test_judge_scores_are_read_from_the_reply(reply, expected):
    value = parse_score(reply, 10)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_judge_retries_a_flaky_server_parses_scores_and_caches_verdicts(tmp_path):
    def reply(body):
        prompt = body["messages"][0]["content"]
        answer = re.search(r"Answer:\n(.*)\n\nExplain", prompt, re.S).group(1)
        return "no idea" if answer == "mumble" else f"Fine.\nScore: {len(answer) % 11}"

    cache = tmp_path / "judge.jsonl"
    completions = ["short", "a longer one", "mumble", "short"]
    columns = {"question": ["q1", "q2", "q3", "q1"]}
    with FakeServer(reply, fault=random_faults(0.4, seed=3, kinds=("429", "500", "drop"))) as server:
        terms = build_rewards({"judge": {"api_base": server.url, "model": "judge", "cache": str(cache),
                                         "backoff": 0.01, "retries": 8}})
        result = score(terms, completions, columns)
        answered = server.answered
    # "short": 5 % 11 = 5 -> 0.5; "a longer one": 12 % 11 = 1 -> 0.1; "mumble": no score
    assert result.per_reward["judge"] == [pytest.approx(0.5), pytest.approx(0.1), None, pytest.approx(0.5)]
    assert result.failures["judge"] == 1 and "no score" in result.failure_reasons["judge"][0]
    assert answered <= 4  # the repeated (question, completion) may race once, never more
    with FakeServer(lambda body: "Score: 0") as server:  # a later run: verdicts from the cache, no request
        terms = build_rewards({"judge": {"api_base": server.url, "model": "judge", "cache": str(cache)}})
        again = score(terms, ["short", "a longer one"], {"question": ["q1", "q2"]})
        assert server.requests == []
    assert again.per_reward["judge"] == [pytest.approx(0.5), pytest.approx(0.1)]


def test_judge_that_cannot_be_reached_costs_the_samples_not_the_run(tmp_path):
    terms = build_rewards({"judge": {"api_base": "http://127.0.0.1:9/v1", "model": "m", "retries": 1,
                                     "backoff": 0.01, "timeout": 2}})
    result = score(terms, ["a", "b"], {"question": ["x", "y"]})
    assert result.per_reward["judge"] == [None, None] and result.failures["judge"] == 2
    with pytest.raises(ValueError, match="the rubric must contain"):
        get_reward("judge", api_base="http://x/v1", model="m", rubric="no slot")


def tiny_reward_model(path, num_labels: int = 1):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = char_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def test_reward_model_batched_scores_equal_one_at_a_time(tmp_path):
    from transformers import AutoTokenizer

    model, _ = tiny_reward_model(tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")  # the folder's tokenizer, as the reward reads it
    completions = ["4", "a much longer completion", "", "seven"]
    questions = ["2+2?", "tell me", "empty", "3+4?"]
    reward = get_reward("reward_model", model=str(tmp_path / "rm"), batch_size=3)
    scores = reward(completions, question=questions)
    raw = get_reward("reward_model", model=str(tmp_path / "rm"), normalise="raw")(completions, question=questions)
    model.eval()
    for value, logit, q, c in zip(scores, raw, questions, completions):
        text = reward.text(tokenizer, q, c)
        with torch.no_grad():
            expected = model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()
        assert logit == pytest.approx(expected, abs=1e-5)
        assert value == pytest.approx(1 / (1 + math.exp(-expected)), abs=1e-6)
        assert 0 < value < 1
    assert len(set(round(s, 6) for s in scores)) > 1


def test_reward_model_with_more_than_one_label_is_refused(tmp_path):
    tiny_reward_model(tmp_path / "cls", num_labels=3)
    reward = get_reward("reward_model", model=str(tmp_path / "cls"))
    with pytest.raises(ModelLoadError, match="has 3 labels"):
        reward(["x"], question=["q"])
    with pytest.raises(ValueError, match="normalise must be"):
        get_reward("reward_model", model="m", normalise="tanh")
