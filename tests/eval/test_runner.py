"""End to end: ``aha eval`` on a tiny random model, its outputs, and resuming a killed evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aha.eval.runner as runner
from aha.cli import main
from aha.config import ConfigError, EvalConfig
from aha.eval.samples import SampleStore

REPO = Path(__file__).resolve().parents[2]


def eval_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "tiny:qwen2", "--benchmarks", "gsm8k,aime24", "--limit", "5", "--k", "2", "--max-new-tokens", "12",
            "--prompt", "chat", "--batch-size", "2", "--data-dir", str(data_dir), "--output", str(out), *extra]


def read_samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def check_consistent(out: Path, problems: int = 5, k: int = 2) -> dict:
    """results.json and samples.jsonl agree, and every (benchmark, problem, sample) is there exactly once."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    samples = read_samples(out)
    keys = [(s["benchmark"], s["problem"], s["sample"]) for s in samples]
    assert len(keys) == len(set(keys)), "a sample is stored twice"
    assert sorted(keys) == sorted((b, p, s) for b in ("gsm8k", "aime24") for p in range(problems) for s in range(k))
    for name in ("gsm8k", "aime24"):
        m = results["benchmarks"][name]
        mine = [s for s in samples if s["benchmark"] == name]
        assert (m["problems"], m["samples"], m["k"]) == (problems, problems * k, k)
        assert m["pass@1"] == pytest.approx(sum(s["correct"] for s in mine) / len(mine))
        assert m["truncation_rate"] == pytest.approx(sum(s["finish_reason"] == "length" for s in mine) / len(mine))
        assert f"pass@{k}" in m and f"cons@{k}" in m
    return results


def test_cli_writes_consistent_results_and_samples(shared_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_args(shared_data, out, "--grader-workers", "1")) == 0  # graded by a worker process
    results = check_consistent(out)
    assert results["model"] == "tiny:qwen2" and results["backend"] == "transformers" and results["seed"] == 0
    assert results["config"]["k"] == 2 and results["versions"]["torch"]
    assert results["speed"]["generated_samples"] == 20 and results["speed"]["samples_per_s"] > 0
    sample = read_samples(out)[0]
    assert {"prompt", "completion", "extracted", "answer", "correct", "format", "tokens", "id"} <= set(sample)
    assert sample["answer"] == "18" and "<|im_start|>user" in sample["prompt"]
    assert "gsm8k" in capsys.readouterr().err  # the printed table
    # everything is there: a second run generates nothing and reports the same numbers
    assert main(eval_args(shared_data, out, "--grader-workers", "0")) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["benchmarks"] == results["benchmarks"] and again["speed"]["generated_samples"] == 0


def test_an_interrupted_evaluation_resumes_to_the_same_samples(shared_data, tmp_path, monkeypatch):
    def config(out: Path) -> EvalConfig:
        return EvalConfig(model="tiny:qwen2", benchmarks=["gsm8k", "aime24"], limit=5, k=2, max_completion_length=12,
                          prompt_template="chat", generation_batch_size=2, data_dir=str(shared_data),
                          output_dir=str(out), grader_workers=0)

    whole = runner.evaluate(config(tmp_path / "whole"))

    real_make_sampler, calls = runner.make_sampler, []

    def failing_sampler(cfg):  # the 4th batch never comes back, as if the process were killed
        sampler = real_make_sampler(cfg)
        real_sample = sampler.sample

        def sample(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return real_sample(*args, **kwargs)

        sampler.sample = sample
        return sampler

    monkeypatch.setattr(runner, "make_sampler", failing_sampler)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(config(tmp_path / "cut"))
    monkeypatch.setattr(runner, "make_sampler", real_make_sampler)
    samples_path = tmp_path / "cut" / "samples.jsonl"
    assert len(samples_path.read_text().splitlines()) == 6  # 3 batches of 1 problem x 2 samples
    with samples_path.open("a") as f:                      # and a line cut short by the kill
        f.write('{"benchmark": "gsm8k", "problem": 3, "sample": 0, "compl')
    resumed = runner.evaluate(config(tmp_path / "cut"))
    assert resumed["speed"]["generated_samples"] == 14
    check_consistent(tmp_path / "cut")
    by_key = {(s["benchmark"], s["problem"], s["sample"]): s["completion"] for s in read_samples(tmp_path / "whole")}
    cut = {(s["benchmark"], s["problem"], s["sample"]): s["completion"] for s in read_samples(tmp_path / "cut")}
    assert cut == by_key
    assert resumed["benchmarks"] == whole["benchmarks"]


def test_the_samples_do_not_depend_on_the_batch_size(shared_data, tmp_path):
    """Each sample is seeded by its problem and number: batches of 1, 3 or 5 problems draw the same samples,
    so a resumed evaluation may change --batch-size and a rerun elsewhere is comparable sample for sample."""
    def completions(batch_size: int) -> dict:
        out = tmp_path / f"batch{batch_size}"
        runner.evaluate(EvalConfig(model="tiny:qwen2", benchmarks=["gsm8k"], limit=5, k=2, max_completion_length=12,
                                   temperature=1.0, prompt_template="chat", generation_batch_size=batch_size,
                                   data_dir=str(shared_data), output_dir=str(out), grader_workers=0))
        return {(s["problem"], s["sample"]): s["completion"] for s in read_samples(out)}

    by_two = completions(2)
    assert len(set(by_two.values())) > 5  # sampled: the two samples of a problem differ
    assert completions(6) == by_two and completions(10) == by_two


def test_a_killed_process_is_completed_by_a_rerun(shared_data, tmp_path):
    out = tmp_path / "killed"
    # graded in the main process, so each batch is written as soon as it is generated and the kill lands midway
    args = eval_args(shared_data, out, "--max-new-tokens", "64", "--grader-workers", "0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "aha", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    samples_path = out / "samples.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if samples_path.exists() and samples_path.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the evaluation and its grading worker
        process.wait()
    kept = len(SampleStore(samples_path))  # complete lines; a line cut by the kill is dropped here
    assert 2 <= kept < 20, f"the kill should land midway, found {kept} of 20 samples"
    assert main(args) == 0
    check_consistent(out)
    assert json.loads((out / "results.json").read_text())["speed"]["generated_samples"] == 20 - kept


def test_resuming_with_other_sampling_settings_is_refused(shared_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_args(shared_data, out, "--limit", "1", "--grader-workers", "0")) == 0
    code = main(eval_args(shared_data, out, "--limit", "1", "--temperature", "1.0", "--grader-workers", "0"))
    assert code == 2
    assert (f"aha: error: {out} holds samples made with other settings (temperature: 0.6 there, 1.0 now); use "
            "another --output, or the same settings to resume") in capsys.readouterr().err


def test_resuming_with_other_task_options_is_refused(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "tiny:llama", "--benchmarks", "chain_sum", "--limit", "2", "--k", "1", "--temperature", "0",
            "--max-completion-length", "2", "--grader-workers", "0", "--output-dir", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # the same settings resume
    two_terms = [*args, "--task-options", "{min_terms: 2, max_terms: 2}"]
    assert main(two_terms) == 2
    assert "holds samples made with other settings (task_options: None there, {'min_terms': 2, 'max_terms': 2} " \
           "now)" in capsys.readouterr().err
    out2 = tmp_path / "eval2"
    assert main([*two_terms[:-3], str(out2), *two_terms[-2:]]) == 0
    assert "chain_sum (min_terms=2, max_terms=2)" in capsys.readouterr().err  # the table says which problems
    results = json.loads((out2 / "results.json").read_text())
    assert results["benchmarks"]["chain_sum"]["task_options"] == {"min_terms": 2, "max_terms": 2}
    assert main([*args[:-1], str(out2)]) == 2  # and back: samples of the two-term problems are not the default's
    assert "(task_options: {'min_terms': 2, 'max_terms': 2} there, None now)" in capsys.readouterr().err


def test_greedy_needs_k_1():
    with pytest.raises(ConfigError, match="temperature: 0 is greedy decoding: its 4 samples would be identical"):
        EvalConfig(model="m", k=4, temperature=0).validate()
