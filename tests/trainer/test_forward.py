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
        logits = completion_logits(model, mb, share_prefix=share)
        (logits.logsumexp(-1) * mb.completion_mask).sum().backward()
        results.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (plain, plain_grad), (shared, shared_grad) = results
    mask = mb.completion_mask.bool()
    assert torch.allclose(plain[mask], shared[mask], atol=1e-5)
    assert torch.allclose(plain_grad, shared_grad, atol=1e-5)


def test_prompts_sharing_a_system_prompt_compute_it_once_with_the_same_values_and_gradients():
    from aha.utils.sequences import MIN_SHARED_PREFIX

    model, _ = load_model("tiny:qwen2", seed=1)
    g = torch.Generator().manual_seed(0)
    system = torch.randint(3, 90, (MIN_SHARED_PREFIX + 4,), generator=g).tolist()
    prompts = [system + torch.randint(3, 90, (n,), generator=g).tolist() for n in (3, 1, 6)]
    rows = [p for p in prompts for _ in range(2)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (2, 5, 1, 4, 6, 3)]
    mb = build_train_batch(rows, completions, torch.zeros(6), pad_id=2, group_size=2).select(torch.arange(6))

    results = []
    for share in (False, True):
        model.zero_grad()
        logits = completion_logits(model, mb, share_prefix=share)
        (logits.logsumexp(-1) * mb.completion_mask).sum().backward()
        results.append((logits.detach(), model.model.embed_tokens.weight.grad.clone(),
                        model.model.layers[1].mlp.down_proj.weight.grad.clone()))
    (plain, *plain_grads), (shared, *shared_grads) = results
    mask = mb.completion_mask.bool()
    assert torch.allclose(plain[mask], shared[mask], atol=1e-5)
    for a, b in zip(plain_grads, shared_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_shared_prefix_length_leaves_every_prompt_a_token():
    from aha.utils.sequences import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3], [1, 2, 4, 5]], minimum=1) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]], minimum=1) == 1
    assert shared_prefix_length([[1, 2, 3]], minimum=1) == 0
    assert shared_prefix_length([[5, 2], [1, 2]], minimum=1) == 0
    assert shared_prefix_length([[1] * 9 + [2], [1] * 9 + [3]]) == 9
    assert shared_prefix_length([[1] * 5 + [2], [1] * 5 + [3]]) == 0  # under the minimum: not worth a pass


@pytest.mark.parametrize("system_prompt", [False, True])
def test_prompts_computed_once_per_pass_give_the_per_micro_batch_gradients(system_prompt):
    from aha.trainer.forward import PromptPass
    from aha.utils.sequences import MIN_SHARED_PREFIX

    model, _ = load_model("tiny:qwen2", seed=2)
    g = torch.Generator().manual_seed(1)
    system = torch.randint(3, 90, (MIN_SHARED_PREFIX + 3,), generator=g).tolist() if system_prompt else []
    prompts = [system + torch.randint(3, 90, (n,), generator=g).tolist() for n in (4, 2, 7)]
    rows = [p for p in prompts for _ in range(3)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (2, 5, 1, 4, 6, 3, 1, 1, 5)]
    batch = build_train_batch(rows, completions, torch.zeros(9), pad_id=2, group_size=3)
    micro = [batch.select(torch.tensor(r)) for r in ([0, 1], [2, 3, 4], [5, 6], [7, 8])]  # groups split over them

    def loss(logits, mb):
        return (logits.logsumexp(-1) * mb.completion_mask).sum()

    model.zero_grad()
    plain_logits = []
    for mb in micro:
        logits = completion_logits(model, mb, share_prefix=True)
        loss(logits, mb).backward()
        plain_logits.append(logits.detach())
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    forwards = []
    hook = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    once = PromptPass(model, batch, [0, 1, 2])
    for mb, expected in zip(micro, plain_logits):
        logits = once.completion_logits(mb)
        assert torch.allclose(logits[mb.completion_mask.bool()], expected[mb.completion_mask.bool()], atol=1e-5)
        loss(logits, mb).backward()
    once.backward()
    hook.remove()
    prompt_forwards = 2 if system_prompt else 1  # the system prompt, then the rest of each prompt
    assert len(forwards) == prompt_forwards + len(micro)  # not again for the prompts' backward
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, plain[name], atol=1e-5), name


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_recomputes_the_layers_of_a_policy_in_evaluation_mode(lora):
    """A loaded model is in evaluation mode (no dropout: the training forward computes what sampling did), where
    transformers checkpoints no layer; the trainers' forward turns the checkpointed layers on for its own pass:
    each layer runs again in the backward pass, with the gradients of the plain pass, and is left as it was."""
    from aha.models import apply_lora
    from aha.models.checkpointing import enable_checkpointing

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (7, 4)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (3, 5, 2, 6)]
    batch = build_train_batch([p for p in prompts for _ in range(2)], completions, torch.zeros(4), pad_id=2,
                              group_size=2)
    results = []
    for checkpointing in (False, True):
        model, _ = load_model("tiny:llama", seed=1)
        assert not model.training  # as from_pretrained leaves it
        if checkpointing:
            enable_checkpointing(model)
        if lora:
            torch.manual_seed(0)
            model = apply_lora(model, rank=4, alpha=8)
        layers = model.get_base_model().model.layers if lora else model.model.layers
        calls, mlp = [], layers[0].mlp
        plain_forward = mlp.forward

        def counted(*args, **kwargs):  # (the recomputation runs no module hooks: the call itself is counted)
            calls.append(1)
            return plain_forward(*args, **kwargs)

        mlp.forward = counted
        modes = [m.training for m in model.modules()]
        logits = completion_logits(model, batch, share_prefix=False)
        forwards = len(calls)
        (logits.logsumexp(-1) * batch.completion_mask).sum().backward()
        mlp.forward = plain_forward
        assert (forwards, len(calls)) == ((1, 2) if checkpointing else (1, 1))  # again in the backward
        assert [m.training for m in model.modules()] == modes and not layers[0].training
        results.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = results
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, atol=1e-6), name
