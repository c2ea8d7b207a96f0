"""Supervised examples: conversations and prompt/completion pairs, validated, rendered into text with the
tokenizer's chat template (or a plain layout), tokenized, and masked so that only the response carries loss.

Two kinds of rows (after the field map):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   the assistant turns train
    {"prompt": "...", "completion": "..."}                                          the completion trains

A prompt/completion pair is rendered exactly as ``aha train`` and ``aha eval`` build their prompts (the
prompt template, system prompt, question template and chat template of :class:`PromptBuilder`), with the
completion as the assistant's reply, so a model fine-tuned here is prompted the same way afterwards.

Reasoning traces may be reformatted (``trace_format``): R1's cold-start data uses a readable pattern,
``|special_token|<reasoning_process>|special_token|<summary>``; R1-Zero's template uses
``<think> reasoning </think> <answer> answer </answer>``.

Worked example of the loss mask (character tokenizer, plain layout, prompt "1+1=", completion "2"):
    text   "User: 1+1=\\nAssistant: 2<|im_end|>"
    labels  0 ... 0 (every prompt character, "Assistant:" included) then 1 on " ", "2" and "<|im_end|>"
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from aha.data.prompts import PromptBuilder
from aha.data.readers import DataError, RawRow

ROLES = ("system", "user", "assistant")
TraceFormat = Literal["as_is", "think", "r1"]
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


@dataclass
class Segment:
    text: str
    trains: bool


@dataclass
class SFTExample:
    """One tokenized example: token ids, which of them carry loss, where it came from."""

    input_ids: list[int]
    loss_mask: list[int]
    """1 on the tokens whose prediction is trained (response tokens), else 0; same length as input_ids."""
    where: str
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)

    def __len__(self) -> int:
        return len(self.input_ids)


def parse_row(raw: RawRow, field_map: dict[str, str]) -> dict[str, Any]:
    """Validate one row into ``{"messages": [...]}`` or ``{"prompt": str, "completion": str, ...}``; a
    problem raises DataError(``file:line: field: problem``)."""
    if raw.problem is not None or raw.row is None:
        raise DataError(f"{raw.where}: {raw.problem}")
    row = dict(raw.row)
    for ours, theirs in field_map.items():
        if theirs not in raw.row:
            raise DataError(f"{raw.where}: missing field {theirs!r} (mapped to {ours!r}); fields present: "
                            f"{', '.join(sorted(raw.row)) or '(none)'}")
        row[ours] = raw.row[theirs]
    if "messages" in row:
        return {**row, "messages": _messages(row["messages"], raw.where, field_map.get("messages", "messages"))}
    missing = [name for name in ("prompt", "completion") if name not in row]
    if missing:
        raise DataError(f"{raw.where}: a row needs `messages`, or `prompt` and `completion`; missing "
                        f"{', '.join(repr(m) for m in missing)} (fields present: {', '.join(sorted(raw.row))}; map "
                        "yours with field_map, e.g. {prompt: question, completion: response})")
    for name in ("prompt", "completion"):
        value = row[name]
        source = field_map.get(name, name)
        if not isinstance(value, str):
            raise DataError(f"{raw.where}: field {source!r} is not text (got {type(value).__name__})")
        if not value.strip():
            raise DataError(f"{raw.where}: field {source!r} is empty")
    if "reasoning" in row and row["reasoning"] is not None and not isinstance(row["reasoning"], str):
        raise DataError(f"{raw.where}: field 'reasoning' is not text (got {type(row['reasoning']).__name__})")
    return row


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # a conversation kept as JSON text (CSV cells)
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field {field!r} is not a list of messages (bad JSON: {err.msg})") from None
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {field}[{i}] must be an object with role and content")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{i}].role {role!r} is not one the template knows "
                            f"({', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: {field}[{i}].content is not text (got {type(content).__name__})")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: field {field!r} has no assistant message with content: nothing to learn")
    return messages


def format_trace(row: dict[str, Any], trace_format: TraceFormat, delimiter: str = "|special_token|") -> str:
    """The completion to train on: as written (``as_is``), or reasoning and answer laid out as R1-Zero's
    ``<think>…</think> <answer>…</answer>`` (``think``) or R1's readable ``|special_token|reasoning|special_token|
    summary`` (``r1``). The reasoning is the row's ``reasoning`` field (a server's reasoning_content) or the
    completion's own ``<think>`` block."""
    completion = row["completion"]
    if trace_format == "as_is":
        return completion
    reasoning = row.get("reasoning")
    rest = completion
    if not reasoning:
        match = _THINK.match(completion)
        if match is None:
            return completion  # no reasoning to lay out: trained as written
        reasoning, rest = match.group(1), match.group(2)
    reasoning, rest = reasoning.strip(), rest.strip()
    if trace_format == "r1":
        summary = re.sub(r"</?answer>", "", rest).strip()
        return f"{delimiter}{reasoning}{delimiter}{summary}"
    if "<answer>" not in rest:
        rest = f"<answer>{rest}</answer>"
    return f"<think>{reasoning}</think> {rest}"


def segments(row: dict[str, Any], builder: PromptBuilder, trace_format: TraceFormat = "as_is",
             delimiter: str = "|special_token|") -> list[Segment]:
    """The row as text pieces, each marked as trained or not."""
    if "messages" in row:
        messages = row["messages"]
    else:
        messages = []
        if builder.instruction:
            messages.append({"role": "system", "content": builder.instruction})
        messages.append({"role": "user", "content": builder.question(row["prompt"])})
        messages.append({"role": "assistant", "content": format_trace(row, trace_format, delimiter)})
    if builder.chat:
        return _chat_segments(builder.tokenizer, messages)
    if "messages" not in row:  # exactly the prompt aha train and aha eval build, then the reply
        prompt = builder.build(row["prompt"])
        reply = (" " if prompt.endswith("Assistant:") else "") + messages[-1]["content"]
        return [Segment(prompt, False), Segment(reply + (builder.tokenizer.eos_token or ""), True)]
    return _plain_segments(builder.tokenizer, messages)


def _chat_segments(tokenizer, messages: list[dict[str, str]]) -> list[Segment]:
    """Render with the chat template; each assistant turn is what the template adds when that message is
    appended to the conversation before it (opened with the generation prompt)."""
    pieces: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opened = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        closed = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not opened.startswith(done) or not closed.startswith(opened):
            raise DataError("the chat template does not render a conversation as a prefix of its continuation; "
                            "use_chat_template=false trains on the plain layout instead")
        pieces += [Segment(opened[len(done):], False), Segment(closed[len(opened):], True)]
        done = closed
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(done) and len(full) > len(done):
        pieces.append(Segment(full[len(done):], False))
    return [p for p in pieces if p.text]


def _plain_segments(tokenizer, messages: list[dict[str, str]]) -> list[Segment]:
    """A conversation in the plain layout of :class:`PromptBuilder` (``<system> User: <question>\\nAssistant:
    <reply>``), each assistant turn ended by the tokenizer's end-of-sequence token."""
    eos = tokenizer.eos_token or ""
    pieces: list[Segment] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            pieces.append(Segment(content + " ", False))
        elif role == "user":
            pieces.append(Segment(f"User: {content}\nAssistant:", False))
        else:
            pieces.append(Segment(" " + content + eos, True))
            pieces.append(Segment("\n", False))
    if pieces and not pieces[-1].trains:
        pieces.pop()
    return pieces


def tokenize(pieces: list[Segment], tokenizer, where: str, max_length: int = 0,
             train_on: Literal["completion", "all"] = "completion") -> SFTExample:
    """Token ids of the joined pieces, with a loss mask from the trained pieces' character spans (offsets
    from the fast tokenizer, so the text is tokenized as one, as at inference). ``max_length`` cuts from the
    right (0: no limit)."""
    text = "".join(p.text for p in pieces)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, position = [], 0
    for piece in pieces:
        if piece.trains or train_on == "all":
            spans.append((position, position + len(piece.text)))
        position += len(piece.text)
    mask = [int(any(start < end and a <= start < b for a, b in spans)) for start, end in encoded["offset_mapping"]]
    ids = list(encoded["input_ids"])
    truncated = bool(max_length) and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return SFTExample(ids, mask, where, truncated)


def load_examples(rows: Iterable[RawRow], builder: PromptBuilder, field_map: dict[str, str], *,
                  trace_format: TraceFormat = "as_is", delimiter: str = "|special_token|", max_length: int = 0,
                  train_on: Literal["completion", "all"] = "completion", on_error: str = "raise"
                  ) -> tuple[list[SFTExample], list[str]]:
    """Every row validated and tokenized: (examples, one ``file:line: problem`` per skipped row)."""
    examples, skipped = [], []
    for raw in rows:
        try:
            row = parse_row(raw, field_map)
            example = tokenize(segments(row, builder, trace_format, delimiter), builder.tokenizer, raw.where,
                               max_length, train_on)
            if not example.trained_tokens:
                raise DataError(f"{raw.where}: no response tokens left within max_length={max_length}")
        except DataError as err:
            message = str(err) if str(err).startswith(raw.where) else f"{raw.where}: {err}"
            if on_error == "raise":
                raise DataError(message) from None
            skipped.append(message)
            continue
        examples.append(example)
    return examples, skipped
