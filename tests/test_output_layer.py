"""The output layer and the log-softmax computed together a block of rows at a time (aha.models.output_layer):
the same log-probabilities, entropies and gradients as the model's logits through ``token_logprobs``, without
the micro-batch's [rows, completion, vocabulary] logits held for the backward pass."""

import pytest
import torch
import transformers

from aha.algorithms import token_logprobs, token_logprobs_and_entropy
from aha.models import char_tokenizer, load_model
from aha.models import output_layer as module
from aha.models.linear import AccumulatingLinear, accumulate_weight_gradients
from aha.models.output_layer import hidden_outputs, linear_token_logprobs, output_layer
from aha.trainer.forward import PromptPass, completion_logits, completion_logprobs
from aha.types import build_train_batch


def layer_and_inputs(vocab=23, width=6, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(width, vocab, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(vocab, width, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(vocab, generator=g))
    hidden = torch.randn(3, 5, width, generator=g)
    labels = torch.randint(0, vocab, (3, 5), generator=g)
    return layer, hidden, labels, torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)


def plain(layer, hidden, labels, temperature, w_logp, w_entropy):
    """The reference: logits in full through the layer, log_softmax by autograd."""
    logp = torch.log_softmax(layer(hidden).float() / temperature, -1)
    picked, entropy = logp.gather(-1, labels[..., None])[..., 0], -(logp.exp() * logp).sum(-1)
    ((picked * w_logp).sum() + (entropy * w_entropy).sum()).backward()
    return picked.detach(), entropy.detach()


@pytest.mark.parametrize("keep_bytes, block_bytes", [(1 << 30, 1 << 30), (0, 4 * 23 * 2), (0, 4 * 23 * 7), (0, 1)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("accumulating", [False, True])
def test_values_entropies_and_gradients_equal_the_plain_computation(monkeypatch, keep_bytes, block_bytes,
                                                                    temperature, accumulating):
    # logits kept whole, or computed again in blocks of 2, 7 and 1 rows of 23 words
    monkeypatch.setattr(module, "KEEP_BYTES", keep_bytes)
    monkeypatch.setattr(module, "BLOCK_BYTES", block_bytes)
    layer, hidden, labels, w_logp, w_entropy = layer_and_inputs()
    reference = torch.nn.Linear(6, 23)
    reference.load_state_dict(layer.state_dict())
    if accumulating:  # the trainers' layers add their weight gradient in place, into what is there already
        layer.__class__ = AccumulatingLinear
        layer.weight.grad = torch.ones_like(layer.weight)
        reference.weight.grad = torch.ones_like(reference.weight)
    mine_hidden, ref_hidden = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    logprobs, entropy = linear_token_logprobs(mine_hidden, layer, labels, temperature, entropy=True,
                                              entropy_grad=True)
    ((logprobs * w_logp).sum() + (entropy * w_entropy).sum()).backward()
    expected, expected_entropy = plain(reference, ref_hidden, labels, temperature, w_logp, w_entropy)
    torch.testing.assert_close(logprobs.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy.detach(), expected_entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine_hidden.grad, ref_hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-5)


def test_logprobs_alone_equal_token_logprobs_of_the_logits_and_entropy_is_detached_without_its_gradient():
    layer, hidden, labels, *_ = layer_and_inputs(bias=False)
    logits = layer(hidden)
    assert torch.equal(linear_token_logprobs(hidden, layer, labels, 0.6), token_logprobs(logits, labels, 0.6))
    logprobs, entropy = linear_token_logprobs(hidden, layer, labels, 0.6, entropy=True)
    expected, expected_entropy = token_logprobs_and_entropy(logits, labels, 0.6)
    assert torch.equal(logprobs, expected) and torch.equal(entropy, expected_entropy)
    assert logprobs.requires_grad and not entropy.requires_grad


@pytest.mark.parametrize("keep_bytes", [1 << 30, 0])
def test_a_second_backward_pass_is_refused_not_wrong(monkeypatch, keep_bytes):
    monkeypatch.setattr(module, "KEEP_BYTES", keep_bytes)  # kept logits become their gradient in the first
    layer, hidden, labels, *_ = layer_and_inputs()
    logprobs = linear_token_logprobs(hidden.requires_grad_(), layer, labels)
    logprobs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        logprobs.sum().backward()


def test_hand_computed_logprob_and_gradients():
    # one position, hidden h = [1, 0], weight rows [0, 0] and [ln 3, 0] -> logits [0, ln 3], p = [1/4, 3/4]
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0]]))
    hidden = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    logprob = linear_token_logprobs(hidden, layer, torch.tensor([[1]]))
    assert logprob.item() == pytest.approx(float(torch.log(torch.tensor(0.75))), abs=1e-6)
    logprob.sum().backward()
    # d log p_1 / d logits = onehot(1) - p = [-1/4, 1/4]; d / d W = that (x) h; d / d h = that @ W = [ln 3 / 4, 0]
    assert layer.weight.grad.flatten().tolist() == pytest.approx([-0.25, 0.0, 0.25, 0.0])
    assert hidden.grad.flatten().tolist() == pytest.approx([float(torch.log(torch.tensor(3.0))) / 4, 0.0])


def micro_batch():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (7, 4, 9)]
    rows = [p for p in prompts for _ in range(3)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (1, 5, 3, 6, 2, 6, 4, 1, 6)]
    batch = build_train_batch(rows, completions, torch.zeros(9), pad_id=2, group_size=3)
    return batch, batch.select(torch.tensor([0, 1, 2, 4, 5, 7, 8]))


@pytest.mark.parametrize("prompt_pass", [False, True])
def test_a_models_log_probs_and_gradients_through_the_fused_layer_equal_the_logits_path(monkeypatch, prompt_pass):
    monkeypatch.setattr(module, "KEEP_BYTES", 0)  # computed again in blocks of 3 rows in the backward
    model, _ = load_model("tiny:llama", seed=1)
    accumulate_weight_gradients(model)
    monkeypatch.setattr(module, "BLOCK_BYTES", 4 * model.config.vocab_size * 3)
    batch, mb = micro_batch()
    weights = torch.randn(mb.completion_mask.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for fuse in (False, True):
        model.zero_grad(set_to_none=True)
        prompts = PromptPass(model, batch, [0, 1, 2], fuse=fuse) if prompt_pass else None
        logprobs, entropy = completion_logprobs(model, mb, prompts=prompts, fuse=fuse, temperature=0.7,
                                                entropy=True, entropy_grad=True)
        ((logprobs + 0.1 * entropy) * weights * mb.completion_mask).sum().backward()
        if prompts is not None:
            prompts.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), entropy.detach(), grads))
    (logits_logprobs, logits_entropy, logits_grads), (fused_logprobs, fused_entropy, fused_grads) = results
    mask = mb.completion_mask.bool()
    torch.testing.assert_close(fused_logprobs[mask], logits_logprobs[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_entropy[mask], logits_entropy[mask], atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == logits_grads.keys()  # the output weight (tied to the embedding here) among them
    for name in logits_grads:
        torch.testing.assert_close(fused_grads[name], logits_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_no_tensor_of_the_micro_batchs_logits_is_held_for_the_backward_pass(monkeypatch):
    # what a long completion costs: every tensor of vocabulary width autograd saves, counted
    monkeypatch.setattr(module, "KEEP_BYTES", 0)
    model, _ = load_model("tiny:qwen2", seed=1)
    vocab = model.config.vocab_size
    assert vocab != model.config.hidden_size
    _, mb = micro_batch()
    monkeypatch.setattr(module, "BLOCK_BYTES", 4 * vocab * 2)

    def saved_logits(fuse: bool) -> int:
        sizes = [0]

        def pack(t):
            if t.dim() >= 2 and t.shape[-1] == vocab:
                sizes.append(t.numel())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logprobs = completion_logprobs(model, mb, share_prefix=False, fuse=fuse)
        logprobs.sum().backward()
        return sum(sizes)

    assert saved_logits(False) >= mb.size * mb.completion_width * vocab
    assert saved_logits(True) == 0


def family(config_class: str, tmp_path, **extra):
    """A tiny randomly initialised model of a transformers family, loaded from its folder as a user's would be."""
    tokenizer = char_tokenizer()
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path / config_class)
    tokenizer.save_pretrained(tmp_path / config_class)
    return load_model(str(tmp_path / config_class), device="cpu")[0]


def test_a_model_that_soft_caps_its_logits_keeps_the_logits_path(tmp_path):
    model = family("Gemma2Config", tmp_path, final_logit_softcapping=30.0)  # tanh(logits / 30) * 30
    assert output_layer(model) is None
    ids = torch.tensor([[3, 4, 5]])
    with hidden_outputs(model.get_output_embeddings()):  # what the fused path would take as the logits: not them
        hidden = model(input_ids=ids).logits
    assert not torch.allclose(model.get_output_embeddings()(hidden), model(input_ids=ids).logits)
    _, mb = micro_batch()
    fused, plain = (completion_logprobs(model, mb, share_prefix=False, fuse=fuse) for fuse in (True, False))
    assert torch.equal(fused, plain)
    assert torch.equal(plain, token_logprobs(completion_logits(model, mb, share_prefix=False), mb.completion_ids))


@pytest.mark.parametrize("config_class, extra", [
    ("LlamaConfig", {}),
    ("Gemma3TextConfig", {"final_logit_softcapping": None}),
    ("CohereConfig", {"logit_scale": 0.0625}),  # logits * 1/16 after the layer: the same as the layer of h / 16
    ("GraniteConfig", {"logits_scaling": 8.0}),  # logits / 8
])
def test_models_whose_logits_are_the_output_layers_product_take_the_fused_path(tmp_path, config_class, extra):
    model = family(config_class, tmp_path, **extra)
    assert output_layer(model) is model.get_output_embeddings()
    _, mb = micro_batch()
    results = []
    for fuse in (False, True):
        model.zero_grad(set_to_none=True)
        logprobs = completion_logprobs(model, mb, share_prefix=False, fuse=fuse, temperature=0.7)
        (logprobs * mb.completion_mask).sum().backward()
        results.append((logprobs.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone(),
                        model.get_output_embeddings().weight.grad.clone()))
    mask = mb.completion_mask.bool()
    (plain, *plain_grads), (fused, *fused_grads) = results
    torch.testing.assert_close(fused[mask], plain[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_probe_leaves_modes_and_the_random_state_as_they_were():
    model, _ = load_model("tiny:qwen2", seed=1)
    model.train()
    model.model.layers[0].eval()
    before = torch.random.get_rng_state()
    assert output_layer(model) is model.lm_head
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


def test_hidden_outputs_nest_and_restore_the_layer():
    model, _ = load_model("tiny:llama", seed=1)
    layer, ids = model.get_output_embeddings(), torch.tensor([[3, 4, 5]])
    logits = model(input_ids=ids).logits
    with hidden_outputs(layer):
        with hidden_outputs(layer):
            pass
        assert model(input_ids=ids).logits.shape[-1] == model.config.hidden_size  # still the hidden states
    assert torch.equal(model(input_ids=ids).logits, logits) and "forward" not in layer.__dict__
