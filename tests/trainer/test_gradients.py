"""The trainer's optimisation (micro-batches, rows without advantage skipped, prompts run once per pass, chunked
log-probabilities, the entropy bonus) gives the gradients of the plain objective computed the simplest way: one
unpadded forward per completion, ``log_softmax`` over the whole vocabulary, the loss written out by hand."""

import pytest
import torch

from aha.config import GRPOConfig, load_config
from aha.models import fold_row_gradients
from aha.trainer.grpo import GRPOTrainer
from aha.types import build_train_batch
from tests.trainer.helpers import tiny_overrides, tiny_task

PROMPTS = [[5, 6, 7], [8, 9], [5, 6, 11, 12]]  # three groups of four, prompts of different lengths
COMPLETIONS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30],
               [31, 32], [33, 34, 35, 36], [37], [38, 39, 40],
               [41, 42, 43], [44, 45], [46], [47, 48, 49, 50, 51, 52]]
ADVANTAGES = [1.0, -0.5, 0.25, -0.75,
              0.0, 0.0, 0.0, 0.0,  # a group without reward spread: no gradient from the surrogate
              -1.0, 2.0, 0.5, -1.5]
TEMPERATURE = 0.7


def plain_gradients(model: torch.nn.Module, loss_type: str, entropy_coef: float) -> dict[str, torch.Tensor]:
    """The objective at ratio 1 (old = current policy), one completion at a time, no padding, no sharing."""
    model.zero_grad(set_to_none=True)
    num_sequences = len(COMPLETIONS)
    num_tokens = sum(len(c) for c in COMPLETIONS)
    total = torch.zeros(())
    for row, (completion, advantage) in enumerate(zip(COMPLETIONS, ADVANTAGES)):
        prompt = PROMPTS[row // 4]
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / TEMPERATURE  # [C, V]
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(1, torch.tensor(completion)[:, None])[:, 0]  # [C]
        ratio = torch.exp(chosen - chosen.detach())  # 1, with the policy gradient's derivative
        per_token = -ratio * advantage
        if loss_type == "grpo":  # each sequence's mean, averaged over sequences
            total = total + per_token.mean() / num_sequences
        else:  # dapo: every token of the batch one vote
            total = total + per_token.sum() / num_tokens
        entropy = -(logp.exp() * logp).sum(dim=-1)  # [C]
        total = total - entropy_coef * entropy.sum() / num_tokens
    total.backward()
    fold_row_gradients(model)  # the input embedding's gradient rows (aha.models.sparse_embedding_gradients)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def trainer_gradients(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    """The gradients the trainer's optimise() hands to the optimiser (the optimiser step itself skipped)."""
    captured = {}

    def step(max_grad_norm, loss=None):
        fold_row_gradients(trainer.model)
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        trainer.policy.zero_grad()
        return 0.0

    trainer.policy.step = step
    batch = build_train_batch([PROMPTS[i // 4] for i in range(12)], COMPLETIONS, torch.tensor(ADVANTAGES),
                              pad_id=2, group_size=4)
    trainer.optimise(batch)
    return captured


@pytest.mark.parametrize("extra", [
    {},                                                        # the default: prompts once per pass, 4-row micro-batches
    {"share_prompt_prefix": "false", "micro_batch_size": 3},   # every row's prompt in its own forward
    {"micro_batch_size": 1},
    {"loss_type": "dapo"},
    {"entropy_coef": 0.05},                                    # every row trains, the zero-advantage group too
    {"entropy_coef": 0.05, "loss_type": "dapo", "share_prompt_prefix": "false"},
])
def test_optimise_gives_the_gradients_of_the_plain_objective(tmp_path, extra):
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, group_size=4, temperature=TEMPERATURE,
                                                              **extra))
    trainer = GRPOTrainer.from_config(config, task=tiny_task())
    mine = trainer_gradients(trainer)
    plain = plain_gradients(trainer.model, config.loss_type, config.entropy_coef)
    assert set(mine) == set(plain)
    for name, expected in plain.items():
        scale = float(expected.abs().max())
        assert scale > 0, name  # every parameter takes part, so the comparison cannot pass vacuously
        assert torch.allclose(mine[name], expected, rtol=1e-4, atol=1e-5 * scale), name


def test_the_entropy_bonus_changes_the_gradient_by_its_own_term(tmp_path):
    """With the bonus the gradient differs from the plain objective's without it (the term is not lost)."""
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, group_size=4, temperature=TEMPERATURE,
                                                              entropy_coef=0.05))
    trainer = GRPOTrainer.from_config(config, task=tiny_task())
    mine = trainer_gradients(trainer)
    without = plain_gradients(trainer.model, "grpo", 0.0)
    assert max(float((mine[n] - without[n]).abs().max()) for n in without) > 1e-4
