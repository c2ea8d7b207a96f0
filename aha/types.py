"""Typed records passed between rollout, rewards and the optimiser (shapes documented per field)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class TrainBatch:
    """Token tensors for a batch of N = prompts x group_size sequences.

    Each row is ``[left padding][prompt][completion][right padding]``; all completions start at the same
    column ``prompt_width``, so the logits that predict them are the last ``completion_width + 1``.
    """

    input_ids: torch.Tensor  # [N, prompt_width + completion_width] long
    attention_mask: torch.Tensor  # [N, prompt_width + completion_width] long, 1 on real tokens
    position_ids: torch.Tensor  # [N, prompt_width + completion_width] long, 0 at each prompt's first token
    completion_ids: torch.Tensor  # [N, completion_width] long
    completion_mask: torch.Tensor  # [N, completion_width] float, 1 on completion tokens (EOS included)
    advantages: torch.Tensor  # [N] float, or [N, completion_width] for per-token advantages
    group_ids: torch.Tensor  # [N] long, the prompt (group) each row was sampled from
    prompt_width: int
    old_logprobs: torch.Tensor | None = None  # [N, completion_width], sampling policy (num_iterations > 1)
    ref_logprobs: torch.Tensor | None = None  # [N, completion_width], reference policy (beta > 0)
    engine_logprobs: torch.Tensor | None = None  # [N, completion_width], as the generation engine computed them

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_width(self) -> int:
        return self.completion_ids.shape[1]

    def to(self, device: torch.device | str) -> "TrainBatch":
        """The batch with every tensor on ``device`` (itself when they are all there already): batches are
        built on the CPU, and a micro-batch meets the model's outputs on the model's device."""
        moved = {f.name: value.to(device) for f in fields(self)
                 if isinstance(value := getattr(self, f.name), torch.Tensor) and value.device != torch.device(device)}
        return replace(self, **moved) if moved else self

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """A micro-batch of ``rows``, trimmed to the columns those rows use (less padding to compute)."""
        mask = self.attention_mask[rows]
        completion_mask = self.completion_mask[rows]
        used_prompt = mask[:, : self.prompt_width].sum(dim=0) > 0
        first = int(used_prompt.nonzero()[0]) if used_prompt.any() else self.prompt_width
        width = int((completion_mask.sum(dim=0) > 0).nonzero().max()) + 1 if completion_mask.any() else 1
        end = self.prompt_width + width

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows][:, :width]

        advantages = self.advantages[rows] if self.advantages.dim() == 1 else cut(self.advantages)
        return TrainBatch(
            input_ids=self.input_ids[rows][:, first:end], attention_mask=mask[:, first:end],
            position_ids=self.position_ids[rows][:, first:end], completion_ids=cut(self.completion_ids),
            completion_mask=cut(self.completion_mask), advantages=advantages,
            group_ids=self.group_ids[rows], prompt_width=self.prompt_width - first, old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs), engine_logprobs=cut(self.engine_logprobs),
        )


def build_train_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], advantages: torch.Tensor,
                      pad_id: int, group_size: int = 1,
                      engine_logprobs: list[list[float] | None] | None = None) -> TrainBatch:
    """Pad prompts on the left and completions on the right into one [N, P + C] batch; rows come in groups
    of ``group_size`` that share a prompt. ``engine_logprobs`` (one list per completion, when the engine
    gave them) are padded like the completions."""
    n = len(prompt_ids)
    prompt_width = max(len(p) for p in prompt_ids)
    completion_width = max(1, max(len(c) for c in completion_ids))
    input_ids = torch.full((n, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros((n, completion_width), dtype=torch.float32)
    for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[row, prompt_width - len(prompt) : prompt_width] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, prompt_width - len(prompt) : prompt_width] = 1
        if completion:
            input_ids[row, prompt_width : prompt_width + len(completion)] = torch.tensor(completion, dtype=torch.long)
            attention_mask[row, prompt_width : prompt_width + len(completion)] = 1
            completion_mask[row, : len(completion)] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    group_ids = torch.arange(n) // group_size
    engine = None
    if engine_logprobs is not None and all(lp is not None for lp in engine_logprobs):
        engine = torch.zeros((n, completion_width), dtype=torch.float32)
        for row, logprobs in enumerate(engine_logprobs):
            engine[row, : len(logprobs)] = torch.tensor(logprobs, dtype=torch.float32)
    advantages = advantages.float()
    if advantages.dim() == 2 and advantages.shape[1] < completion_width:  # per-token, pad to the batch's width
        advantages = torch.nn.functional.pad(advantages, (0, completion_width - advantages.shape[1]))
    return TrainBatch(input_ids, attention_mask, position_ids, input_ids[:, prompt_width:].clone(), completion_mask,
                      advantages, group_ids, prompt_width, engine_logprobs=engine)
