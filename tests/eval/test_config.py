"""The eval config and its command-line flags: every field is a documented flag, values keep their types."""

import dataclasses

import pytest

from aha.cli import build_parser, eval_config
from aha.config import ConfigError, EvalConfig


def parse(*argv: str) -> EvalConfig:
    return eval_config(build_parser().parse_args(["eval", *argv]))


def test_the_issue_flags_work_as_written():
    config = parse("runs/x", "--benchmarks", "math500,aime24", "--k", "64", "--temperature", "0.6", "--top-p", "0.95",
                   "--max-new-tokens", "2048", "--limit", "10", "--prompt", "chat", "--output", "out",
                   "--api-base", "http://127.0.0.1:8000/v1")
    assert (config.model, config.benchmarks, config.k, config.temperature, config.top_p) == (
        "runs/x", ["math500", "aime24"], 64, 0.6, 0.95)
    assert (config.max_completion_length, config.limit, config.prompt_template, config.output_dir, config.api_base) == (
        2048, 10, "chat", "out", "http://127.0.0.1:8000/v1")


def test_values_keep_their_types():
    config = parse("m", "--k", "8", "--pass-k", "1,4", "--field-map", "question=Body+Question answer=Answer",
                   "--system-prompt", "Answer: briefly", "--stop", "</answer>", "--no-use-chat-template",
                   "--question-template", "{question} Put the answer in \\boxed{}.", "--on-error", "skip")
    assert config.pass_k == [1, 4] and config.field_map == {"question": "Body+Question", "answer": "Answer"}
    assert config.system_prompt == "Answer: briefly" and config.stop_strings == ["</answer>"]
    assert config.use_chat_template is False and config.on_error == "skip"
    assert config.question_template == "{question} Put the answer in \\boxed{}."


def test_bad_values_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="--pass-k: expected a comma-separated list of int"):
        parse("m", "--pass-k", "one")
    with pytest.raises(ConfigError, match=r"pass_k: each k must be between 1 and k=4, got \[8\]"):
        parse("m", "--pass-k", "8")
    with pytest.raises(ConfigError, match="on_error: must be one of 'raise', 'skip'"):
        parse("m", "--on-error", "ignore")
    with pytest.raises(ConfigError, match="temperature: 0 is greedy decoding"):
        parse("m", "--k", "2", "--temperature", "0")


def test_without_a_model_the_default_model_is_evaluated():
    assert parse("--k", "1").model == "smollm2-135m-instruct"


def test_the_former_flag_names_are_the_same_settings():
    new = parse("m", "--max-completion-length", "64", "--prompt-template", "chat", "--stop-strings", "</a>",
                "--generation-batch-size", "4", "--output-dir", "o")
    old = parse("m", "--max-new-tokens", "64", "--prompt", "chat", "--stop", "</a>", "--batch-size", "4",
                "--output", "o")
    assert new == old


def test_a_yaml_file_then_flags(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("model: tiny:llama\nbenchmarks: [gsm8k]\nk: 8\n")
    config = parse("--config", str(path), "--k", "2")
    assert (config.model, config.benchmarks, config.k) == ("tiny:llama", ["gsm8k"], 2)


def test_help_documents_every_field():
    text = build_parser()._subparsers._group_actions[0].choices["eval"].format_help()
    for f in dataclasses.fields(EvalConfig):
        if f.name != "model":
            assert "--" + f.name.replace("_", "-") in text, f.name
    assert "majority vote" in text and "Samples per problem" in text
