import pytest
import torch

from aha.algorithms import compute_advantages
from tests.algorithms.reference import advantages_loop

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_group_normalised_hand_computed():
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4) = +-0.86588
    # group 2: all equal -> 0 (not NaN)
    adv = compute_advantages(REWARDS, group_size=4, estimator="group")
    expected = torch.tensor([0.86588, -0.86588, -0.86588, 0.86588, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_none_is_dr_grpo_centering():
    adv = compute_advantages(REWARDS, group_size=4, estimator="none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_batch_normalised_hand_computed():
    # batch mean 1.25; squared deviations sum 5.5; unbiased std sqrt(5.5 / 7) = 0.886405
    adv = compute_advantages(REWARDS, group_size=4, estimator="batch")
    assert adv[0].item() == pytest.approx(0.5 / (0.886405 + 1e-4), rel=1e-5)
    assert adv[4:].abs().max().item() == 0.0


def test_rloo_leave_one_out():
    # r_0 = 1, mean of the others (0, 0, 1) = 1/3 -> 2/3; r_1 = 0, others (1, 0, 1) -> -2/3
    adv = compute_advantages(REWARDS, group_size=4, estimator="rloo")
    assert adv[:4].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


@pytest.mark.parametrize("estimator", ["group", "none", "batch", "rloo"])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_matches_plain_loop(estimator, group_size):
    g = torch.Generator().manual_seed(group_size)
    rewards = torch.rand(group_size * 5, generator=g).round(decimals=1)
    expected = advantages_loop(rewards.tolist(), group_size, estimator)
    assert compute_advantages(rewards, group_size, estimator).tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("estimator", ["group", "none", "batch", "rloo"])
def test_zero_variance_groups_give_zero_advantage_without_nan(estimator):
    adv = compute_advantages(torch.ones(12), group_size=4, estimator=estimator)
    assert torch.isfinite(adv).all() and adv.abs().max() == 0


def test_unknown_estimator_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown advantage estimator 'bogus'; valid: batch, group, none, rloo"):
        compute_advantages(REWARDS, 4, estimator="bogus")


def test_rewards_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="cannot be split into groups of 3"):
        compute_advantages(REWARDS, 3)


def test_nan_rewards_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages(torch.tensor([1.0, float("nan")]), 2)


def test_a_per_token_estimator_is_masked_and_may_read_token_rewards():
    from aha.algorithms import ADVANTAGE_ESTIMATORS

    @ADVANTAGE_ESTIMATORS.register("test_reward_to_go")
    def reward_to_go(inputs, eps):  # a token's advantage: the sum of the token rewards from it to the end
        return inputs.token_rewards.flip(1).cumsum(1).flip(1)

    try:
        token_rewards = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
        mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
        adv = compute_advantages(torch.zeros(2), 2, "test_reward_to_go", completion_mask=mask,
                                 token_rewards=token_rewards)
        assert adv.tolist() == [[1.0, 1.0, 0.0], [3.0, 2.0, 2.0]]
    finally:
        ADVANTAGE_ESTIMATORS._entries.pop("test_reward_to_go")
