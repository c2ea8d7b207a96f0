"""Supervised examples: validation with file:line messages, the chat template or the plain layout, the
loss mask on response tokens only (checked token by token on hand-built examples), trace formats."""

import csv
import json

import pytest

from aha.data.conversations import format_trace, load_examples, parse_row, segments, tokenize
from aha.data.prompts import PromptBuilder
from aha.data.readers import DataError, RawRow, read_rows
from aha.models import char_tokenizer

TOK = char_tokenizer()


def chat_builder(**extra) -> PromptBuilder:
    return PromptBuilder(TOK, extra.pop("template", "chat"), prefill="", **extra)


def labelled(example) -> list[tuple[str, int]]:
    return [(TOK.convert_ids_to_tokens(i), m) for i, m in zip(example.input_ids, example.loss_mask)]


def trained_text(example) -> str:
    return "".join(t for t, m in labelled(example) if m)


def test_chat_template_prompt_completion_labels_by_hand():
    row = parse_row(RawRow("f:1", {"prompt": "1+1=", "completion": "2"}), {})
    example = tokenize(segments(row, chat_builder()), TOK, "f:1")
    # <|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n  then the reply 2<|im_end|>\n
    tokens = labelled(example)
    prompt = ["<|im_start|>", "u", "s", "e", "r", "\n", "1", "+", "1", "=", "<|im_end|>", "\n", "<|im_start|>",
              "a", "s", "s", "i", "s", "t", "a", "n", "t", "\n"]
    assert tokens == [(t, 0) for t in prompt] + [("2", 1), ("<|im_end|>", 1), ("\n", 1)]


def test_plain_layout_labels_by_hand():
    builder = chat_builder(template="r1-zero", use_chat=False, system_prompt="Add.")
    row = parse_row(RawRow("f:1", {"prompt": "1+1=", "completion": "2"}), {})
    example = tokenize(segments(row, builder), TOK, "f:1")
    assert labelled(example) == ([(c, 0) for c in "Add. User: 1+1=\nAssistant:"]
                                 + [(" ", 1), ("2", 1), ("<|im_end|>", 1)])
    assert builder.build("1+1=") + trained_text(example) == "Add. User: 1+1=\nAssistant: 2<|im_end|>"


def test_the_r1_zero_template_puts_its_instruction_in_the_system_message():
    builder = chat_builder(template="r1-zero")
    row = parse_row(RawRow("f:1", {"prompt": "2+2=", "completion": "<think>2+2</think> <answer>4</answer>"}), {})
    example = tokenize(segments(row, builder), TOK, "f:1")
    text = "".join(t for t, _ in labelled(example))
    assert text.startswith("<|im_start|>system\nA conversation between User and Assistant.")
    assert trained_text(example) == "<think>2+2</think> <answer>4</answer><|im_end|>\n"
    assert text.startswith(builder.build("2+2="))  # the prompt is the one RL and evaluation use


def test_every_assistant_turn_of_a_conversation_trains_and_nothing_else():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "more"},
                {"role": "assistant", "content": "B"}]
    example = tokenize(segments(parse_row(RawRow("f:1", {"messages": messages}), {}), chat_builder()), TOK, "f:1")
    assert trained_text(example) == "A<|im_end|>\nB<|im_end|>\n"
    everything = tokenize(segments(parse_row(RawRow("f:1", {"messages": messages}), {}), chat_builder()), TOK,
                          "f:1", train_on="all")
    assert all(m == 1 for _, m in labelled(everything))


def test_max_length_cuts_from_the_right_and_says_so():
    row = parse_row(RawRow("f:1", {"prompt": "1+1=", "completion": "22222"}), {})
    builder = chat_builder(template="r1-zero", use_chat=False, system_prompt="Add.")
    example = tokenize(segments(row, builder), TOK, "f:1", max_length=30)  # a 26-character prompt
    assert len(example) == 30 and example.truncated and trained_text(example) == " 222"
    assert not tokenize(segments(row, builder), TOK, "f:1", max_length=100).truncated


@pytest.mark.parametrize("row, message", [
    ({"question": "1+1="}, "f.jsonl:3: a row needs `messages`, or `prompt` and `completion`; missing 'prompt', "
                           "'completion'"),
    ({"prompt": "1+1=", "completion": ""}, "f.jsonl:3: field 'completion' is empty"),
    ({"prompt": 7, "completion": "x"}, "f.jsonl:3: field 'prompt' is not text (got int)"),
    ({"messages": []}, "f.jsonl:3: field 'messages' must be a non-empty list of {role, content} messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "f.jsonl:3: field 'messages' has no assistant message"),
    ({"messages": [{"role": "narrator", "content": "hi"}]},
     "f.jsonl:3: messages[0].role 'narrator' is not one the template knows (system, user, assistant)"),
    ({"messages": [{"role": "user"}]}, "f.jsonl:3: messages[0] must be an object with role and content"),
    ({"messages": "[{\"role\": \"user\""}, "f.jsonl:3: field 'messages' is not a list of messages (bad JSON"),
])
def test_bad_rows_name_file_line_and_field(row, message):
    with pytest.raises(DataError) as err:
        parse_row(RawRow("f.jsonl:3", row), {})
    assert str(err.value).startswith(message)


def test_field_map_and_a_missing_mapped_field():
    row = parse_row(RawRow("f:1", {"q": "1+1=", "r": "2"}), {"prompt": "q", "completion": "r"})
    assert (row["prompt"], row["completion"]) == ("1+1=", "2")
    with pytest.raises(DataError, match=r"f:1: missing field 'r' \(mapped to 'completion'\); fields present: q"):
        parse_row(RawRow("f:1", {"q": "1+1="}), {"prompt": "q", "completion": "r"})


def test_conversations_in_a_csv_cell_and_skip_and_count(tmp_path):
    path = tmp_path / "d.csv"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["messages"], [good], ["[]"]])
    examples, skipped = load_examples(read_rows(path), chat_builder(), {}, on_error="skip")
    assert len(examples) == 1 and trained_text(examples[0]) == "yo<|im_end|>\n"
    assert skipped == [f"{path}:3: field 'messages' must be a non-empty list of {{role, content}} messages"]
    with pytest.raises(DataError, match=r"d.csv:3: field 'messages'"):
        load_examples(read_rows(path), chat_builder(), {})


@pytest.mark.parametrize("fmt, row, expected", [
    ("as_is", {"completion": "<think>a</think> <answer>1</answer>"}, "<think>a</think> <answer>1</answer>"),
    ("think", {"completion": "The answer is 1.", "reasoning": "a then b"},
     "<think>a then b</think> <answer>The answer is 1.</answer>"),
    ("think", {"completion": "<think> a </think> <answer>1</answer>"}, "<think>a</think> <answer>1</answer>"),
    ("r1", {"completion": "<think>a then b</think> <answer>1</answer>"}, "|special_token|a then b|special_token|1"),
    ("r1", {"completion": "So 1.", "reasoning": "a"}, "|special_token|a|special_token|So 1."),
    ("r1", {"completion": "no reasoning here"}, "no reasoning here"),
])
def test_trace_formats(fmt, row, expected):
    assert format_trace(row, fmt) == expected
