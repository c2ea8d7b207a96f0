import pytest
import torch

from aha.models import load_model
from aha.trainer.forward import completion_logits
from aha.types import build_train_batch


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_prefix_pass_equals_the_plain_pass_in_values_and_gradients(arch):
    model, _ = load_model(f"tiny:{arch}", seed=1)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (7, 4, 9)]
    rows = [p for p in prompts for _ in range(3)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (1, 5, 3, 6, 2, 6, 4, 1, 6)]
    batch = build_train_batch(rows, completions, torch.zeros(9), pad_id=2, group_size=3)
    mb = batch.select(torch.tensor([0, 1, 2, 4, 5, 7, 8]))  # a micro-batch with a partial group

    results = []
    for share in (False, True):
        model.zero_grad()
        logits = completion_logits(model, mb, temperature=0.7, share_prefix=share)
        (logits.logsumexp(-1) * mb.completion_mask).sum().backward()
        results.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (plain, plain_grad), (shared, shared_grad) = results
    mask = mb.completion_mask.bool()
    assert torch.allclose(plain[mask], shared[mask], atol=1e-5)
    assert torch.allclose(plain_grad, shared_grad, atol=1e-5)
