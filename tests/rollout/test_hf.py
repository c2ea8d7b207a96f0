import torch

from aha.models import load_model
from aha.rollout import HFBackend, SamplingParams


def backend():
    model, tokenizer = load_model("tiny:qwen2", seed=3)
    return HFBackend(model, tokenizer, batch_size=8), tokenizer


def test_length_limit_and_finish_reasons():
    be, tok = backend()
    prompts = tok(["1 + 1 =", "22 - 3 ="], add_special_tokens=False)["input_ids"]
    gens = be.generate(prompts, SamplingParams(max_new_tokens=5, temperature=0.0))
    for g in gens:
        assert len(g.token_ids) <= 5
        ended = bool(g.token_ids) and g.token_ids[-1] == tok.eos_token_id
        assert g.finish_reason == ("stop" if ended else "length")


def test_shared_prefix_sampling_matches_independent_greedy_decoding():
    be, tok = backend()
    prompts = tok(["3 + 4 =", "a longer prompt 9 - 8 ="], add_special_tokens=False)["input_ids"]
    single = be.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    grouped = be.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0), num_samples=3)
    assert [g.token_ids for g in grouped] == [single[0].token_ids] * 3 + [single[1].token_ids] * 3


def test_prefill_is_part_of_the_text_and_sampling_is_seeded():
    be, tok = backend()
    prompts = tok(["5 + 5 ="], add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    a = be.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0), prefill="<think>", num_samples=4)
    torch.manual_seed(0)
    b = be.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0), prefill="<think>", num_samples=4)
    assert [g.text for g in a] == [g.text for g in b]
    assert all(g.text.startswith("<think>") for g in a)


def test_stop_strings_end_a_completion():
    be, tok = backend()
    prompts = tok(["x"], add_special_tokens=False)["input_ids"]
    torch.manual_seed(1)
    gens = be.generate(prompts, SamplingParams(max_new_tokens=40, temperature=1.5, stop=("a",)), num_samples=8)
    for g in gens:
        if "a" in g.text:
            assert g.text.endswith("a") and g.finish_reason == "stop"
            assert tok.decode(g.token_ids) == g.text  # no padding or end token after the stop string
