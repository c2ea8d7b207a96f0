"""The vLLM backend against a stand-in ``vllm`` (tests/rollout/fake_vllm.py) that generates with a tiny random
model on the CPU; one GPU test runs the real vLLM when it is installed and a model folder is named."""

import copy
import importlib.util
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aha.models import apply_lora, cache_dir, load_model, save_hf_folder
from aha.rollout import HFBackend, SamplingParams
from aha.rollout import vllm as vllm_backend
from aha.rollout.vllm import VLLMBackend, VLLMUnavailableError
from tests.rollout import fake_vllm


@pytest.fixture
def fake(monkeypatch):
    """``import vllm`` gives the stand-in, and the CUDA check passes."""
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(vllm_backend, "_cuda_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the backend sets it; restored after the test
    monkeypatch.setattr(fake_vllm.LLM, "finish_reason_override", None)
    return fake_vllm


def policy():
    return load_model("tiny:qwen2", seed=3)


def encode(tokenizer, texts):
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def engine_calls(backend):
    return [name for name, _ in backend.llm.calls]


def pushes(backend):
    return engine_calls(backend).count("apply_model")


def engine_holds(backend, model) -> bool:
    """Whether the engine's copy of the weights is the policy's."""
    engine = dict(backend.llm.hf_model.named_parameters())
    return all(torch.equal(engine[name], param) for name, param in model.named_parameters())


def requests_of_last_generate(backend):
    return next(detail for name, detail in reversed(backend.llm.calls) if name == "generate")


def test_without_vllm_the_module_imports_and_the_backend_says_what_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as where it is not installed
    spec = importlib.util.spec_from_file_location("aha_rollout_vllm_alone", vllm_backend.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing the module does not need vllm
    model, tokenizer = policy()
    with pytest.raises(module.VLLMUnavailableError) as caught:
        module.VLLMBackend(model, tokenizer)
    message = str(caught.value)
    assert "CUDA GPU" in message and "pip install 'aha[vllm]'" in message and ">=0.10.2,<0.34" in message
    assert isinstance(caught.value, RuntimeError)


def test_without_cuda_the_backend_refuses_to_start(fake, monkeypatch):
    monkeypatch.setattr(vllm_backend, "_cuda_available", lambda: False)
    model, tokenizer = policy()
    with pytest.raises(VLLMUnavailableError, match="no CUDA device"):
        VLLMBackend(model, tokenizer)


def test_a_vllm_older_than_0_10_2_is_refused(fake, monkeypatch):
    monkeypatch.setattr(fake_vllm, "__version__", "0.10.1")
    model, tokenizer = policy()
    with pytest.raises(VLLMUnavailableError, match="vLLM 0.10.1 is installed"):
        VLLMBackend(model, tokenizer)


def test_greedy_completions_match_the_hf_backend_up_to_the_end_token(fake):
    model, tokenizer = policy()
    engine, hf = VLLMBackend(model, tokenizer), HFBackend(model, tokenizer)
    prompts = encode(tokenizer, ["3 + 4 =", "a longer prompt 9 - 8 =", "7"])
    params = SamplingParams(max_new_tokens=12, temperature=0.0, logprobs=True)
    free = hf.generate(prompts, params)
    ending = free[1].token_ids[4]  # made an end token: the second prompt stops at it, the others run on
    hf.eos_ids = hf.eos_ids | {ending}
    engine.eos_ids = sorted(set(engine.eos_ids) | {ending})
    a, b = engine.generate(prompts, params, num_samples=2), hf.generate(prompts, params, num_samples=2)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    assert a[2].finish_reason == "stop" and a[2].token_ids[-1] == ending  # the end token is kept
    assert {g.finish_reason for g in a} == {"stop", "length"}
    for x, y in zip(a, b):
        assert len(x.logprobs) == len(x.token_ids)
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)


def test_one_request_per_completion_with_its_own_seed_laid_out_prompt_after_prompt(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer, sleep=False)
    prompts = encode(tokenizer, ["3 + 4 =", "x y z"])
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    seeds = [11, 12, 13, 21, 22, 23]
    together = engine.generate(prompts, params, num_samples=3, seeds=seeds)
    requests = requests_of_last_generate(engine)
    assert [ids for ids, _ in requests] == [prompts[0]] * 3 + [prompts[1]] * 3
    assert [sp.seed for _, sp in requests] == seeds and {sp.n for _, sp in requests} == {1}
    assert len({tuple(g.token_ids) for g in together}) > 3  # the seeds differ, so do the samples
    alone = engine.generate([prompts[1], prompts[0]], params, seeds=[22, 13])  # other batch, other order
    assert [g.token_ids for g in alone] == [together[4].token_ids, together[2].token_ids]
    engine.generate(prompts, params, num_samples=2)
    assert [sp.seed for _, sp in requests_of_last_generate(engine)] == [None] * 4
    with pytest.raises(ValueError, match="5 seeds"):
        engine.generate(prompts, params, num_samples=3, seeds=seeds[:5])


def test_sampling_and_engine_settings_reach_vllm_one_to_one(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer, gpu_memory_utilization=0.5, max_model_len=256, seed=7,
                         enforce_eager=True)
    args = engine.llm.engine_args
    assert args["logprobs_mode"] == "processed_logprobs" and args["enable_sleep_mode"] is True
    assert (args["dtype"], args["seed"], args["gpu_memory_utilization"], args["max_model_len"],
            args["enforce_eager"]) == ("float32", 7, 0.5, 256, True)
    assert "distributed_executor_backend" not in args  # one process: vLLM's own single-GPU executor
    assert engine.llm.multiprocessing_env == "0"  # the engine was built in this process
    prompts = encode(tokenizer, ["5 + 5 ="])
    params = SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.9, stop=("ab", "\n"), logprobs=True)
    [generation] = engine.generate(prompts, params, seeds=[5])
    [(_, sp)] = requests_of_last_generate(engine)
    assert (sp.n, sp.max_tokens, sp.temperature, sp.top_p, sp.top_k, sp.seed) == (1, 7, 0.7, 0.9, 0, 5)
    assert (sp.stop, sp.include_stop_str_in_output, sp.logprobs, sp.skip_special_tokens) == (["ab", "\n"], True, 0,
                                                                                             True)
    assert sp.stop_token_ids == [tokenizer.eos_token_id]
    assert len(generation.logprobs) == len(generation.token_ids)
    [plain] = engine.generate(prompts, SamplingParams(max_new_tokens=3, temperature=0.0))
    [(_, sp)] = requests_of_last_generate(engine)
    assert (sp.logprobs, sp.temperature, sp.seed) == (None, 0.0, None) and plain.logprobs is None
    assert VLLMBackend(model, tokenizer, dtype="bfloat16").llm.engine_args["dtype"] == "bfloat16"


def test_a_stop_string_ends_the_completion_and_the_prefill_leads_its_text(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer, sleep=False)
    prompts = encode(tokenizer, ["x y z", "22 - 3 ="])
    free = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=1.0), seeds=[5, 6])
    assert [g.finish_reason for g in free] == ["length", "length"] and {len(g.token_ids) for g in free} == {12}
    stop = tokenizer.decode(free[0].token_ids[3:5])  # a string the first completion writes by its 5th token
    params = SamplingParams(max_new_tokens=12, temperature=1.0, stop=(stop,))
    cut = engine.generate(prompts, params, prefill="<think>", seeds=[5, 6])
    first = cut[0]
    assert first.finish_reason == "stop" and len(first.token_ids) <= 5 and stop in first.text
    assert first.token_ids == free[0].token_ids[: len(first.token_ids)]  # the same draws, up to the stop
    for g in cut:
        assert g.text == "<think>" + tokenizer.decode(g.token_ids, skip_special_tokens=True)


def policy_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) of each completion token, computed by the policy itself."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()  # [seq, vocab]
    steps = logits[len(prompt) - 1: len(prompt) + len(completion) - 1] / temperature  # [completion, vocab]
    return torch.log_softmax(steps, -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)


def test_logprobs_are_the_temperature_scaled_ones_and_top_p_raises_them_by_at_most_minus_log_top_p(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer, sleep=False)
    prompts = encode(tokenizer, ["3 + 4 =", "x y z"])
    temperature = 0.7
    gens = engine.generate(prompts, SamplingParams(10, temperature=temperature, logprobs=True), num_samples=2,
                           seeds=[1, 2, 3, 4])
    for prompt, g in zip([p for p in prompts for _ in range(2)], gens):
        ours = policy_logprobs(model, prompt, g.token_ids, temperature)
        assert torch.allclose(torch.tensor(g.logprobs), ours, atol=1e-4)  # top-p 1: exactly the project's
    top_p = 0.8
    gens = engine.generate(prompts, SamplingParams(10, temperature=temperature, top_p=top_p, logprobs=True),
                           seeds=[1, 2])
    gaps = torch.cat([torch.tensor(g.logprobs) - policy_logprobs(model, p, g.token_ids, temperature)
                      for p, g in zip(prompts, gens)])
    # renormalised over the nucleus N: higher by -log P(N), and P(N) >= top_p
    assert bool((gaps >= -1e-5).all()) and bool((gaps <= -math.log(top_p) + 1e-5).all()) and float(gaps.max()) > 0


def test_a_completion_vllm_did_not_finish_is_an_error(fake, monkeypatch):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer)
    monkeypatch.setattr(fake_vllm.LLM, "finish_reason_override", "abort")
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        engine.generate(encode(tokenizer, ["7"]), SamplingParams(max_new_tokens=3))
    assert engine_calls(engine)[-1] == "sleep"  # asleep again all the same


def test_after_sync_weights_the_next_generation_pushes_the_new_weights_once(fake):
    model, tokenizer = policy()
    engine, hf = VLLMBackend(model, tokenizer), HFBackend(model, tokenizer)
    prompts = encode(tokenizer, ["3 + 4 =", "a longer prompt 9 - 8 ="])
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    before = engine.generate(prompts, params)
    assert pushes(engine) == 1 and engine_holds(engine, model)  # the first generation pushes the policy as it is
    with torch.no_grad(), torch.random.fork_rng():  # an optimiser step
        torch.manual_seed(0)
        for param in model.parameters():
            param.add_(0.5 * torch.randn_like(param))
    unsynced = engine.generate(prompts, params)
    assert pushes(engine) == 1 and not engine_holds(engine, model)
    assert [g.token_ids for g in unsynced] == [g.token_ids for g in before]  # still the old weights
    engine.sync_weights()
    engine.sync_weights()
    synced = engine.generate(prompts, params)
    assert pushes(engine) == 2 and engine_holds(engine, model)  # one push for two syncs
    assert [g.token_ids for g in synced] == [g.token_ids for g in hf.generate(prompts, params)]
    assert [g.token_ids for g in synced] != [g.token_ids for g in before]
    engine.generate(prompts, params)
    assert pushes(engine) == 2


def test_a_lora_policy_is_pushed_with_its_adapters_merged_and_is_left_untouched(fake):
    model, tokenizer = policy()
    lora = apply_lora(model, rank=4, alpha=8)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # trained adapters (lora_B starts at zero)
    kept = {name: param.clone() for name, param in lora.named_parameters()}
    engine = VLLMBackend(lora, tokenizer, sleep=False)
    prompts = encode(tokenizer, ["3 + 4 =", "7"])
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    gens = engine.generate(prompts, params)
    merged = copy.deepcopy(lora).merge_and_unload()
    pushed = dict(engine.llm.calls)["apply_model"]
    assert pushed == sorted(name for name, _ in merged.named_parameters())  # plain checkpoint names only
    engine_weights = dict(engine.llm.hf_model.named_parameters())
    for name, param in merged.named_parameters():
        assert torch.allclose(engine_weights[name], param, atol=1e-6), name
    assert all(torch.equal(kept[name], param) for name, param in lora.named_parameters())
    assert [g.token_ids for g in gens] == [g.token_ids for g in HFBackend(lora, tokenizer).generate(prompts, params)]


def test_the_engine_sleeps_between_generations_and_wakes_its_weights_before_taking_new_ones(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer)
    assert engine.llm.engine_args["enable_sleep_mode"] and engine.llm.calls == [("sleep", 1)]
    prompts = encode(tokenizer, ["7"])
    engine.llm.calls.clear()
    engine.generate(prompts, SamplingParams(max_new_tokens=3))
    assert engine_calls(engine) == ["wake_up", "apply_model", "wake_up", "reset_prefix_cache", "generate", "sleep"]
    assert [detail for name, detail in engine.llm.calls if name in ("wake_up", "sleep")] == [["weights"],
                                                                                            ["kv_cache"], 1]
    engine.llm.calls.clear()
    engine.generate(prompts, SamplingParams(max_new_tokens=3))
    assert engine_calls(engine) == ["wake_up", "wake_up", "generate", "sleep"]  # nothing new to push
    assert engine.generate(prompts, SamplingParams(max_new_tokens=3), num_samples=0) == []


def test_without_sleep_the_engine_stays_awake(fake):
    model, tokenizer = policy()
    engine = VLLMBackend(model, tokenizer, sleep=False)
    assert not engine.llm.engine_args["enable_sleep_mode"] and engine.llm.calls == []
    engine.generate(encode(tokenizer, ["7"]), SamplingParams(max_new_tokens=3))
    assert engine_calls(engine) == ["apply_model", "reset_prefix_cache", "generate"]


def test_the_engine_is_built_from_the_policys_folder_or_else_from_a_saved_copy(fake, tmp_path):
    model, tokenizer = policy()  # a random model: no folder of its own
    engine = VLLMBackend(model, tokenizer, sleep=False)
    copied = Path(engine.llm.engine_args["model"])
    assert (copied / "config.json").is_file() and copied.parent == cache_dir() / "vllm"
    del engine
    assert not copied.exists()  # the copy lives as long as its backend
    save_hf_folder(model, tokenizer, tmp_path / "policy")
    loaded, loaded_tokenizer = load_model(str(tmp_path / "policy"))
    engine = VLLMBackend(loaded, loaded_tokenizer, sleep=False)
    assert engine.llm.engine_args["model"] == str(tmp_path / "policy")


def test_starting_the_engine_leaves_the_trainers_random_streams_alone(fake):
    model, tokenizer = policy()

    def seed_and_draw(between=lambda: None):
        torch.manual_seed(123), random.seed(123), np.random.seed(123)
        between()
        return torch.rand(3), random.random(), float(np.random.rand())

    expected = seed_and_draw()
    drawn = seed_and_draw(lambda: VLLMBackend(model, tokenizer))  # the engine seeds the globals as it starts
    assert torch.equal(drawn[0], expected[0]) and drawn[1:] == expected[1:]


@pytest.mark.gpu
def test_real_vllm_decodes_greedily_as_the_hf_backend_and_follows_a_weight_change():
    """On a GPU with vLLM installed and AHA_VLLM_TEST_MODEL naming a small model folder (e.g. SmolLM2-135M)."""
    path = os.environ.get("AHA_VLLM_TEST_MODEL")
    if not path:
        pytest.skip("AHA_VLLM_TEST_MODEL is not set")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("vllm")
    model, tokenizer = load_model(path, dtype="float32", device="cuda")
    engine = VLLMBackend(model, tokenizer, gpu_memory_utilization=0.3, max_model_len=512, enforce_eager=True)
    hf = HFBackend(model, tokenizer)
    prompts = encode(tokenizer, ["The capital of France is", "1 + 1 =", "def fibonacci(n):"])
    params = SamplingParams(max_new_tokens=16, temperature=0.0, logprobs=True)

    def agree():
        a, b = engine.generate(prompts, params), hf.generate(prompts, params)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        gaps = torch.cat([torch.tensor(x.logprobs) - torch.tensor(y.logprobs) for x, y in zip(a, b)]).abs()
        assert float(gaps.max()) < 2e-2, gaps
        return [g.token_ids for g in a]

    before = agree()
    with torch.no_grad(), torch.random.fork_rng(devices=[torch.cuda.current_device()]):
        torch.manual_seed(0)
        for param in model.parameters():
            param.add_(0.3 * param.std() * torch.randn_like(param))
    engine.sync_weights()
    assert agree() != before


def test_grpo_with_rollout_engine_vllm_samples_from_the_engine_and_measures_the_mismatch(fake, tmp_path):
    from aha.config import GRPOConfig, load_config
    from aha.trainer import GRPOTrainer
    from tests.trainer.helpers import tiny_overrides, tiny_task

    config = load_config(GRPOConfig, None, tiny_overrides(tmp_path, rollout_engine="vllm", engine_ratio_cap=2.0,
                                                          max_steps=3, rewards="{last_char_code: 1.0}"))
    trainer = GRPOTrainer.from_config(config, task=tiny_task())
    assert isinstance(trainer.backend, VLLMBackend)
    trainer.fit()
    metrics = [line for line in trainer.logs.metrics.read()]
    assert len(metrics) == 3
    # the engine computes in float32 as the trainer does: no mismatch, the correction weights are 1
    for m in metrics:
        assert m["engine_kl"] == pytest.approx(0.0, abs=1e-5) and m["engine_ratio"] == pytest.approx(1.0, abs=1e-4)
        assert m["engine_capped"] == 0.0
    assert pushes(trainer.backend) == 3  # one push per step: each step's rollouts come from the updated policy
    assert engine_holds(trainer.backend, trainer.model) is False  # the last update is pushed at the next generate
    trainer.backend.generate([[5, 6, 7]], SamplingParams(max_new_tokens=2, temperature=0.0))
    assert engine_holds(trainer.backend, trainer.model)


def test_rollout_engine_vllm_without_vllm_is_a_config_error(monkeypatch, tmp_path):
    from aha.config import GRPOConfig, load_config
    from aha.config.loading import ConfigError
    from aha.trainer import GRPOTrainer
    from tests.trainer.helpers import tiny_overrides, tiny_task

    monkeypatch.setitem(sys.modules, "vllm", None)
    config = load_config(GRPOConfig, None, tiny_overrides(tmp_path, rollout_engine="vllm"))
    with pytest.raises(ConfigError, match="rollout_engine: the vLLM backend needs a CUDA GPU"):
        GRPOTrainer.from_config(config, task=tiny_task())
