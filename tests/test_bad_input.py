"""Bad input across every command: checked before compute is spent (no model is loaded), reported in one line
`aha: error: file:line: field: problem`, exit code 2."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

import aha.models
from aha.cli import main

GOOD_QA = '{"problem": "1+1", "solution": "2"}\n'


def write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        pd.DataFrame(content).to_parquet(path)
    elif name.endswith(".csv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# (name, files to write: {name: content}, argv with {name} placeholders, expected substring)
CASES = [
    # recipes and key=value overrides
    ("recipe unknown field", {"r.yaml": "group_size: 4\n\nlearning_rat: 1e-5\n"}, ["train", "{r.yaml}"],
     "r.yaml:3: unknown field 'learning_rat' for GRPOConfig; did you mean learning_rate"),
    ("recipe wrong type", {"r.yaml": "max_steps: 10\ngroup_size: eight\n"}, ["train", "{r.yaml}"],
     "r.yaml:2: group_size: expected int, got 'eight'"),
    ("recipe invalid yaml", {"r.yaml": "a: [1, 2\nb: 3\n"}, ["train", "{r.yaml}"], "r.yaml:2: invalid YAML"),
    ("recipe missing", {}, ["train", "nope.yaml"], "nope.yaml: recipe file not found"),
    ("recipe not a mapping", {"r.yaml": "- a\n- b\n"}, ["train", "{r.yaml}"],
     "a recipe must be a mapping of field: value, got list"),
    ("recipe alias twice", {"r.yaml": "lr: 2.0e-5\nlearning_rate: 1.0e-5\n"}, ["train", "{r.yaml}"],
     "r.yaml:1: 'lr' and 'learning_rate' are the same field; give one"),
    ("recipe bad value names its line", {"r.yaml": "max_steps: 4\n\ngroup_size: 0\n"}, ["train", "{r.yaml}"],
     "r.yaml:3: group_size: must be >= 1, got 0"),
    ("two recipes", {}, ["train", "a.yaml", "b.yaml"], "unexpected argument 'b.yaml': overrides are key=value"),
    ("override unknown", {}, ["train", "group_sze=4"], "unknown field 'group_sze' for GRPOConfig; did you mean"),
    ("loss type", {}, ["train", "loss_type=ppo2"], "loss_type: unknown loss_type 'ppo2'; valid: dapo, dr_grpo"),
    ("top_p", {}, ["train", "top_p=1.5"], "top_p: must be in (0, 1], got 1.5"),
    ("scheduler", {}, ["train", "lr_scheduler=cosin"], "lr_scheduler: unknown scheduler 'cosin'"),
    ("resume without a directory", {}, ["train", "resume=true"], "resume=true needs output_dir="),
    ("prompt template", {}, ["train", "prompt_template=r1"], "prompt_template: must be one of r1-zero, chat, plain"),
    ("matmul precision", {}, ["sft", "matmul_precision=low"],
     "matmul_precision: must be one of 'highest', 'high', 'medium'"),
    # rewards
    ("reward unknown", {}, ["train", "rewards={acuracy: 1.0}"], "rewards.acuracy: unknown reward 'acuracy'"),
    ("reward weight", {}, ["train", "rewards={accuracy: {weight: heavy}}"],
     "rewards.accuracy.weight must be a number, got 'heavy'"),
    ("reward gate", {}, ["train", "rewards={format: {requires: correct}}"],
     "rewards.format.requires: 'correct' is not one of ['format']"),
    ("reward option", {}, ["train", "rewards={overlong: {max_length: 10, cache: 20}}"],
     "rewards.overlong: overlong: need integers 0 < cache <= max_length"),
    ("reward time budget", {}, ["train", "rewards={accuracy: {time_budget: -1}}"],
     "rewards.accuracy.time_budget must be a positive number of seconds"),
    # models
    ("model folder missing", {}, ["train", "model=./models/missing"], "model: ./models/missing: no such folder"),
    ("model tiny", {}, ["train", "model=tiny:gpt9"], "model: unknown tiny architecture 'gpt9'"),
    ("model gguf", {}, ["train", "model=w.gguf"], "model: w.gguf: GGUF file not found"),
    ("model folder without config", {"empty/.keep": ""}, ["train", "model=empty"],
     "model: empty: not a model folder (no config.json), a checkpoint (no model/) or a run directory"),
    # tasks and datasets
    ("task unknown", {}, ["train", "task=sudoku"], "task: unknown task 'sudoku'; built in: chain_sum"),
    ("task options", {}, ["train", "task_options={min_terms: 4, max_terms: 2}"], "task: task 'chain_sum' with options"),
    ("task file missing", {}, ["train", "task=missing.jsonl"], "missing.jsonl: file not found"),
    ("task mapped field missing", {"t.jsonl": GOOD_QA + '{"problem": "2+2"}\n'},
     ["train", "task={t.jsonl}", "field_map={question: problem, answer: solution}", "eval_size=0"],
     "t.jsonl:2: missing field 'solution' (mapped to 'answer'); fields present: problem"),
    ("task malformed json", {"t.jsonl": GOOD_QA + '{"problem": "2+2", "solution": \n'},
     ["train", "task={t.jsonl}", "field_map={question: problem, answer: solution}", "eval_size=0"],
     "t.jsonl:2: malformed JSON at column"),
    ("task not utf-8", {"t.jsonl": GOOD_QA.encode() + b'{"problem": "\xff", "solution": "1"}\n'},
     ["train", "task={t.jsonl}", "field_map={question: problem, answer: solution}", "eval_size=0"],
     "t.jsonl:2: not valid UTF-8"),
    ("task csv empty field", {"t.csv": [["question", "answer"], ["1+1", "2"], ["2+2", ""]]},
     ["train", "task={t.csv}", "eval_size=0"], "t.csv:3: field 'answer' is empty"),
    ("task parquet missing column", {"t.parquet": {"question": ["1+1", "2+2"]}},
     ["train", "task={t.parquet}", "eval_size=0"], "t.parquet:row 1: missing field 'answer'"),
    ("task held out everything", {"t.jsonl": GOOD_QA * 3},
     ["train", "task={t.jsonl}", "field_map={question: problem, answer: solution}", "eval_size=5"],
     "eval_size=5 leaves no training rows out of 3"),
    # supervised fine-tuning data
    ("sft no dataset", {}, ["sft", "model=tiny:qwen2"], "dataset: give the training rows"),
    ("sft row kind", {"d.jsonl": '{"question": "1+1"}\n'}, ["sft", "dataset={d.jsonl}"],
     "d.jsonl:1: a row needs `messages`, or `prompt` and `completion`"),
    ("sft empty completion", {"d.jsonl": '{"prompt": "1+1", "completion": " "}\n'}, ["sft", "dataset={d.jsonl}"],
     "d.jsonl:1: field 'completion' is empty"),
    ("sft unknown role", {"d.jsonl": json.dumps({"messages": [{"role": "narrator", "content": "x"}]}) + "\n"},
     ["sft", "dataset={d.jsonl}"], "d.jsonl:1: messages[0].role 'narrator' is not one the template knows"),
    ("sft empty conversation", {"d.jsonl": '{"messages": []}\n'}, ["sft", "dataset={d.jsonl}"],
     "d.jsonl:1: field 'messages' must be a non-empty list"),
    ("sft no assistant turn", {"d.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"},
     ["sft", "dataset={d.jsonl}"], "d.jsonl:1: field 'messages' has no assistant message"),
    ("sft conversation csv", {"d.csv": [["messages"], ['[{"role": "user"']]}, ["sft", "dataset={d.csv}"],
     "d.csv:2: field 'messages' is not a list of messages (bad JSON"),
    ("sft parquet prompt not text", {"d.parquet": {"prompt": [1, 2], "completion": ["a", "b"]}},
     ["sft", "dataset={d.parquet}"], "d.parquet:row 1: field 'prompt' is not text (got int)"),
    ("sft eval fraction", {"d.jsonl": '{"prompt": "a", "completion": "b"}\n'},
     ["sft", "dataset={d.jsonl}", "eval_fraction=1.5"], "eval_fraction: must be in [0, 1), got 1.5"),
    ("sft teacher missing", {"d.jsonl": '{"prompt": "a", "completion": "b"}\n'},
     ["sft", "dataset={d.jsonl}", "model=tiny:llama", "teacher=./teachers/none"], "teacher: ./teachers/none: no such"),
    # evaluation flags
    ("eval pass_k", {}, ["eval", "m", "--pass-k", "8"], "pass_k: each k must be between 1 and k=4, got [8]"),
    ("eval on_error", {}, ["eval", "m", "--on-error", "ignore"], "on_error: must be one of 'raise', 'skip'"),
    ("eval greedy k", {}, ["eval", "m", "--k", "4", "--temperature", "0"], "temperature: 0 is greedy decoding"),
    ("eval k type", {}, ["eval", "m", "--k", "one"], "k: expected int, got 'one'"),
    ("eval pass_k list", {}, ["eval", "m", "--pass-k", "one"], "--pass-k: expected a comma-separated list of int"),
    ("eval task options", {},
     ["eval", "m", "--benchmarks", "chain_sum", "--task-options", "{min_terms: 4, max_terms: 2}"],
     "task_options: task 'chain_sum' with options"),
    ("eval task options without a task", {}, ["eval", "m", "--benchmarks", "gsm8k", "--task-options", "{min_terms: 2}"],
     "task_options: apply to a built-in task benchmark (chain_sum); none among gsm8k"),
    ("eval benchmark file", {}, ["eval", "tiny:qwen2", "--benchmarks", "missing.jsonl"],
     "missing.jsonl: file not found"),
    # traces, rejection sampling, distillation, data tools
    ("generate prompt field", {"p.jsonl": '{"problem": "1+1"}\n{"text": "2"}\n'},
     ["generate", "{p.jsonl}", "--field-map", "question=problem", "--output", "t.jsonl"],
     "p.jsonl:2: missing field 'problem' (mapped to 'question'); fields present: text"),
    ("generate no output", {"p.jsonl": '{"question": "1+1"}\n'}, ["generate", "{p.jsonl}"],
     "output: give the output file"),
    ("sample traces missing", {}, ["sample", "--traces", "none.jsonl", "--output", "k.jsonl"],
     "none.jsonl: traces file not found"),
    ("sample not traces", {"t.jsonl": '{"question": "q"}\n'},
     ["sample", "--traces", "{t.jsonl}", "--output", "k.jsonl"],
     "t.jsonl:1: a trace needs text fields `question` and `completion`"),
    ("sample nothing to verify", {"t.jsonl": '{"question": "q", "completion": "c"}\n'},
     ["sample", "--traces", "{t.jsonl}", "--output", "k.jsonl"], "no `answer` field to verify against"),
    ("distill student settings", {}, ["distill", "prompts=chain_sum", "sft={learning_rat: 1e-5}"],
     "sft: override 'learning_rat=1e-5': unknown field 'learning_rat' for SFTConfig"),
    ("data check row", {"d.csv": [["question", "answer"], ["1+1", ""]]}, ["data", "check", "{d.csv}"],
     "d.csv:2: field 'answer' is empty"),
    ("field map syntax", {"d.jsonl": GOOD_QA}, ["data", "check", "{d.jsonl}", "--field-map", "question"],
     "field map 'question': 'question' is not ours=theirs"),
]


@pytest.mark.parametrize("name, files, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, name, files, argv, expected):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(aha.models, "load_model", refuse)
    monkeypatch.chdir(tmp_path)
    paths = {file: write(tmp_path, file, content) for file, content in files.items()}
    args = list(argv)
    for file, path in paths.items():
        args = [arg.replace("{" + file + "}", path) for arg in args]
    if argv[0] in ("train", "sft") and not any(a.startswith(("output_dir=", "resume=")) for a in args):
        args.append(f"output_dir={tmp_path / 'run'}")
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("aha: error: ") and expected in err, err
    assert "\n" not in err and "Traceback" not in err


def test_at_least_forty_cases():
    assert len(CASES) >= 40
