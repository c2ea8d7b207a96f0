"""Supervised fine-tuning on the run core: the loss is the mean negative log-likelihood of the response
tokens of a step's examples (prompt tokens are context only), with the same run directory, checkpoints,
exact resume, logs and progress as ``aha train``.

One step:
    examples = the step's batch_size examples                 a fixed function of (seed, epoch, step)
    for micro-batch (padded, length-sorted; or packed):
        logp  = log p(response token | everything before it)   only where the loss mask is 1
        loss  = -sum(logp) / (response tokens of the whole step)
        loss.backward()                                         micro-batch losses add up to the step's
    clip grad norm; AdamW step; scheduler step
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from aha.algorithms import token_logprobs
from aha.config.sft import SFTConfig
from aha.data.conversations import SFTExample, load_examples, parse_row
from aha.data.prompts import PromptBuilder
from aha.data.readers import DataError, read_rows
from aha.models import reusable_cache
from aha.models.attention import windowed_attention
from aha.models.linear import bfloat16_weight_copies
from aha.models.output_layer import hidden_outputs, linear_token_logprobs, output_layer
from aha.rollout.base import pad_token_id
from aha.run import RunLayout, open_run_dir
from aha.run.sharding import is_sharded, pad_to_equal
from aha.trainer.core import EvalResult, Policy, StepResult, Trainer, build_policy, seed_everything, set_determinism
from aha.trainer.frozen import load_teacher
from aha.trainer.preflight import check_model
from aha.utils.sequences import MIN_SHARED_PREFIX, left_pad, shared_prefix_length


@dataclass
class TokenBatch:
    """Examples laid out for one forward pass (``attention_mask`` None: packed rows, positions restart per
    example, so each example attends only to itself)."""

    input_ids: torch.Tensor  # [rows, L] long
    attention_mask: torch.Tensor | None  # [rows, L] long, 1 on real tokens; None when packed
    position_ids: torch.Tensor  # [rows, L] long
    loss_mask: torch.Tensor  # [rows, L] float, 1 on tokens whose prediction trains

    @property
    def trained_tokens(self) -> int:
        return int(self.loss_mask.sum())


def pad_examples(examples: list[SFTExample], pad_id: int) -> TokenBatch:
    """Left-padded rows: every example ends at the last column, so the logits that predict responses are the
    last few columns of every row."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss = torch.zeros((len(examples), width), dtype=torch.float32)
    for row, e in enumerate(examples):
        ids[row, width - len(e):] = torch.tensor(e.input_ids)
        attention[row, width - len(e):] = 1
        loss[row, width - len(e):] = torch.tensor(e.loss_mask, dtype=torch.float32)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return TokenBatch(ids, attention, positions, loss)


def pack_examples(examples: list[SFTExample], pad_id: int, max_length: int) -> TokenBatch:
    """Examples packed first-fit into rows of at most ``max_length`` tokens; positions restart at 0 for each
    example (and for the padding at a row's end), which transformers turns into a block-diagonal causal mask."""
    rows: list[list[SFTExample]] = []
    sizes: list[int] = []
    for e in sorted(examples, key=len, reverse=True):
        slot = next((i for i, size in enumerate(sizes) if size + len(e) <= max_length), None)
        if slot is None:
            rows.append([e])
            sizes.append(len(e))
        else:
            rows[slot].append(e)
            sizes[slot] += len(e)
    width = max(sizes)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, members in enumerate(rows):
        at = 0
        for e in members:
            ids[r, at: at + len(e)] = torch.tensor(e.input_ids)
            positions[r, at: at + len(e)] = torch.arange(len(e))
            loss[r, at: at + len(e)] = torch.tensor(e.loss_mask, dtype=torch.float32)
            at += len(e)
        positions[r, at:] = torch.arange(width - at)  # padding: a segment of its own
    return TokenBatch(ids, None, positions, loss)


def response_logits(model: torch.nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict every trained token, and those tokens, in row-major order: ``[n, V]`` (fp32),
    ``[n]``. Logits are computed only from the first column that predicts a trained token (``logits_to_keep``).
    When the rows start with the same untrained tokens (a system prompt), those run through the model once for
    the micro-batch and the rows continue from their cache."""
    outputs, labels = _response_outputs(model, batch)
    return outputs.float(), labels


def _response_outputs(model: torch.nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logits` in the model's dtype — or, within ``hidden_outputs``, the last hidden states there."""
    device = next(model.parameters()).device
    # a sharded model's backward reaches a block only through its output, not a cache it wrote: no sharing
    shared = 0 if is_sharded(model) or windowed_attention(model) or not reusable_cache(model) \
        else shared_context_length(batch)
    if shared:
        batch, inputs = _continue_after_shared(model, batch, shared, device)
    else:
        inputs = {}
    predicts = torch.zeros_like(batch.loss_mask, dtype=torch.bool)  # [rows, L]: this position predicts a trained token
    predicts[:, :-1] = batch.loss_mask[:, 1:] > 0
    targets = torch.zeros_like(batch.input_ids)
    targets[:, :-1] = batch.input_ids[:, 1:]
    columns = predicts.any(dim=0).nonzero()
    if columns.numel() == 0:
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    first = int(columns.min())
    width = batch.input_ids.shape[1]
    out = model(input_ids=batch.input_ids.to(device),
                attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device), logits_to_keep=width - first, use_cache=bool(inputs),
                **inputs)
    keep = predicts[:, first:].to(device)
    return out.logits[keep], targets[:, first:].to(device)[keep]  # [n, V], [n]


def shared_context_length(batch: TokenBatch) -> int:
    """Tokens every row of a padded batch starts with, none of them (nor the token after them) trained; 0 when
    packed or when fewer than ``MIN_SHARED_PREFIX`` are shared."""
    if batch.attention_mask is None or batch.input_ids.shape[0] < 2:
        return 0
    real = batch.attention_mask.bool()
    sequences = [ids[m].tolist() for ids, m in zip(batch.input_ids, real)]
    # a trained token needs the logits before it: the shared part ends before the first trained token's
    # predecessor, so that every trained token is predicted from the rest
    first_trained = min(int(loss[m].nonzero()[0]) if loss[m].any() else len(loss[m])
                        for loss, m in zip(batch.loss_mask, real))
    shared = min(shared_prefix_length(sequences, minimum=1), first_trained - 1)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _continue_after_shared(model: torch.nn.Module, batch: TokenBatch, shared: int, device: torch.device):
    """The shared tokens through the model once; returns the rows' rest as a batch laid out after them
    (``[shared][left padding][rest]``, the shared columns left out) and the model inputs that continue from
    the shared cache."""
    from aha.models import cache_keyword, prefix_cache

    real = batch.attention_mask.bool()
    rest = [ids[m][shared:].tolist() for ids, m in zip(batch.input_ids, real)]
    rest_loss = [loss[m][shared:] for loss, m in zip(batch.loss_mask, real)]
    ids, mask = left_pad(rest, 0)  # padding is masked: any id does
    loss = torch.zeros(ids.shape, dtype=torch.float32)
    for row, values in enumerate(rest_loss):
        loss[row, ids.shape[1] - len(values):] = values
    cache = prefix_cache(model, batch.input_ids[0][real[0]][:shared][None].to(device), len(rest))
    full_mask = torch.cat([torch.ones((len(rest), shared), dtype=torch.long), mask], dim=1)
    positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
    inputs = {cache_keyword(model): cache}
    return TokenBatch(ids, full_mask, positions, loss), inputs


def response_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """log p(token | the tokens before it) of every trained token, in row-major order: ``[n]`` — through the
    output layer a block of rows at a time where the model allows it (``aha.models.output_layer``: the same
    numbers, without the [n, V] logits held for the backward pass)."""
    layer = None if is_sharded(model) else output_layer(model)
    with hidden_outputs(layer):
        outputs, labels = _response_outputs(model, batch)
    if labels.numel() == 0:
        return torch.zeros(0, device=outputs.device)
    if layer is not None:
        return linear_token_logprobs(outputs.unsqueeze(0), layer, labels.unsqueeze(0)).squeeze(0)
    return token_logprobs(outputs.float().unsqueeze(0), labels.unsqueeze(0)).squeeze(0)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    chunk_size: int = 512) -> torch.Tensor:
    """Sum over positions of KL(teacher || student) between the next-token distributions at ``temperature``,
    times temperature squared (Hinton et al. 2015, so gradients keep their scale): ``[n, V]`` twice -> scalar.
    Computed in row chunks so that no second full-vocabulary tensor is held at once."""
    total = student_logits.new_zeros(())
    for start in range(0, student_logits.shape[0], chunk_size):
        s = torch.log_softmax(student_logits[start: start + chunk_size] / temperature, dim=-1)
        t = torch.log_softmax(teacher_logits[start: start + chunk_size].float() / temperature, dim=-1)
        total = total + (t.exp() * (t - s)).sum()
    return total * temperature**2


class SFTTrainer(Trainer):
    """Supervised fine-tuning on the run core (see the module docstring)."""

    progress_label = "SFT"

    def __init__(self, config: SFTConfig, layout: RunLayout, policy: Policy, train: list[SFTExample],
                 heldout: list[SFTExample], *, data_report: dict[str, Any] | None = None,
                 teacher: torch.nn.Module | None = None, console=None):
        super().__init__(config, layout, policy, console=console)
        self.teacher = teacher
        if not train:
            raise DataError(f"{config.dataset}: no training examples")
        self.train = train
        self.heldout = heldout
        self.data_report = data_report or {}
        self.pad_id = pad_token_id(policy.tokenizer)
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)

    @staticmethod
    def total_steps(config: SFTConfig, train_rows: int) -> int:
        if config.max_steps:
            return config.max_steps
        return max(1, math.ceil(config.num_epochs * math.ceil(train_rows / config.batch_size)))

    @classmethod
    def from_config(cls, config: SFTConfig, *, console=None) -> "SFTTrainer":
        """Check the model and every data row before anything heavy, then load, tokenize and build the run."""
        model_source = check_model(config)
        if config.teacher:
            check_model(config, "teacher")
        field_map = dict(config.field_map)
        for source in filter(None, (config.dataset, config.eval_dataset)):
            check_rows(source, field_map, config.on_error)
        layout = open_run_dir(config.output_dir, config.resume)
        set_determinism(config.deterministic, config.threads, config.matmul_precision)
        seed_everything(config.seed)
        from aha.models import load_tokenizer

        tokenizer = load_tokenizer(model_source)
        train, heldout, report = prepare_examples(config, tokenizer)
        if config.max_steps == 0:
            config.max_steps = cls.total_steps(config, len(train))  # recorded in config.yaml as used
        policy = build_policy(config, config.max_steps, model_source)
        teacher = load_teacher(config, tokenizer, "logit distillation compares next-token distributions and "
                                                  "needs a shared one (use response distillation)") \
            if config.teacher else None
        trainer = cls(config, layout, policy, train, heldout, data_report=report, teacher=teacher, console=console)
        trainer.console.log(f"{len(train)} training and {len(heldout)} held-out examples; "
                            f"{report['truncated']} cut at max_length={config.max_length}, {report['skipped']} "
                            f"skipped; {config.max_steps} steps of {config.batch_size}")
        return trainer

    # --- one step ----------------------------------------------------------------------------------
    def step_examples(self, step: int) -> list[SFTExample]:
        """The examples of step ``step``: epoch after epoch, each a fixed shuffle of (seed, epoch)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.train)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.config.batch_size
        return [self.train[i] for i in order[offset * size: (offset + 1) * size]]

    def micro_batches(self, examples: list[SFTExample]) -> list[TokenBatch]:
        c = self.config
        if c.packing:
            budget = c.micro_batch_size * c.max_length  # as many tokens as a padded micro-batch at most holds
            groups, current, used = [], [], 0
            for e in sorted(examples, key=len, reverse=True):
                if current and used + len(e) > budget:
                    groups.append(current)
                    current, used = [], 0
                current.append(e)
                used += len(e)
            groups.append(current)
            return [pack_examples(g, self.pad_id, c.max_length) for g in groups]
        ordered = sorted(examples, key=len, reverse=True)  # similar lengths together: less padding
        return [pad_examples(ordered[i: i + c.micro_batch_size], self.pad_id)
                for i in range(0, len(ordered), c.micro_batch_size)]

    def train_step(self, step: int) -> StepResult:
        c = self.config
        t0 = time.perf_counter()
        examples = self.step_examples(step)
        batches = self.micro_batches(examples)
        total = sum(b.trained_tokens for b in batches)  # of the whole step: every loss is normalised by it
        filler = batches[0]
        batches = batches[self.world.rank :: self.world.world_size]  # data parallel: micro-batch i on rank i mod N
        real = len(batches)
        if self.policy.sharded:  # sharded forwards are collective: every rank runs as many (zero-weighted filler)
            batches = pad_to_equal(batches, self.world, filler)
        self.policy.model.train()
        self.policy.zero_grad()
        sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
        alpha = c.distill_alpha if self.teacher is not None else 0.0
        with bfloat16_weight_copies():  # the weights are fixed until the step
            for i, batch in enumerate(batches):
                weight = 1.0 if i < real else 0.0
                if self.teacher is None:
                    nll = -weight * response_logprobs(self.policy.model, batch).sum() / max(total, 1)
                else:  # the KL to the teacher takes the student's whole distribution: its logits
                    logits, labels = response_logits(self.policy.model, batch)  # [n, V], [n]
                    nll = -weight * token_logprobs(logits.unsqueeze(0), labels.unsqueeze(0)).sum() / max(total, 1)
                loss = (1 - alpha) * nll
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits, _ = response_logits(self.teacher, batch)
                    kl = weight * distillation_kl(logits, teacher_logits, c.distill_temperature) / max(total, 1)
                    loss = loss + alpha * kl
                    sums["kl"] += float(kl.detach())
                loss.backward()
                sums["loss"] += float(loss.detach())
                sums["nll"] += float(nll.detach())
        sums = self.world.sum(sums)
        grad_norm = self.policy.step(c.max_grad_norm, loss=sums["loss"])
        elapsed = time.perf_counter() - t0
        tokens = sum(len(e) for e in examples)
        metrics = {"loss": sums["loss"], "trained_tokens": total, "tokens": tokens, "examples": len(examples),
                   "epoch": (step + 1) / self.steps_per_epoch, "grad_norm": grad_norm, "lr": self.policy.lr,
                   "time/step": elapsed, "time/tokens_per_s": tokens / max(elapsed, 1e-9)}
        if self.teacher is not None:
            metrics.update(nll=sums["nll"], kl=sums["kl"])
        metrics["nonfinite_skipped"] = int(self.policy.skipped)
        if self.policy.skipped:
            metrics["nonfinite_examples"] = [e.where for e in examples]
        return StepResult(metrics)

    # --- the run core's hooks ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> EvalResult | None:
        if not self.heldout:
            return None
        was_training = self.policy.model.training
        self.policy.model.eval()
        nll, count = 0.0, 0
        share = self.world.share(len(self.heldout))  # data parallel: each rank scores a share
        mine = self.heldout[share.start: share.stop]
        size = self.config.micro_batch_size
        batches = [pad_examples(mine[i: i + size], self.pad_id) for i in range(0, len(mine), size)]
        real = len(batches)
        if self.policy.sharded:  # as many (collective) forwards on every rank; the filler is not counted
            batches = pad_to_equal(batches, self.world, pad_examples(self.heldout[:1], self.pad_id))
        try:
            for i, batch in enumerate(batches):
                logp = response_logprobs(self.policy.model, batch)
                if i < real:
                    nll -= float(logp.sum())
                    count += logp.numel()
        finally:
            self.policy.model.train(was_training)
        totals = self.world.sum({"nll": nll, "count": float(count)})
        nll, count = totals["nll"], int(totals["count"])
        loss = nll / max(count, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count,
                   "examples": len(self.heldout)}
        return EvalResult(metrics, [], f"{len(self.heldout)} examples: loss {loss:.4f}, perplexity "
                                       f"{metrics['perplexity']:.2f}")

    def describe_step(self, step: int, m: dict[str, Any]) -> str:
        return (f"step {step}/{self.config.max_steps} loss {m['loss']:.4f} epoch {m['epoch']:.2f} "
                f"tokens {m['trained_tokens']} grad {m['grad_norm']:.2f} {m['time/step']:.1f}s")

    def progress_status(self, metrics: dict[str, Any]) -> str:
        return f"loss {metrics['loss']:.4f}"

    def summarise(self, step: int, stopped: str | None = None) -> dict[str, Any]:
        summary = super().summarise(step, stopped)
        summary["data"] = self.data_report
        metrics = self.logs.metrics.read()
        if metrics:
            summary["first_loss"], summary["last_loss"] = metrics[0]["loss"], metrics[-1]["loss"]
        self.logs.write_summary(summary)
        before, after = summary["before"], summary["after"]
        if before and after:
            self.console.log(f"held-out loss {before['loss']:.4f} -> {after['loss']:.4f}")
        return summary


def check_rows(source: str, field_map: dict[str, str], on_error: str) -> None:
    """Every row of a dataset checked (fields, types, roles) before any model loads."""
    bad = 0
    for raw in read_rows(source, split="train"):
        try:
            parse_row(raw, field_map)
        except DataError:
            if on_error == "raise":
                raise
            bad += 1


def prepare_examples(config: SFTConfig, tokenizer) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """(training examples, held-out examples, counts) of a config's dataset, tokenized."""
    builder = PromptBuilder(tokenizer, config.prompt_template, config.system_prompt, "", config.use_chat_template,
                            config.question_template)
    options = dict(trace_format=config.trace_format, delimiter=config.reasoning_delimiter,
                   max_length=config.max_length, train_on=config.train_on, on_error=config.on_error)
    examples, skipped = load_examples(read_rows(config.dataset, split="train"), builder, dict(config.field_map),
                                      **options)
    if config.eval_dataset:
        heldout, more = load_examples(read_rows(config.eval_dataset, split="test"), builder, dict(config.field_map),
                                      **options)
        skipped += more
        train = examples
    else:
        count = int(len(examples) * config.eval_fraction) if len(examples) >= 20 else 0
        count = max(count, 1) if config.eval_fraction > 0 and len(examples) >= 20 else count
        order = list(range(len(examples)))
        random.Random(config.seed).shuffle(order)
        held = set(order[len(order) - count:]) if count else set()
        train = [e for i, e in enumerate(examples) if i not in held]
        heldout = [e for i, e in enumerate(examples) if i in held]
    if not train:
        raise DataError(f"{config.dataset}: no training examples left")
    report = {"train_examples": len(train), "heldout_examples": len(heldout), "skipped": len(skipped),
              "truncated": sum(e.truncated for e in train + heldout), "skipped_rows": skipped[:20],
              "train_tokens": sum(len(e) for e in train), "trained_tokens": sum(e.trained_tokens for e in train)}
    return train, heldout, report
