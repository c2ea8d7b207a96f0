"""`aha generate`: k traces per prompt from a local model or a flaky server, written as they come, resumable
after a kill with no sample twice and none lost; traces of another prompt set are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aha.cli import main
from aha.config import load_config
from aha.config.generate import GenerateConfig
from aha.data.readers import DataError
from aha.pipeline.traces import IncompleteError, generate_traces
from aha.utils.console import make_console
from tests.rollout.fake_server import FakeServer, random_faults

REPO = Path(__file__).resolve().parents[2]


def write_prompts(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({"problem": f"{i} + {i} =", "solution": str(2 * i), "id": i}) + "\n"
                            for i in range(n)))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys(path: Path) -> list[tuple[int, int]]:
    return sorted((r["prompt_index"], r["sample"]) for r in rows(path))


def config(tmp_path, *extra: str) -> GenerateConfig:
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    return load_config(GenerateConfig, overrides=[f"prompts={prompts}", f"output={tmp_path / 'traces.jsonl'}",
                                                  "field_map={question: problem}", "k=3", *extra])


def test_a_local_model_writes_k_traces_per_prompt_and_a_rerun_adds_only_what_is_missing(tmp_path):
    c = config(tmp_path, "model=tiny:qwen2", "max_completion_length=8", "generation_batch_size=6",
               "prompt_template=plain", "temperature=1.0")
    generate_traces(c, make_console())
    out = tmp_path / "traces.jsonl"
    first = rows(out)
    assert keys(out) == [(i, j) for i in range(6) for j in range(3)]
    row = first[0]
    assert {"problem", "solution", "id", "question", "completion", "finish_reason", "tokens", "prompt_hash"} <= set(row)
    assert row["question"] == "0 + 0 =" and row["solution"] == "0"
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:7]) + "\n" + lines[7][:20])  # 7 whole lines and a line cut by a kill
    generate_traces(c, make_console())
    again = rows(out)
    assert keys(out) == [(i, j) for i in range(6) for j in range(3)]
    by_key = {(r["prompt_index"], r["sample"]): r["completion"] for r in first}
    assert all(by_key[(r["prompt_index"], r["sample"])] == r["completion"] for r in again)  # the same samples


def test_local_traces_do_not_depend_on_the_batch_size(tmp_path):
    def completions(batch_size: int) -> dict:
        c = config(tmp_path, "model=tiny:qwen2", "max_completion_length=8", f"generation_batch_size={batch_size}",
                   "prompt_template=plain", "temperature=1.0", f"output={tmp_path / f'traces{batch_size}.jsonl'}")
        generate_traces(c, make_console())
        return {(r["prompt_index"], r["sample"]): r["completion"] for r in rows(tmp_path / f"traces{batch_size}.jsonl")}

    by_three = completions(3)
    assert len(by_three) == 18 and len(set(by_three.values())) > 6
    assert completions(9) == by_three and completions(18) == by_three


def test_traces_of_another_prompt_set_or_other_settings_are_refused(tmp_path):
    c = config(tmp_path, "model=tiny:qwen2", "max_completion_length=4", "prompt_template=plain")
    generate_traces(c, make_console())
    write_prompts(tmp_path / "prompts.jsonl", 7)
    (tmp_path / "prompts.jsonl").write_text((tmp_path / "prompts.jsonl").read_text().replace("0 + 0", "9 + 9"))
    with pytest.raises(DataError, match=r"traces.jsonl:1: a trace of another prompt set"):
        generate_traces(c, make_console())
    write_prompts(tmp_path / "prompts.jsonl", 6)
    other = load_config(GenerateConfig, overrides=[*(f"{k}={v}" for k, v in
                                                     [("prompts", c.prompts), ("output", c.output)]),
                                                   "field_map={question: problem}", "k=3", "model=tiny:qwen2",
                                                   "max_completion_length=4", "prompt_template=plain",
                                                   "temperature=0.9"])
    with pytest.raises(Exception, match="holds traces made with other settings .*temperature: 0.6 there, 0.9 now"):
        generate_traces(other, make_console())


def test_server_reasoning_is_kept_apart_and_a_server_that_never_answers_is_a_clear_error(tmp_path):
    def hang_on_prompt_4(body):
        return "hang" if "4 + 4" in json.dumps(body) else None

    with FakeServer(lambda body: "<answer>8</answer>", reasoning=lambda body: "4 and 4 make 8",
                    fault=hang_on_prompt_4) as server:
        c = config(tmp_path, f"api_base={server.url}", "model=served", "api_chat=true", "api_timeout=1",
                   "api_retries=1", "api_backoff=0.01", "k=2")
        with pytest.raises(IncompleteError, match=r"2 of 12 samples failed \(prompt 4 sample \d: .*gave up after 2 "
                                                  r"attempts\)\); the 10 traces received are in"):
            generate_traces(c, make_console())
    out = rows(tmp_path / "traces.jsonl")
    assert len(out) == 10 and all(r["reasoning"] == "4 and 4 make 8" for r in out)
    assert all(r["completion"] == "<answer>8</answer>" for r in out)


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aha", "generate", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_flaky_server_and_a_kill_midway_end_with_exactly_k_samples_per_prompt(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    out = tmp_path / "traces.jsonl"

    def reply(body):
        return f" answer to {body['prompt'][-8:]} seed {body['seed']}"

    faults = random_faults(0.3, seed=1, kinds=("429", "500", "503", "drop"))
    with FakeServer(reply, fault=faults, delay=0.02) as server:
        args = [str(prompts), "--field-map", "question=problem", "--k", "4", "--model", "served", "--api-base",
                server.url, "--api-concurrency", "4", "--api-retries", "30", "--api-backoff", "0.01",
                "--prompt-template", "plain", "--output", str(out)]
        proc = launch(args)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 40):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        written = len(out.read_text().splitlines())
        assert 40 <= written < 120, "the kill came before or after the middle"
        proc = launch(args)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        faulted = len(server.requests) - server.answered
    got = keys(out)
    assert got == [(i, j) for i in range(30) for j in range(4)]  # exactly k per prompt: none twice, none lost
    assert faulted > 10  # the server did fail, and often
    for r in rows(out):  # each sample is the one its own seed asked for
        assert r["completion"].endswith(f"seed {r['prompt_index'] * 4 + r['sample']}")


def test_the_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"problem": "1+1"}\n{"text": "2+2"}\n')
    code = main(["generate", str(prompts), "--field-map", "question=problem", "--model", "tiny:qwen2",
                 "--output", str(tmp_path / "t.jsonl")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"aha: error: {prompts}:2: missing field 'problem' (mapped to "
                                               "'question'); fields present: text")
