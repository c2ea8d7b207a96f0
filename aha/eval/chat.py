"""``aha chat MODEL``: talk to a reasoning model. Replies stream as they are generated, the thinking shown apart
from the answer (dimmed on a terminal), then the token count and speed. Earlier turns keep only their
answers: the thinking is dropped from the context, as R1 does. A model that opens its own thinking (R1-distill
chat templates end the generation prompt with ``<think>``) and one trained here with a ``<think>`` prefill are
both read right.

MODEL: a run directory (its prompt settings are read from its config.yaml), a checkpoint, an HF folder, a
.gguf file or an alias. With standard input not a terminal, each line is one message and only the answers are
printed (one reply per line, newlines inside escaped as ``\\n``), so a conversation can be scripted.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import yaml

from aha.data.prompts import TEMPLATES

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_ANSWER_TAGS = re.compile(r"</?answer>")


@dataclass
class Reply:
    """A reply split into its thinking and its answer."""

    thinking: str = ""
    answer: str = ""
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Splitter:
    """Splits streamed text into thinking and answer. Starts inside the thinking when the prompt opened it;
    otherwise the thinking is what comes between ``<think>`` and ``</think>``. Tag fragments cut across two
    pieces are held back until they can be told apart."""

    thinking: bool = False
    buffer: str = ""
    reply: Reply = field(default_factory=Reply)

    def feed(self, text: str) -> Iterator[tuple[str, str]]:
        """Yields (``thinking`` | ``answer``, text) pieces as soon as they are certain."""
        self.buffer += text
        while self.buffer:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = self.buffer.find(tag)
            if at >= 0:
                yield from self._emit(self.buffer[:at])
                self.buffer = self.buffer[at + len(tag):]
                self.thinking = not self.thinking
                continue
            keep = _partial_suffix(self.buffer, tag)
            yield from self._emit(self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            break

    def close(self) -> Iterator[tuple[str, str]]:
        yield from self._emit(self.buffer)
        self.buffer = ""

    def _emit(self, text: str) -> Iterator[tuple[str, str]]:
        if not text:
            return
        kind = "thinking" if self.thinking else "answer"
        if kind == "thinking":
            self.reply.thinking += text
        else:
            self.reply.answer += text
        yield kind, text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a beginning of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def clean_answer(answer: str) -> str:
    """The answer as kept in the conversation and printed by a script: ``<answer>`` tags removed."""
    return _ANSWER_TAGS.sub("", answer).strip()


@dataclass
class ChatSettings:
    system: str | None = None
    prefill: str = ""
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0


def run_settings(model: str) -> ChatSettings:
    """Prompt settings of a run directory (its config.yaml), so a model is prompted as it was trained."""
    settings = ChatSettings()
    config = Path(model) / "config.yaml"
    if not config.is_file():
        return settings
    values = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    template = values.get("prompt_template")
    settings.system = values.get("system_prompt") or (TEMPLATES.get(template) if template else None)
    prefill = values.get("prefill")
    settings.prefill = prefill if isinstance(prefill, str) else ("<think>" if template == "r1-zero" else "")
    return settings


class Chat:
    """A conversation with a local model."""

    def __init__(self, model_name: str, settings: ChatSettings, device: str = "auto", dtype: str = "auto"):
        from aha.models import load_model
        from aha.run import resolve_model_source

        self.model, self.tokenizer = load_model(resolve_model_source(model_name), device=device, dtype=dtype)
        self.model.eval()
        self.settings = settings
        self.history: list[dict[str, str]] = []

    def prompt(self, message: str) -> tuple[str, bool]:
        """The text the model continues, and whether it opens inside the thinking."""
        messages = ([{"role": "system", "content": self.settings.system}] if self.settings.system else [])
        messages += self.history + [{"role": "user", "content": message}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['content']} " if m["role"] == "system" else
                           f"User: {m['content']}\nAssistant:" if m["role"] == "user" else f" {m['content']}\n"
                           for m in messages)
        text += self.settings.prefill
        opened = text.rstrip().endswith(THINK_OPEN)
        return text, opened

    def stream(self, message: str) -> Iterator[str]:
        """The reply's text, piece by piece; records the finished turn in the history (answer only)."""
        import torch
        from transformers import TextIteratorStreamer

        text, _ = self.prompt(message)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        s = self.settings
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p} if s.temperature > 0 else \
            {"do_sample": False}
        torch.manual_seed(s.seed + len(self.history))
        outcome: dict[str, object] = {}

        def generate() -> None:
            try:
                outcome["ids"] = self.model.generate(**inputs, streamer=streamer, max_new_tokens=s.max_new_tokens,
                                                     pad_token_id=self.tokenizer.pad_token_id, **sampling)
            except BaseException as err:  # handed to the reading thread
                outcome["error"] = err
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        self.last_tokens = int(outcome["ids"].shape[1] - inputs["input_ids"].shape[1])  # type: ignore[union-attr]

    def reply(self, message: str, show: "Display | None" = None) -> Reply:
        _, opened = self.prompt(message)
        splitter = Splitter(thinking=opened)
        started = time.perf_counter()
        for piece in self.stream(message):
            for kind, text in splitter.feed(piece):
                if show:
                    show.piece(kind, text)
        for kind, text in splitter.close():
            if show:
                show.piece(kind, text)
        reply = splitter.reply
        reply.tokens = self.last_tokens
        reply.seconds = time.perf_counter() - started
        self.history += [{"role": "user", "content": message},
                         {"role": "assistant", "content": clean_answer(reply.answer)}]
        return reply


class Display:
    """Writes a streamed reply to a terminal: thinking dimmed, answer plain, then tokens and speed."""

    DIM, RESET = "\033[2m", "\033[0m"

    def __init__(self, out: TextIO):
        self.out = out
        self.kind = ""

    def piece(self, kind: str, text: str) -> None:
        if kind != self.kind:
            self.out.write(self.RESET)
            if kind == "thinking":
                self.out.write(self.DIM + "thinking: ")
            elif self.kind == "thinking":
                self.out.write("\n")
            self.kind = kind
        self.out.write(text)
        self.out.flush()

    def done(self, reply: Reply) -> None:
        speed = reply.tokens / reply.seconds if reply.seconds else 0.0
        self.out.write(f"{self.RESET}\n{self.DIM}[{reply.tokens} tokens, {speed:.1f} tokens/s]{self.RESET}\n")
        self.out.flush()
        self.kind = ""


def converse(chat: Chat, lines: Iterable[str], out: TextIO, interactive: bool) -> int:
    """Answer each message; on a terminal with the display above, else one answer line per message."""
    display = Display(out) if interactive else None
    for line in lines:
        message = line.rstrip("\n")
        if not message.strip():
            continue
        if interactive and message.strip() in ("/exit", "/quit"):
            break
        if interactive and message.strip() == "/reset":
            chat.history.clear()
            out.write("(conversation cleared)\n")
            continue
        reply = chat.reply(message, display)
        if display:
            display.done(reply)
            out.write("> ")
            out.flush()
        else:
            out.write(clean_answer(reply.answer).replace("\n", "\\n") + "\n")
            out.flush()
    return 0


def interactive_lines(out: TextIO) -> Iterator[str]:
    out.write("aha chat: type a message (/reset clears the conversation, /exit or Ctrl-D quits)\n> ")
    out.flush()
    for line in sys.stdin:
        yield line


def main_chat(model: str, *, system: str | None, prefill: str | None, max_new_tokens: int, temperature: float,
              top_p: float, seed: int, device: str, dtype: str) -> int:
    settings = run_settings(model)
    if system is not None:
        settings.system = system or None
    if prefill is not None:
        settings.prefill = prefill
    settings.max_new_tokens, settings.temperature, settings.top_p, settings.seed = \
        max_new_tokens, temperature, top_p, seed
    chat = Chat(model, settings, device=device, dtype=dtype)
    interactive = sys.stdin.isatty()
    lines = interactive_lines(sys.stdout) if interactive else sys.stdin
    return converse(chat, lines, sys.stdout, interactive)
