"""The project's fast paths (the decode loop, prompts computed once for their samples and micro-batches, the system
prompt computed once) give what the plain computation gives on model families whose attention or cache differs
from Llama's: sliding-window attention (a window counts columns, padding included), multi-head latent attention
(keys wider than values) and hybrid models whose cache holds convolution state beside keys and values."""

import pytest
import torch
import transformers

from aha.data.conversations import SFTExample
from aha.models import char_tokenizer, load_model, reusable_cache
from aha.rollout import HFBackend, SamplingParams
from aha.trainer.forward import PromptPass, completion_logits
from aha.trainer.sft import pad_examples, response_logprobs
from aha.types import build_train_batch
from aha.utils.sequences import MIN_SHARED_PREFIX

FAMILIES = {
    # a window of 8 columns: far shorter than the prompts below, so whatever the window sees matters
    "qwen2-sliding-window": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}),
    "gemma3-local-and-global": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 8}),
    "deepseek-v3-latent-attention": ("DeepseekV3Config", {
        "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
        "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}),
    "lfm2-convolution-hybrid": ("Lfm2Config", {"layer_types": ["conv", "full_attention"]}),
}
SYSTEM = "You add numbers and say the sum. "  # longer than MIN_SHARED_PREFIX tokens and than the window


def family(name, tmp_path):
    """A tiny randomly initialised model of the family, saved and loaded as a user's folder would be."""
    tokenizer = char_tokenizer()
    config_class, extra = FAMILIES[name]
    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, config_class)(**{**sizes, **extra})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path / name)
    tokenizer.save_pretrained(tmp_path / name)
    return load_model(str(tmp_path / name), device="cpu")


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decode_loop_samples_what_each_prompt_alone_generates(name, tmp_path):
    model, tokenizer = family(name, tmp_path)
    prompts = tokenizer([SYSTEM + q for q in ["3 + 4 =", "and now a longer one: 9 - 8 + 1 =", "7"]],
                        add_special_tokens=False)["input_ids"]
    loop = HFBackend(model, tokenizer, batch_size=16)
    greedy = loop.generate(prompts, SamplingParams(12, temperature=0.0), num_samples=2)
    for i, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        expected = alone[0, len(prompt):].tolist()
        assert greedy[2 * i].token_ids == expected[: len(greedy[2 * i].token_ids)] == greedy[2 * i + 1].token_ids
    sampled = SamplingParams(12, temperature=1.0, logprobs=True)
    a = loop.generate(prompts, sampled, num_samples=3, seeds=list(range(9)))
    b = HFBackend(model, tokenizer, batch_size=16, decode_loop=False).generate(prompts, sampled, num_samples=3,
                                                                                seeds=list(range(9)))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


@pytest.mark.parametrize("name", FAMILIES)
def test_prompts_run_once_for_their_rows_give_the_plain_values_and_gradients(name, tmp_path):
    model, tokenizer = family(name, tmp_path)
    g = torch.Generator().manual_seed(1)
    system = tokenizer(SYSTEM, add_special_tokens=False)["input_ids"]
    assert len(system) >= MIN_SHARED_PREFIX
    prompts = [system + torch.randint(3, 90, (n,), generator=g).tolist() for n in (4, 2, 7)]
    rows = [p for p in prompts for _ in range(3)]
    completions = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (2, 5, 1, 4, 6, 3, 1, 1, 5)]
    batch = build_train_batch(rows, completions, torch.zeros(9), pad_id=tokenizer.pad_token_id, group_size=3)
    micro = [batch.select(torch.tensor(r)) for r in ([0, 1], [2, 3, 4], [5, 6], [7, 8])]

    def run(logits_of):
        model.zero_grad(set_to_none=True)
        values = []
        for mb in micro:
            logits = logits_of(mb)
            (logits.logsumexp(-1) * mb.completion_mask).sum().backward()
            values.append(logits.detach()[mb.completion_mask.bool()])
        return values, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_values, plain_grads = run(lambda mb: completion_logits(model, mb, share_prefix=False))
    runs = [run(lambda mb: completion_logits(model, mb, share_prefix=True))]
    assert reusable_cache(model) == (name != "lfm2-convolution-hybrid")
    if reusable_cache(model):  # what the trainer then uses: every prompt once per pass
        prompt_pass = []

        def once(mb):
            if not prompt_pass:
                prompt_pass.append(PromptPass(model, batch, [0, 1, 2]))
            return prompt_pass[0].completion_logits(mb)

        values, _ = run(once)
        prompt_pass[0].backward()
        runs.append((values, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    for values, grads in runs:
        for shared, plain in zip(values, plain_values):
            assert torch.allclose(shared, plain, atol=1e-5)
        assert grads.keys() == plain_grads.keys()
        for key, grad in plain_grads.items():
            assert torch.allclose(grads[key], grad, atol=1e-5 * max(1.0, float(grad.abs().max()))), key


@pytest.mark.parametrize("name", ["qwen2-sliding-window", "lfm2-convolution-hybrid"])
def test_sft_examples_sharing_a_system_prompt_score_as_each_alone(name, tmp_path):
    model, tokenizer = family(name, tmp_path)
    system = tokenizer(SYSTEM, add_special_tokens=False)["input_ids"]
    examples = [SFTExample(system + [5, 6, 7, 8, 9], [0] * len(system) + [0, 0, 1, 1, 1], "a"),
                SFTExample(system + [10, 11, 12], [0] * len(system) + [0, 1, 1], "b"),
                SFTExample(system + [13, 14, 15, 16], [0] * len(system) + [0, 0, 0, 1], "c")]
    together = response_logprobs(model, pad_examples(examples, tokenizer.pad_token_id))
    alone = torch.cat([response_logprobs(model, pad_examples([e], tokenizer.pad_token_id)) for e in examples])
    assert together.shape == alone.shape == (6,)
    assert torch.allclose(together, alone, atol=1e-5)
