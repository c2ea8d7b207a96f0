import pytest
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


def test_a_seeded_completion_does_not_depend_on_its_batch():
    be, tok = backend()
    prompts = tok(["3 + 4 =", "a longer prompt 9 - 8 =", "7"], add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9)
    seeds = list(range(100, 109))  # three prompts x three samples
    together = be.generate(prompts, params, num_samples=3, seeds=seeds)
    alone = [g for i in range(3) for g in be.generate(prompts[i:i + 1], params, num_samples=3,
                                                      seeds=seeds[3 * i: 3 * i + 3])]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert len({tuple(g.token_ids) for g in together}) > 3  # the seeds differ, so do the samples
    again = be.generate(prompts[::-1], params, num_samples=3, seeds=seeds[6:] + seeds[3:6] + seeds[:3])
    assert [g.token_ids for g in again] == [g.token_ids for g in together[6:] + together[3:6] + together[:3]]


def test_seeded_sampling_draws_from_the_temperature_and_top_p_distribution():
    from aha.rollout.hf import _SeededSampling

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -3.0]])
    temperature, top_p, draws = 0.8, 0.9, 20000
    probs = torch.softmax(logits[0] / temperature, dim=-1)  # [0.66, 0.19, 0.10, 0.05, 0.001]: nucleus = first 3
    order = probs.argsort(descending=True)
    kept = order[: int((probs[order].cumsum(0) < top_p).sum()) + 1]  # the nucleus: least mass >= top_p
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    sampler = _SeededSampling(list(range(draws)), temperature, top_p, torch.device("cpu"))
    scores = sampler(torch.zeros((draws, 1), dtype=torch.long), logits.expand(draws, -1))
    picked = scores.argmax(dim=-1)
    assert bool((scores.isfinite().sum(dim=-1) == 1).all())  # exactly one token left for argmax
    counts = torch.bincount(picked, minlength=5).float() / draws
    assert torch.allclose(counts, expected, atol=0.012), (counts, expected)
    assert counts[order[-1]] == 0  # outside the nucleus: never drawn
    same = _SeededSampling([7, 7], temperature, top_p, torch.device("cpu"))(torch.zeros((2, 1), dtype=torch.long),
                                                                            logits.expand(2, -1))
    assert int(same[0].argmax()) == int(same[1].argmax())


def loop_and_generate():
    model, tokenizer = load_model("tiny:qwen2", seed=3)
    return HFBackend(model, tokenizer, batch_size=16), HFBackend(model, tokenizer, batch_size=16, decode_loop=False)


def test_the_decode_loop_gives_generates_tokens_when_rows_end_at_different_steps():
    loop, plain = loop_and_generate()
    questions = ["3 + 4 =", "a longer prompt 9 - 8 =", "7", "x y z"]
    prompts = loop.tokenizer(questions, add_special_tokens=False)["input_ids"]
    free = plain.generate(prompts, SamplingParams(16, temperature=1.0), seeds=[1, 2, 3, 4])
    # end tokens met at different steps by different rows, so rows leave the loop's batch on the way
    loop.eos_ids = plain.eos_ids = plain.eos_ids | {free[0].token_ids[2], free[1].token_ids[6]}
    for params, samples in [(SamplingParams(16, temperature=0.0), 1), (SamplingParams(16, temperature=0.0), 3),
                            (SamplingParams(16, temperature=1.0), 1),
                            (SamplingParams(16, temperature=1.0, top_p=0.9, logprobs=True), 4)]:
        seeds = list(range(len(prompts) * samples))
        a = loop.generate(prompts, params, num_samples=samples, seeds=seeds)
        b = plain.generate(prompts, params, num_samples=samples, seeds=seeds)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
        assert [g.text for g in a] == [g.text for g in b]
        if params.temperature > 0:
            assert len({len(g.token_ids) for g in a}) > 2  # rows ended at different steps, some ran to the end
            assert {g.finish_reason for g in a} == {"stop", "length"}
        if params.logprobs:
            for x, y in zip(a, b):
                assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)


def test_the_decode_loop_stops_at_a_stop_string_as_generate_does():
    loop, plain = loop_and_generate()
    prompts = loop.tokenizer(["x y z", "22 - 3 ="], add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0)
    free = plain.generate(prompts, sampling, seeds=[5, 6])
    stop = loop.tokenizer.decode(free[0].token_ids[3:5])  # a string the first row writes by its 5th token
    end = next(i for i in range(12) if stop in loop.tokenizer.decode(free[0].token_ids[: i + 1]))
    params = SamplingParams(max_new_tokens=12, temperature=1.0, stop=(stop,))
    a, b = loop.generate(prompts, params, seeds=[5, 6]), plain.generate(prompts, params, seeds=[5, 6])
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert a[0].token_ids == free[0].token_ids[: end + 1] and a[0].finish_reason == "stop" and stop in a[0].text


def test_prompts_sharing_a_system_prompt_sample_as_when_computed_whole():
    from aha.utils.sequences import MIN_SHARED_PREFIX

    loop, plain = loop_and_generate()
    system = loop.tokenizer("You are a careful assistant. Think, then answer.", add_special_tokens=False)["input_ids"]
    assert len(system) >= MIN_SHARED_PREFIX
    questions = ["3 + 4 =", "a longer prompt 9 - 8 =", "7"]
    prompts = [system + ids for ids in loop.tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for params, samples in [(SamplingParams(10, temperature=0.0), 1),
                            (SamplingParams(10, temperature=1.0, logprobs=True), 3)]:
        seeds = list(range(len(prompts) * samples))
        a = loop.generate(prompts, params, num_samples=samples, seeds=seeds)  # the system prompt computed once
        b = plain.generate(prompts, params, num_samples=samples, seeds=seeds)  # each prompt computed whole
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        if params.logprobs:
            for x, y in zip(a, b):
                assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)


@pytest.mark.parametrize("trained", [False, True])
def test_packed_linears_compute_what_the_plain_layers_do_and_are_undone_after(trained, monkeypatch):
    import aha.models.linear
    from aha.models.linear import accumulate_weight_gradients
    from aha.rollout.hf import packed_linears

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(aha.models.linear, "_MKL_NATIVE", False)  # as on AMD's processors, whatever this one is
    model, _ = load_model("tiny:llama", seed=4)
    if trained:  # a training policy's layers (aha.trainer.core.build_policy) pack too
        assert accumulate_weight_gradients(model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with packed_linears(model):
            assert all("forward" in vars(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
            packed = model(input_ids=ids).logits
        assert not any("forward" in vars(m) for m in model.modules())  # the class's forward again
        again = model(input_ids=ids).logits
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, plain)
    # the packed copy is taken when the context starts: later weight changes are seen by the next generation
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
        with packed_linears(model):
            doubled = model(input_ids=ids).logits
        torch.testing.assert_close(doubled, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_packed_linears_under_autocast_compute_what_autocast_does(monkeypatch):
    """A model whose forward runs under torch.autocast (as a trainer with bf16=True leaves it) gets bfloat16
    activations; the packed float32 copies give way to the layers' own products, as autocast makes them."""
    import aha.models.linear
    from aha.rollout.hf import packed_linears

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(aha.models.linear, "_MKL_NATIVE", False)  # packed copies, as on AMD's processors
    model, _ = load_model("tiny:llama", seed=4)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids).logits
        with packed_linears(model):
            packed = model(input_ids=ids).logits
    assert plain.dtype == torch.bfloat16
    torch.testing.assert_close(packed, plain)


def test_on_intel_processors_decoding_keeps_the_plain_layers(monkeypatch):
    import aha.models.linear
    from aha.rollout.hf import packed_linears

    monkeypatch.setattr(aha.models.linear, "_MKL_NATIVE", True)
    model, _ = load_model("tiny:llama", seed=4)
    with packed_linears(model):
        assert not any("forward" in vars(m) for m in model.modules())  # MKL's products, as in training


def test_a_reserved_cache_decodes_as_the_growing_one_through_growth_row_selection_and_crop():
    from transformers import DynamicCache

    from aha.models import ReservedLayer, output_cache, reserve_cache

    model, _ = load_model("tiny:llama", seed=4)
    model.eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 90, (3, 6), generator=g)
    steps = torch.randint(3, 90, (3, 7), generator=g)  # 7 tokens fed one by one: past the reserved room of 2
    logits = []
    with torch.no_grad():
        for reserved in (False, True):
            cache = output_cache(model(input_ids=prompt, use_cache=True, past_key_values=DynamicCache()))
            if reserved:
                reserve_cache(cache, 2)
                assert all(type(layer) is ReservedLayer for layer in cache.layers)
            rows, out = torch.arange(3), []
            for t in range(steps.shape[1]):
                if t == 4:  # a row leaves the batch
                    rows = torch.tensor([0, 2])
                    cache.batch_select_indices(torch.tensor([0, 2]))
                step = model(input_ids=steps[rows, t : t + 1], use_cache=True, past_key_values=cache)
                cache = output_cache(step)
                out.append(step.logits[:, -1])
            cache.crop(-3)
            assert cache.get_seq_length() == 6 + 7 - 3
            out.append(model(input_ids=steps[rows, :1], use_cache=True, past_key_values=cache).logits[:, -1])
            logits.append(out)
    for plain, mine in zip(*logits):
        assert torch.allclose(plain, mine, atol=1e-5)


def test_shared_prefix_attention_is_attention_over_the_group_prompt_and_the_row_tokens():
    from transformers.cache_utils import DynamicCache

    from aha.models.attention import SharedPrefix

    g = torch.Generator().manual_seed(0)
    groups, kv, heads, width, own, dim = 3, 2, 6, 5, 4, 8
    cache = DynamicCache()
    prefix_keys = [torch.randn(groups, kv, width, dim, generator=g) for _ in range(2)]
    prefix_values = [torch.randn(groups, kv, width, dim, generator=g) for _ in range(2)]
    for layer in range(2):
        cache.update(prefix_keys[layer], prefix_values[layer], layer)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])  # left padding; group 2: no prefix
    row_group = torch.tensor([0, 0, 1, 2, 1, 0, 2])
    shared = SharedPrefix(cache, mask, row_group)
    rows = len(row_group)
    query = torch.randn(rows, heads, 1, dim, generator=g)
    key, value = torch.randn(rows, kv, own, dim, generator=g), torch.randn(rows, kv, own, dim, generator=g)

    def reference(layer, keep):  # softmax over [the group's unpadded prompt, the row's own tokens], head by head
        out = torch.empty(len(keep), 1, heads, dim)
        for i, row in enumerate(keep.tolist()):
            grp = int(row_group[row])
            for h in range(heads):
                j = h // (heads // kv)  # the key/value head of query head h
                k = torch.cat([prefix_keys[layer][grp, j][mask[grp].bool()], key[row, j]])
                v = torch.cat([prefix_values[layer][grp, j][mask[grp].bool()], value[row, j]])
                out[i, 0, h] = torch.softmax(k @ query[row, h, 0] / dim**0.5, dim=0) @ v
        return out

    everyone = torch.arange(rows)
    for layer in range(2):
        assert torch.allclose(shared.attend(layer, query, key, value, None), reference(layer, everyone), atol=1e-5)
    keep = torch.tensor([6, 1, 2])  # the batch compacted: group 1 keeps one row; group 0 one; group 2 one
    shared.select(keep)
    got = shared.attend(1, query[keep], key[keep], value[keep], None)
    assert torch.allclose(got, reference(1, keep), atol=1e-5)
    shared.select(torch.tensor([1]))  # only a row of group 0 left: the other groups' prompts are dropped
    assert len(shared.keys[0]) == 1
    assert torch.allclose(shared.attend(0, query[[1]], key[[1]], value[[1]], None), reference(0, torch.tensor([1])),
                          atol=1e-5)


def test_the_samples_of_a_prompt_read_its_cache_once_and_decode_as_with_a_copy_each(monkeypatch):
    from aha.models.attention import SharedPrefix

    loop, _ = loop_and_generate()
    questions = ["3 + 4 =", "a longer prompt 9 - 8 =", "7", "x y z"]  # "7": no prompt before its last token
    prompts = loop.tokenizer(questions, add_special_tokens=False)["input_ids"]
    params = SamplingParams(16, temperature=1.0, logprobs=True)
    seeds = list(range(4 * 4))
    free = loop.generate(prompts, SamplingParams(16, temperature=1.0), seeds=[1, 2, 3, 4])
    loop.eos_ids = loop.eos_ids | {free[0].token_ids[2], free[1].token_ids[6]}  # rows end on the way
    calls = []
    attend = SharedPrefix.attend
    monkeypatch.setattr(SharedPrefix, "attend", lambda self, *args: calls.append(len(self.row_group))
                        or attend(self, *args))
    shared = loop.generate(prompts, params, num_samples=4, seeds=seeds)
    assert calls and calls[0] == 16 and min(calls) < 16  # used, and followed the batch as rows left it
    monkeypatch.setattr(SharedPrefix, "supports", staticmethod(lambda model, cache: False))
    copies = loop.generate(prompts, params, num_samples=4, seeds=seeds)  # the prompt's cache copied per sample
    assert [g.token_ids for g in shared] == [g.token_ids for g in copies]
    assert {g.finish_reason for g in shared} == {"stop", "length"}
    for x, y in zip(shared, copies):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)
