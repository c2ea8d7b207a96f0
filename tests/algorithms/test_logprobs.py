import pytest
import torch

from aha.algorithms import token_entropy, token_logprobs


def test_logprobs_match_log_softmax_for_any_chunk_size():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 4, 15, 1000):
        assert torch.allclose(token_logprobs(logits, labels, chunk_size=chunk), expected, atol=1e-6)


def test_logprob_hand_computed():
    # logits [0, ln 3] -> probabilities [1/4, 3/4]
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0)).item()]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(torch.log(torch.tensor(0.75)).item())
    # entropy of [1/4, 3/4] = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    assert token_entropy(logits).item() == pytest.approx(0.562335, abs=1e-6)


def test_logprobs_are_differentiable():
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    token_logprobs(logits, torch.tensor([[2]])).sum().backward()
    # d log softmax_2 / d logits = onehot(2) - softmax = [-.25, -.25, .75, -.25]
    assert logits.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.75, -0.25])
