"""Where a model name points, and evaluating a model served by an OpenAI-compatible server."""

import json

import pytest

from aha.config import EvalConfig
from aha.data.benchmarks import load_benchmark
from aha.eval.runner import evaluate, problem_seed
from aha.run import RunDirError, resolve_model_source
from tests.rollout.fake_server import FakeServer


def test_model_folders_checkpoints_and_run_directories(tmp_path):
    run = tmp_path / "runs" / "x"
    for step in (20, 40):
        (run / "checkpoints" / f"step-{step:06d}" / "model").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:06d}" / "model" / "config.json").write_text("{}")
        (run / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt").write_bytes(b"")
    latest = run / "checkpoints" / "step-000040"
    assert resolve_model_source(str(run)) == str(latest / "model")
    assert resolve_model_source(str(run / "checkpoints" / "step-000020")) == str(run / "checkpoints" / "step-000020"
                                                                                 / "model")
    assert resolve_model_source(str(latest / "model")) == str(latest / "model")
    for name in ("tiny:qwen2", "org/model", "model.gguf"):
        assert resolve_model_source(name) == name
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a model folder"):
        resolve_model_source(str(tmp_path / "empty"))


def test_a_served_model_end_to_end(shared_data, tmp_path):
    problems = load_benchmark("gsm8k", shared_data, limit=3).problems

    def reply(body):  # problem 0 always right; problem 1 right once in 3; problem 2 right in two notations
        index = next(i for i, p in enumerate(problems) if p["question"] in body["prompt"])
        gold, first = problems[index]["answer"], body["seed"] % 3 == 0
        answer = {0: gold, 1: gold if first else "4", 2: "\\boxed{70,000}" if first else "70000"}[index]
        return f" step by step</think> <answer>{answer}</answer>"

    with FakeServer(reply) as server:
        config = EvalConfig(model="served", api_base=server.url, benchmarks=["gsm8k"], limit=3, k=3, pass_k=[2],
                            data_dir=str(shared_data), output_dir=str(tmp_path / "out"), grader_workers=0)
        results = evaluate(config)
    assert problems[2]["answer"] == "70000"
    m = results["benchmarks"]["gsm8k"]
    assert m["pass@1"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert m["pass@2"] == pytest.approx((1 + 2 / 3 + 1) / 3)   # 1 - C(2,2)/C(3,2) for problem 1
    assert m["pass@3"] == 1.0
    assert m["cons@3"] == pytest.approx(2 / 3)                 # problem 1's vote is the wrong "4"
    assert m["format_rate"] == 1.0                             # <think> prefill + the reply
    assert m["mean_response_tokens"] == 4.0                    # the server's completion_tokens
    assert results["backend"] == "openai" and len(server.requests) == 9
    # sample j of problem i carries the seed problem_seed(i) + j, whatever batch it was sent in
    assert sorted(r["seed"] for r in server.requests) == sorted(problem_seed(0, "gsm8k", i) + j
                                                                for i in range(3) for j in range(3))
    assert server.requests[0]["prompt"].endswith("\nAssistant: <think>")  # r1-zero layout, no local tokenizer
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert sorted(s["extracted"] for s in samples if s["problem"] == 2) == ["70000", "70000", "\\boxed{70,000}"]


def test_chat_mode_sends_messages(shared_data, tmp_path):
    with FakeServer(lambda body: "<think>x</think> <answer>18</answer>") as server:
        config = EvalConfig(model="served", api_base=server.url, api_chat=True, benchmarks=["gsm8k"], limit=1, k=1,
                            temperature=0.0, prompt_template="chat", data_dir=str(shared_data),
                            output_dir=str(tmp_path / "out"),
                            question_template="{question} Put the final answer in \\boxed{}.", grader_workers=0)
        results = evaluate(config)
    question = load_benchmark("gsm8k", shared_data, limit=1).problems[0]["question"]
    assert server.requests[0]["messages"] == [{"role": "user",
                                               "content": question + " Put the final answer in \\boxed{}."}]
    assert results["benchmarks"]["gsm8k"]["pass@1"] == 1.0


def test_a_run_directory_is_evaluated_from_its_latest_checkpoint(shared_data, tmp_path):
    from aha.models import load_model, save_hf_folder

    model, tokenizer = load_model("tiny:llama", seed=3)
    checkpoint = tmp_path / "runs" / "x" / "checkpoints" / "step-000004"
    save_hf_folder(model, tokenizer, checkpoint / "model")
    (checkpoint / "trainer_state.pt").write_bytes(b"")
    config = EvalConfig(model=str(tmp_path / "runs" / "x"), benchmarks=["amc23"], limit=2, k=1, temperature=0.0,
                        max_completion_length=4, prompt_template="plain", data_dir=str(shared_data),
                        output_dir=str(tmp_path / "out"),
                        grader_workers=0)
    results = evaluate(config)
    assert results["model_path"] == str(checkpoint / "model")
    assert results["benchmarks"]["amc23"]["samples"] == 2
