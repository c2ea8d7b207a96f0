import math

import pytest
import torch

from aha.algorithms import LOSS_TYPES, policy_loss
from tests.algorithms.reference import loss_loop

# Two completions over three positions; the second has two tokens.
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, 0.0]])
OLD = torch.tensor([[-1.1, -2.0, -0.2], [-1.0, -0.2, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])
REF = torch.full((2, 3), -1.0)
# log-ratios [[0.1, 0, -0.3], [-0.5, 0, -]] -> ratios [[1.10517, 1, 0.740818], [0.606531, 1, -]]
# row 0 (A = +1): min(rho, clip(rho, .8, 1.2)) = [1.10517, 1, 0.740818]   -> losses -[1.10517, 1, 0.740818]
# row 1 (A = -1): min(-rho, -clip(rho)) = [-0.8, -1]                      -> losses [0.8, 1]


def test_grpo_hand_computed():
    # mean(row0) = -2.845988 / 3 = -0.948663; mean(row1) = 1.8 / 2 = 0.9; loss = (-0.948663 + 0.9) / 2
    loss, stats = policy_loss(LOGP, OLD, ADV, MASK, loss_type="grpo")
    assert loss.item() == pytest.approx(-0.0243314, abs=1e-6)
    # one clipped token (row 1, ratio 0.6065 < 0.8 with A < 0) out of five
    assert stats["clip_ratio"] == pytest.approx(0.2)
    assert stats["clip_ratio_low"] == pytest.approx(0.2) and stats["clip_ratio_high"] == 0.0
    assert "kl" not in stats


def test_dapo_hand_computed():
    # sum over the five tokens -1.045988, divided by 5 tokens
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dapo")
    assert loss.item() == pytest.approx(-0.2091976, abs=1e-6)


def test_dr_grpo_hand_computed():
    # sum -1.045988 / (2 sequences * max length); max length 3 by default, 4 when given
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dr_grpo")
    assert loss.item() == pytest.approx(-0.1743313, abs=1e-6)
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dr_grpo", max_completion_length=4)
    assert loss.item() == pytest.approx(-0.1307485, abs=1e-6)


def test_gspo_hand_computed():
    # sequence ratios exp(-0.2 / 3) = 0.935507 and exp(-0.5 / 2) = 0.778801
    # row 0: -min(0.935507, 0.935507) = -0.935507; row 1 (A = -1): -min(-0.778801, -0.8) = 0.8
    loss, stats = policy_loss(LOGP, OLD, ADV, MASK, loss_type="gspo")
    assert loss.item() == pytest.approx((-0.935507 + 0.8) / 2, abs=1e-6)
    assert stats["clip_ratio"] == pytest.approx(0.5)  # one of two sequences clipped


def test_kl_k3_hand_computed():
    # d = ref - logp: [[0, 1, -0.5], [0.5, -0.8, -]]; k3 = e^d - d - 1:
    # [[0, 0.718282, 0.106531], [0.148721, 0.249329]] -> masked mean 1.222863 / 5
    # grpo with beta 0.1: row 0 (-2.845988 + 0.0824813) / 3; row 1 (1.8 + 0.039805) / 2
    loss, stats = policy_loss(LOGP, OLD, ADV, MASK, loss_type="grpo", beta=0.1, ref_logprobs=REF)
    assert stats["kl"] == pytest.approx(0.2445726, abs=1e-6)
    assert loss.item() == pytest.approx((-2.7635067 / 3 + 1.839805 / 2) / 2, abs=1e-6)


def test_clip_higher_widens_the_upper_range():
    up = torch.tensor([[math.log(1.25)]])
    _, tight = policy_loss(up, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), eps_high=0.2)
    _, loose = policy_loss(up, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), eps_high=0.28)
    assert tight["clip_ratio_high"] == 1.0 and loose["clip_ratio_high"] == 0.0


def _random_case(seed, batch=6, seq=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, seq, generator=g) * 3
    old = logp + (torch.rand(batch, seq, generator=g) - 0.5) * 0.8
    ref = logp + (torch.rand(batch, seq, generator=g) - 0.5)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).float()
    adv = torch.randn(batch, generator=g)
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop(loss_type, beta, seed):
    logp, old, adv, mask, ref = _random_case(seed)
    loss, _ = policy_loss(logp, old, adv, mask, loss_type=loss_type, eps_low=0.2, eps_high=0.28, beta=beta,
                          ref_logprobs=ref, max_completion_length=9)
    expected = loss_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), loss_type, 0.2, 0.28, beta,
                         ref.tolist(), 9)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo"])
def test_micro_batches_with_the_batch_counts_add_up_to_the_full_batch(loss_type):
    # each micro-batch normalises by the whole batch's sequence and token counts, so the plain sum of the
    # micro-batch losses (gradient accumulation, or an all-reduce across ranks) is the full batch's loss
    logp, old, adv, mask, ref = _random_case(7, batch=8)
    logp.requires_grad_(True)
    full, _ = policy_loss(logp, old, adv, mask, loss_type=loss_type, beta=0.04, ref_logprobs=ref,
                          max_completion_length=7)
    (full_grad,) = torch.autograd.grad(full, logp)
    total = 0.0
    for rows in torch.tensor([5, 0, 2, 7, 1, 3, 4, 6]).split(3):
        part, _ = policy_loss(logp[rows], old[rows], adv[rows], mask[rows], loss_type=loss_type, beta=0.04,
                              ref_logprobs=ref[rows], max_completion_length=7, num_sequences=8,
                              num_tokens=float(mask.sum()))
        total = total + part
    (micro_grad,) = torch.autograd.grad(total, logp)
    assert total.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(micro_grad, full_grad, atol=1e-6)


def test_the_counts_are_the_normalisers_hand_computed():
    # dapo over the five tokens is -1.045988 / 5; told the batch has 10 tokens, the same rows give half
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dapo", num_tokens=10)
    assert loss.item() == pytest.approx(-1.045988 / 10, abs=1e-6)
    # grpo: sum of the two sequence means (-0.948663 + 0.9) over 4 sequences
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="grpo", num_sequences=4)
    assert loss.item() == pytest.approx(-0.048663 / 4, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo"])
def test_per_token_advantages_constant_along_a_row_equal_per_sequence_ones(loss_type):
    logp, old, adv, mask, ref = _random_case(3)
    per_sequence, _ = policy_loss(logp, old, adv, mask, loss_type=loss_type)
    per_token, _ = policy_loss(logp, old, adv[:, None].expand_as(logp), mask, loss_type=loss_type)
    assert per_token.item() == pytest.approx(per_sequence.item(), abs=1e-7)


def test_per_token_advantages_hand_computed():
    # row 0, A = [1, 0, 2], ratios [1.10517, 1, 0.740818]: min(rho * A, clip(rho) * A) per token is
    # [1.10517, 0, min(1.481636, 0.8 * 2)] = [1.10517, 0, 1.481636]; row 1, A = -1: losses [0.8, 1] as before
    # grpo = ((-1.10517 - 1.481636) / 3 + 1.8 / 2) / 2
    adv = torch.tensor([[1.0, 0.0, 2.0], [-1.0, -1.0, 5.0]])  # the masked third token of row 1 counts for nothing
    loss, _ = policy_loss(LOGP, OLD, adv, MASK, loss_type="grpo")
    assert loss.item() == pytest.approx(((-1.10517 - 1.481636) / 3 + 0.9) / 2, abs=1e-5)


def test_engine_ratio_weights_each_token_and_is_capped():
    # engine log-probs below the trainer's old ones by [0, ln 2, ln 4] on row 0: weights [1, 2, 4] capped at 3
    engine = OLD.clone()
    engine[0] = OLD[0] - torch.tensor([0.0, math.log(2), math.log(4)])
    loss, stats = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dapo", engine_logprobs=engine, engine_ratio_cap=3.0)
    # row 0 token losses -[1.10517, 1, 0.740818] * [1, 2, 3]; row 1 unchanged [0.8, 1]
    expected = (-(1.10517 + 2 * 1 + 3 * 0.740818) + 1.8) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert stats["engine_ratio"] == pytest.approx((1 + 2 + 3 + 1 + 1) / 5)
    # the mismatch, uncapped ratios r = [1, 2, 4 | 1, 1]: k3 = r - 1 - ln r = [0, 1 - ln 2, 3 - ln 4 | 0, 0]
    assert stats["engine_kl"] == pytest.approx((1 - math.log(2) + 3 - math.log(4)) / 5, abs=1e-6)
    assert stats["engine_capped"] == pytest.approx(1 / 5)  # the 4 only
    off, _ = policy_loss(LOGP, OLD, ADV, MASK, loss_type="dapo", engine_logprobs=engine)  # cap 0: off
    assert off.item() == pytest.approx(-0.2091976, abs=1e-6)


def test_ratio_one_gives_the_plain_policy_gradient():
    # at rho = 1 the gradient of grpo w.r.t. logp is -A / |o_i| / B on every token
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0, -2.0]), torch.ones(2, 2))
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.5, 0.5])


def test_all_truncated_or_zero_advantage_batch_is_finite():
    loss, stats = policy_loss(LOGP, OLD, torch.zeros(2), MASK)
    assert loss.item() == 0.0 and all(math.isfinite(v) for v in stats.values())


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'ppo2'; valid: dapo, dr_grpo, grpo, gspo"):
        policy_loss(LOGP, OLD, ADV, MASK, loss_type="ppo2")


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(LOGP, OLD, ADV, MASK, beta=0.1)


def test_registry_names():
    assert LOSS_TYPES.names() == ["dapo", "dr_grpo", "grpo", "gspo"]


def test_clipped_value_loss_hand_computed():
    from aha.algorithms import value_loss

    # token 0: V 1.0 (old 0.5, moved 0.5 > clip 0.2 -> clipped 0.7), return 0.9:
    #   max((1.0 - 0.9)^2, (0.7 - 0.9)^2) = max(0.01, 0.04) = 0.04
    # token 1: V 0.3 (old 0.4, within the clip), return 0.0: max(0.09, 0.09) = 0.09; token 2 masked
    values, old = torch.tensor([[1.0, 0.3, 5.0]]), torch.tensor([[0.5, 0.4, 0.0]])
    returns, mask = torch.tensor([[0.9, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.04 + 0.09) / 2)
    assert stats["value_clip_ratio"] == pytest.approx(0.5)
    values.requires_grad_(True)
    loss, _ = value_loss(values, old, returns, mask, clip=0.2)
    loss.backward()
    # token 0's clipped branch wins and is flat in V: no gradient; token 1: 0.5 * 2 * 0.3 / 2 tokens = 0.15
    assert values.grad.tolist()[0] == pytest.approx([0.0, 0.15, 0.0])
