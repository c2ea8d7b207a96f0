"""Prompt templates: the R1-Zero template, and chat-template prompting for instruct models."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from aha.config.sections import PROMPT_TEMPLATES

R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)

TEMPLATES = {
    "r1-zero": R1_ZERO_INSTRUCTION,
    "chat": None,  # the question alone as the user's message
    "plain": None,  # the question alone as raw text, no chat template
}
assert tuple(TEMPLATES) == PROMPT_TEMPLATES  # the names the config accepts


@dataclass
class PromptBuilder:
    """Turns a question into the text the model continues.

    template: ``r1-zero`` (the paper's instruction), ``chat`` (question only, in the chat template) or
    ``plain`` (question only, raw text). With a tokenizer that has a chat template (and ``use_chat``),
    the instruction goes in the system message and the question in the user message; otherwise the
    paper's plain layout is used: ``<instruction> User: <question>\\nAssistant:``.
    prefill: text that opens the assistant's turn (e.g. ``<think>``); it counts as part of the
    completion when rewards score it. question_template: how the question is written into the prompt.
    """

    tokenizer: PreTrainedTokenizerBase | None
    template: str = "r1-zero"
    system_prompt: str | None = None
    prefill: str = ""
    use_chat: bool = True
    question_template: str = "{question}"

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase | None, config) -> "PromptBuilder":
        """The builder of a config's prompt settings (``aha.config.sections.PromptSection``)."""
        return cls(tokenizer, config.prompt_template, config.system_prompt, config.prefill_text,
                   config.use_chat_template, config.question_template)

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r}; valid: {', '.join(TEMPLATES)}")

    @property
    def instruction(self) -> str | None:
        return self.system_prompt if self.system_prompt is not None else TEMPLATES[self.template]

    @property
    def chat(self) -> bool:
        return self.use_chat and self.template != "plain" and bool(getattr(self.tokenizer, "chat_template", None))

    def question(self, question: str) -> str:
        """The question as it is put to the model (``question_template`` filled in)."""
        return self.question_template.replace("{question}", question)

    def build(self, question: str) -> str:
        question = self.question(question)
        if self.chat:
            messages = []
            if self.instruction:
                messages.append({"role": "system", "content": self.instruction})
            messages.append({"role": "user", "content": question})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + self.prefill
        if self.template == "r1-zero" or self.instruction:
            text = f"{self.instruction} User: {question}\nAssistant:"
            return text + (" " + self.prefill if self.prefill else "")
        return question + self.prefill
