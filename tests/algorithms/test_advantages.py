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
    valid = "batch, group, none, process, reinforce_pp, rloo"
    with pytest.raises(ValueError, match=f"unknown advantage estimator 'bogus'; valid: {valid}"):
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


def test_gae_hand_computed():
    # one completion of 3 tokens, outcome 1.0 on the last; V = [0.5, 0.6, 0.8]; gamma = lam = 1:
    # deltas [0.6 - 0.5, 0.8 - 0.6, 1 - 0.8] = [0.1, 0.2, 0.2] -> A = [0.5, 0.4, 0.2], returns [1, 1, 1]
    from aha.algorithms import compute_gae

    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.8, 9.0]])  # the 4th position is padding: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.4, 0.2, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0, 0.0])
    # lam = 0: one-step TD, A_t = r_t + V_{t+1} - V_t = [0.1, 0.2, 0.2]
    adv, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert adv.tolist()[0] == pytest.approx([0.1, 0.2, 0.2, 0.0])
    # gamma = 0.5, lam = 1: returns are discounted sums of rewards, 0.25, 0.5, 1
    _, ret = compute_gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([0.25, 0.5, 1.0, 0.0])


@pytest.mark.parametrize("gamma", [0.0, 0.95, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_the_plain_recursion(gamma, lam):
    from aha.algorithms import compute_gae
    from tests.algorithms.reference import gae_loop

    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    lengths = torch.tensor([5, 1, 3, 7])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    rewards, values = torch.randn(4, 7, generator=g) * mask, torch.randn(4, 7, generator=g)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert adv.tolist() == [pytest.approx(row, abs=1e-5) for row in want_adv]
    assert ret.tolist() == [pytest.approx(row, abs=1e-5) for row in want_ret]
    assert (adv * (1 - mask)).abs().max() == 0 and (ret * (1 - mask)).abs().max() == 0


def test_reinforce_pp_normalises_over_every_token_of_the_batch():
    # rewards [1, 0] over completions of 3 and 1 tokens: the tokens carry [1, 1, 1, 0]; mean 0.75,
    # unbiased std sqrt(0.75 / 3) = 0.5 -> [0.5, 0.5, 0.5] and [-1.5]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = compute_advantages(torch.tensor([1.0, 0.0]), 1, "reinforce_pp", eps=0.0, completion_mask=mask)
    assert adv.tolist() == [pytest.approx([0.5, 0.5, 0.5]), pytest.approx([-1.5, 0.0, 0.0])]


def test_process_advantages_worked_example():
    # one group of 2 outputs; output 0 has steps ending at tokens 1 and 3 with rewards 1 and 0; output 1 one
    # step ending at token 2 with reward 1. Step rewards [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3) = 0.57735
    # -> normalised [0.57735, -1.15470, 0.57735]. A token's advantage sums the normalised rewards of the
    # steps ending at or after it: output 0 -> [0.57735 - 1.15470] for tokens 0-1, -1.15470 for 2-3.
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    ends = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    adv = compute_advantages(torch.zeros(2), 2, "process", eps=0.0, token_rewards=rewards, token_reward_mask=ends,
                             completion_mask=torch.tensor([[1.0] * 4, [1.0, 1.0, 1.0, 0.0]]))
    assert adv[0].tolist() == pytest.approx([-0.57735, -0.57735, -1.15470, -1.15470], abs=1e-4)
    assert adv[1].tolist() == pytest.approx([0.57735, 0.57735, 0.57735, 0.0], abs=1e-4)
    with pytest.raises(ValueError, match="needs step rewards"):
        compute_advantages(torch.zeros(2), 2, "process")
