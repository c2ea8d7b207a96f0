"""A reward model as a reward: any Hugging Face sequence-classification model (a scalar head, e.g. a
Skywork or ArmoRM-style reward model, or one trained with TRL's RewardTrainer) scores each question and
completion, batched, on the policy's device.

    rewards:
      helpful: {reward: reward_model, model: path/to/rm, weight: 1.0, when: {kind: general}}

The conversation is rendered with the reward model's chat template (user: the question, assistant: the
completion) or, without one, as ``question\\n\\ncompletion``. ``normalise: sigmoid`` maps the head's logit to
(0, 1); ``raw`` keeps it. The model is loaded on first use, once.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from aha.rewards.registry import register_reward


class RewardModel:
    def __init__(self, model: str, batch_size: int, max_length: int, device: str, dtype: str, normalise: str,
                 question_field: str):
        self.name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.normalise = normalise
        self.question_field = question_field
        self.loaded: tuple[Any, Any] | None = None
        self.lock = threading.Lock()

    def load(self):
        with self.lock:
            if self.loaded is None:
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                from aha.models import ModelLoadError, resolve_device, resolve_dtype, resolve_model_path

                device = resolve_device(self.device)
                path = resolve_model_path(self.name)
                try:
                    tokenizer = AutoTokenizer.from_pretrained(path)
                    model = AutoModelForSequenceClassification.from_pretrained(
                        path, dtype=resolve_dtype(self.dtype, device))
                except (OSError, ValueError) as err:
                    raise ModelLoadError(f"reward_model: cannot load {self.name!r}: {str(err).splitlines()[0]}") \
                        from None
                if model.config.num_labels != 1:
                    raise ModelLoadError(f"reward_model: {self.name!r} has {model.config.num_labels} labels; a "
                                         "reward model has one scalar output (num_labels=1)")
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                if model.config.pad_token_id is None:
                    model.config.pad_token_id = tokenizer.pad_token_id
                tokenizer.padding_side = "right"
                self.loaded = (model.to(device).eval(), tokenizer)
        return self.loaded

    def text(self, tokenizer, question: str, completion: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": question},
                                                  {"role": "assistant", "content": completion}], tokenize=False)
        return f"{question}\n\n{completion}"

    def __call__(self, completions: list[str], **columns) -> list[float | None]:
        import torch

        model, tokenizer = self.load()
        questions = columns.get(self.question_field) or [""] * len(completions)
        texts = [self.text(tokenizer, q or "", c) for q, c in zip(questions, completions)]
        scores: list[float | None] = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=self.max_length).to(model.device)
            with torch.no_grad():
                logits = model(**batch).logits[:, 0].float()
            for value in logits.tolist():
                scores.append(1 / (1 + math.exp(-value)) if self.normalise == "sigmoid" else value)
        return scores


@register_reward("reward_model")
def reward_model(model: str, batch_size: int = 8, max_length: int = 4096, device: str = "auto", dtype: str = "auto",
                 normalise: str = "sigmoid", question_field: str = "question"):
    """Scores from a sequence-classification reward model (see the module docstring)."""
    if normalise not in ("sigmoid", "raw"):
        raise ValueError(f"reward_model: normalise must be 'sigmoid' or 'raw', got {normalise!r}")
    if batch_size < 1 or max_length < 1:
        raise ValueError("reward_model: batch_size and max_length must be >= 1")
    return RewardModel(model, batch_size, max_length, device, dtype, normalise, question_field)
