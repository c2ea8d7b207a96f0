"""`aha chat`: the thinking kept apart from the answer while streaming (tags cut across pieces included), earlier
turns without their thinking, the R1-distill convention, a pseudo-terminal session and a scripted one."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aha.cli import main
from aha.eval.chat import Chat, ChatSettings, Splitter, clean_answer, run_settings

REPO = Path(__file__).resolve().parents[2]


def split(pieces, opened=False):
    splitter = Splitter(thinking=opened)
    out = [kind_text for piece in pieces for kind_text in splitter.feed(piece)] + list(splitter.close())
    return splitter.reply, out


def test_thinking_and_answer_apart_even_when_a_tag_is_cut():
    reply, out = split(["<thi", "nk>3 + 4", " = 7</thi", "nk> <answer>7</answer>"])
    assert reply.thinking == "3 + 4 = 7" and reply.answer == " <answer>7</answer>"
    assert [k for k, _ in out] == ["thinking", "thinking", "answer"]
    reply, _ = split(["so 7", "</think>", "7"], opened=True)      # the prompt opened the thinking
    assert (reply.thinking, reply.answer) == ("so 7", "7")
    reply, _ = split(["just an answer <"])                       # a '<' that starts no tag is kept
    assert (reply.thinking, reply.answer) == ("", "just an answer <")
    assert clean_answer(" <answer> 7 </answer>\n") == "7"


@pytest.fixture(scope="module")
def tiny_chat():
    return Chat("tiny:qwen2", ChatSettings(system="Be brief.", prefill="<think>", max_new_tokens=4))


def test_earlier_turns_keep_only_their_answers(tiny_chat, monkeypatch):
    tiny_chat.history.clear()
    replies = iter([["Let me add: 2 + 2 = 4", "</think> <answer>4</answer>"], ["ok</think>8"]])

    def scripted(message):
        tiny_chat.last_tokens = 5
        yield from next(replies)

    monkeypatch.setattr(tiny_chat, "stream", scripted)
    first = tiny_chat.reply("2 + 2?")
    assert first.thinking == "Let me add: 2 + 2 = 4" and clean_answer(first.answer) == "4"
    prompt, opened = tiny_chat.prompt("and doubled?")
    assert opened and "Let me add" not in prompt
    assert "2 + 2?" in prompt and "4" in prompt and prompt.endswith("<think>")
    tiny_chat.reply("and doubled?")
    assert [m["content"] for m in tiny_chat.history] == ["2 + 2?", "4", "and doubled?", "8"]


def test_a_template_that_opens_the_thinking_is_read_right(tiny_chat):
    tiny_chat.history.clear()
    tokenizer = tiny_chat.tokenizer
    saved, saved_prefill = tokenizer.chat_template, tiny_chat.settings.prefill
    try:
        tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                                   "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
        tiny_chat.settings.prefill = ""
        assert tiny_chat.prompt("hi") == ("<|system|>Be brief.<|user|>hi<|assistant|><think>\n", True)
    finally:
        tokenizer.chat_template, tiny_chat.settings.prefill = saved, saved_prefill


def test_prompt_settings_come_from_the_run(tmp_path):
    (tmp_path / "config.yaml").write_text("prompt_template: r1-zero\nprefill: null\nsystem_prompt: null\n")
    settings = run_settings(str(tmp_path))
    assert settings.system.startswith("A conversation between User and Assistant") and settings.prefill == "<think>"
    (tmp_path / "config.yaml").write_text("prompt_template: chat\nprefill: ''\n")
    assert (run_settings(str(tmp_path)).system, run_settings(str(tmp_path)).prefill) == (None, "")


def read_until(fd: int, marker: bytes, timeout: float = 120) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_a_terminal_session_streams_thinking_dimmed_then_speed():
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "aha", "chat", "tiny:qwen2", "--max-new-tokens", "6",
                                "--prefill", "<think>", "--system", ""], cwd=REPO, stdin=follower,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    try:
        assert b"type a message" in read_until(leader, b"> ")
        os.write(leader, b"hello\n")
        shown = read_until(leader, b"tokens/s]")
        assert b"\x1b[2mthinking: " in shown          # all of a random model's reply is thinking: dimmed
        assert b" tokens, " in shown and b"tokens/s]" in shown
        os.write(leader, b"/exit\n")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


def test_a_pipe_gets_one_answer_line_per_message():
    done = subprocess.run([sys.executable, "-m", "aha", "chat", "tiny:qwen2", "--max-new-tokens", "5",
                           "--prefill", "", "--system", "", "--temperature", "0"], cwd=REPO,
                          input="first\n\nsecond\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2  # the empty line is not a message


def test_a_model_that_is_not_there_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("aha: error: model: ")
