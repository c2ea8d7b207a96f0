"""Supervised fine-tuning on the run core: the loss falls on a memorisable set, only response tokens carry
it, packing is the same loss as padding, runs resume exactly, bad rows stop before a model loads."""

import json

import pytest
import torch

import aha.models
from aha.cli import main
from aha.config import SFTConfig, load_config
from aha.data.conversations import SFTExample
from aha.models import load_model
from aha.trainer.sft import SFTTrainer, pack_examples, pad_examples, response_logprobs
from tests.trainer.helpers import fit_until_crash


def write_rows(path, n: int = 24):
    rows = [{"question": f"{i} + {i} =", "response": f"<think>{i}+{i}</think> <answer>{2 * i}</answer>"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(tmp_path, **extra) -> SFTTrainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_rows(tmp_path / "data.jsonl")
    settings = {"model": "tiny:qwen2", "dataset": str(data), "field_map": "{prompt: question, completion: response}",
                "output_dir": str(tmp_path / "run"), "batch_size": 8, "micro_batch_size": 3, "learning_rate": 3e-3,
                "num_epochs": 2, "save_steps": 0, "prompt_template": "chat", "warmup_steps": 1}
    settings.update(extra)
    config = load_config(SFTConfig, overrides=[f"{k}={v}" for k, v in settings.items()])
    return SFTTrainer.from_config(config)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_loss_falls_on_a_memorisable_set_and_the_run_directory_is_complete(tmp_path):
    trainer = make(tmp_path, num_epochs=12)
    summary = trainer.fit()
    losses = [m["loss"] for m in read(trainer.layout.metrics)]
    assert len(losses) == 12 * 3  # 23 training rows (one held out) in batches of 8: 3 steps an epoch
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert summary["after"]["loss"] < summary["before"]["loss"]
    assert summary["data"]["train_examples"] == 23 and summary["data"]["heldout_examples"] == 1
    evals = read(trainer.layout.evals)
    assert [e["label"] for e in evals] == ["before", "after"]
    from transformers import AutoModelForCausalLM

    final = trainer.layout.latest_checkpoint() / "model"
    assert AutoModelForCausalLM.from_pretrained(final) is not None  # a plain HF folder


def test_response_logprobs_match_a_plain_per_example_computation():
    model, tok = load_model("tiny:llama", seed=1)
    examples = [SFTExample([5, 6, 7, 8, 9], [0, 0, 1, 1, 1], "a"), SFTExample([10, 11, 12], [0, 1, 0], "b"),
                SFTExample([13, 14, 15, 16], [0, 0, 0, 1], "c")]
    expected = []
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.input_ids])).logits[0]
            logp = torch.log_softmax(logits, dim=-1)
            expected += [float(logp[t - 1, e.input_ids[t]]) for t in range(len(e)) if e.loss_mask[t]]
        padded = response_logprobs(model, pad_examples(examples, tok.pad_token_id))
        packed = response_logprobs(model, pack_examples(examples, tok.pad_token_id, max_length=9))
    assert padded.tolist() == pytest.approx(expected, abs=1e-5)
    assert sorted(packed.tolist()) == pytest.approx(sorted(expected), abs=1e-5)  # packed rows reorder examples
    assert pack_examples(examples, tok.pad_token_id, max_length=9).input_ids.shape == (2, 9)  # [5+4], [3]


def test_packing_gives_the_same_step_as_padding(tmp_path):
    results = []
    for packing in (False, True):
        trainer = make(tmp_path / str(packing), packing=packing, max_steps=1, eval_fraction=0)
        trainer.policy.zero_grad()
        examples = trainer.step_examples(0)
        total = sum(e.trained_tokens for e in examples)
        loss = sum(-response_logprobs(trainer.policy.model, b).sum() / total for b in trainer.micro_batches(examples))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.policy.params])
        results.append((float(loss), grads, len(trainer.micro_batches(examples))))
    (padded_loss, padded_grads, padded_rows), (packed_loss, packed_grads, packed_rows) = results
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    assert torch.allclose(packed_grads, padded_grads, atol=1e-5)
    assert packed_rows < padded_rows


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = make(tmp_path / "a", save_steps=2, max_steps=5)
    straight.fit()
    fit_until_crash(make(tmp_path / "b", save_steps=2, max_steps=5), step=3)
    resumed = make(tmp_path / "b", save_steps=2, max_steps=5, resume=True)
    resumed.fit()

    def untimed(path):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read(path)]

    assert untimed(resumed.layout.metrics) == untimed(straight.layout.metrics)
    state = straight.policy.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in resumed.policy.model.state_dict().items())


def test_lora_trains_only_the_adapters_and_saves_a_merged_folder(tmp_path):
    trainer = make(tmp_path, lora_rank=4, max_steps=2, learning_rate=1e-2)
    base = {k: v.clone() for k, v in trainer.policy.model.state_dict().items() if "lora" not in k}
    trainer.fit()
    after = trainer.policy.model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(trainer.layout.latest_checkpoint() / "model")
    assert not any("lora" in k for k in merged.state_dict())


def test_long_examples_are_cut_and_counted(tmp_path):
    trainer = make(tmp_path, max_length=40, max_steps=1)
    assert trainer.data_report["truncated"] > 0 and all(len(e) <= 40 for e in trainer.train)


def test_a_bad_row_stops_before_a_model_loads(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(aha.models, "load_model", refuse)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    code = main(["sft", "model=tiny:qwen2", f"dataset={data}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"aha: error: {data}:2: a row needs `messages`, or `prompt` and `completion`")
    code = main(["sft", "model=tiny:qwen2", f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and "dataset: give the training rows" in capsys.readouterr().err


def test_examples_sharing_a_system_prompt_compute_it_once_with_the_same_loss_and_gradients():
    from aha.trainer.sft import shared_context_length
    from aha.utils.sequences import MIN_SHARED_PREFIX

    model, tok = load_model("tiny:qwen2", seed=1)
    system = list(range(20, 20 + MIN_SHARED_PREFIX + 2))
    examples = [SFTExample(system + [5, 6, 7, 8, 9], [0] * len(system) + [0, 0, 1, 1, 1], "a"),
                SFTExample(system + [10, 11, 12], [0] * len(system) + [0, 1, 1], "b"),
                SFTExample(system + [13, 14, 15, 16], [0] * len(system) + [0, 0, 0, 1], "c")]
    batch = pad_examples(examples, tok.pad_token_id)
    assert shared_context_length(batch) == len(system)
    results = []
    for share in (False, True):
        model.zero_grad()
        if share:
            logp = response_logprobs(model, batch)
        else:  # each example alone: nothing shared
            logp = torch.cat([response_logprobs(model, pad_examples([e], tok.pad_token_id)) for e in examples])
        logp.sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (alone, alone_grads), (shared, shared_grads) = results
    assert torch.allclose(alone, shared, atol=1e-5) and alone.numel() == 6
    for name in alone_grads:
        assert torch.allclose(alone_grads[name], shared_grads[name], atol=1e-5), name
    trained_in_system = SFTExample(system + [1, 2], [0, 1] + [0] * (len(system) - 2) + [1, 1], "d")
    assert shared_context_length(pad_examples(examples + [trained_in_system], tok.pad_token_id)) == 0
