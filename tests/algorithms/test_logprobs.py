import pytest
import torch

from aha.algorithms import token_entropy, token_logprobs, token_logprobs_and_entropy
from aha.algorithms import logprobs as module


def reference(logits, labels, temperature):
    """The plain computation: log_softmax of the scaled logits, gathered; entropy from the same."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk_rows", [1, 4, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_entropy_and_gradients_match_the_plain_computation_for_any_chunking(monkeypatch, chunk_rows,
                                                                                    temperature):
    monkeypatch.setattr(module, "CHUNK_BYTES", 4 * 11 * chunk_rows)  # rows of 11 fp32 logits per chunk
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g)
    mine_logits, ref_logits = base.clone().requires_grad_(), base.clone().requires_grad_()
    logprobs, entropy = token_logprobs_and_entropy(mine_logits, labels, temperature)
    expected, expected_entropy = reference(ref_logits, labels, temperature)
    assert torch.allclose(logprobs, expected, atol=1e-6)
    assert torch.allclose(entropy, expected_entropy.detach(), atol=1e-5)
    assert not entropy.requires_grad
    (logprobs * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(mine_logits.grad, ref_logits.grad, atol=1e-6)
    assert torch.allclose(token_logprobs(base, labels, temperature), expected, atol=1e-6)


def test_bfloat16_logits_give_fp32_logprobs_and_bfloat16_gradients():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 17, generator=g) * 2).bfloat16().requires_grad_()
    labels = torch.randint(0, 17, (2, 3), generator=g)
    logprobs = token_logprobs(logits, labels, 0.6)
    expected, _ = reference(logits.detach(), labels, 0.6)
    assert logprobs.dtype == torch.float32 and torch.allclose(logprobs, expected, atol=1e-5)
    logprobs.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_logprob_entropy_and_gradient_hand_computed():
    # logits [0, ln 3] -> probabilities [1/4, 3/4]
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0)).item()]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(torch.log(torch.tensor(0.75)).item())
    # entropy of [1/4, 3/4] = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    assert token_entropy(logits).item() == pytest.approx(0.562335, abs=1e-6)
    # temperature 0.5: scaled logits [0, 2 ln 3] -> probabilities [1/10, 9/10]; entropy 0.325083
    logprob, entropy = token_logprobs_and_entropy(logits, torch.tensor([[1]]), temperature=0.5)
    assert logprob.item() == pytest.approx(torch.log(torch.tensor(0.9)).item(), abs=1e-6)
    assert entropy.item() == pytest.approx(0.325083, abs=1e-6)


@pytest.mark.parametrize("temperature, expected", [(1.0, [-0.25, -0.25, 0.75, -0.25]),
                                                   (2.0, [-0.125, -0.125, 0.375, -0.125])])
def test_logprob_gradient_hand_computed(temperature, expected):
    # d log softmax(z / T)_2 / d z = (onehot(2) - softmax(z / T)) / T, with z = 0: softmax = 1/4 each
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    token_logprobs(logits, torch.tensor([[2]]), temperature).sum().backward()
    assert logits.grad.flatten().tolist() == pytest.approx(expected)


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_gradient_matches_the_plain_computation(monkeypatch, chunk_rows, temperature):
    # the entropy bonus's gradient (with the log-probs' own), against autograd through log_softmax
    monkeypatch.setattr(module, "CHUNK_BYTES", 4 * 11 * chunk_rows)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(3, 5, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 5), generator=g)
    w_logp, w_entropy = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mine_logits, ref_logits = base.clone().requires_grad_(), base.clone().requires_grad_()
    logprobs, entropy = token_logprobs_and_entropy(mine_logits, labels, temperature, entropy_grad=True)
    expected, expected_entropy = reference(ref_logits, labels, temperature)
    assert entropy.requires_grad and torch.allclose(entropy, expected_entropy, atol=1e-5)
    ((logprobs * w_logp).sum() + (entropy * w_entropy).sum()).backward()
    ((expected * w_logp).sum() + (expected_entropy * w_entropy).sum()).backward()
    assert torch.allclose(mine_logits.grad, ref_logits.grad, atol=1e-5)
    # the entropy alone (the log-probs unused)
    only = base.clone().requires_grad_()
    token_logprobs_and_entropy(only, labels, temperature, entropy_grad=True)[1].sum().backward()
    ref_only = base.clone().requires_grad_()
    reference(ref_only, labels, temperature)[1].sum().backward()
    assert torch.allclose(only.grad, ref_only.grad, atol=1e-5)


def test_entropy_gradient_hand_computed():
    # logits [0, ln 3] -> p = [1/4, 3/4], H = 0.562335; dH/dz_j = -p_j (ln p_j + H):
    # -0.25 (ln 0.25 + 0.562335) = 0.205990, -0.75 (ln 0.75 + 0.562335) = -0.205990
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0)).item()]]], requires_grad=True)
    _, entropy = token_logprobs_and_entropy(logits, torch.tensor([[1]]), entropy_grad=True)
    entropy.sum().backward()
    assert logits.grad.flatten().tolist() == pytest.approx([0.205990, -0.205990], abs=1e-6)
