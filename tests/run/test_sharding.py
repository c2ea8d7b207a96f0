"""FSDP2 sharding (``fsdp=true``): 2 CPU processes (gloo) hold half of every weight, gradient and optimiser moment
each, and train GRPO (with a sharded reference model) and SFT exactly as one unsharded process does on the same
global batch; checkpoints are written in the unsharded layout and resume either way (sharded -> one process, one
process -> sharded)."""

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.trainer.test_distributed import (aha, assert_same_weights, check_sft_on_two_processes_equals_one, lines,
                                           weights)

GRPO = ["model=tiny:qwen2", "task=chain_sum", "prompts_per_step=3", "group_size=4", "max_completion_length=12",
        "temperature=1.0", "eval_size=5", "eval_steps=2", "save_steps=2", "micro_batch_size=4",
        "learning_rate=1e-3", "threads=1", "beta=0.04", "ref_sync_steps=2",
        "rewards={repetition: {weight: 1.0, unit: chars, ngram_size: 1}}"]
"""Three groups over two ranks: one rank samples two, the other one (their decoding ends at different steps);
three micro-batches, so one rank trains on two and the other on one and a masked filler. The KL term keeps a
sharded reference model, synced from the policy every 2 steps and checkpointed."""


def _shard_checks(rank: int, rendezvous: str, out: dict) -> None:
    from aha.models import load_model
    from aha.run.sharding import full_optimizer_state, full_state, full_weights, pad_to_equal, shard_model
    from aha.run.world import World

    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    world = World(rank=rank, world_size=2)
    try:
        plain, tokenizer = load_model("tiny:qwen2", dtype="float32", device="cpu", seed=0)
        model, _ = load_model("tiny:qwen2", dtype="float32", device="cpu", seed=0)
        total = sum(p.numel() for p in plain.parameters())
        shard_model(model, world)
        local = sum(p.to_local().numel() for p in model.parameters())
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        with torch.no_grad():
            expected = plain(input_ids=ids).logits
            with full_weights(model):
                gathered_types = {type(p).__name__ for p in model.parameters()}
                # ranks run different numbers of forwards here: no collective may happen inside
                for _ in range(1 + 2 * rank):
                    logits = model(input_ids=ids).logits
        after_types = {type(p).__name__ for p in model.parameters()}

        # one AdamW step on each, the same global gradient (rank r's half of the batch, summed by reduce-scatter)
        batch = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        plain_opt = torch.optim.AdamW([p for p in plain.parameters()], lr=1e-2)
        opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-2)
        plain(input_ids=batch).logits.sum().backward()
        plain_opt.step()
        model(input_ids=batch[rank: rank + 1]).logits.sum().backward()
        opt.step()
        state, optim = full_state(model), full_optimizer_state(model, opt)
        plain_optim = plain_opt.state_dict()
        out[rank] = {
            "total": total, "local": local, "gathered_types": gathered_types, "after_types": after_types,
            "logits_close": bool(torch.allclose(logits, expected, atol=1e-5)),
            "padded": pad_to_equal(["a"] * (2 - rank), world, "filler"),
            "state_keys": sorted(state), "plain_keys": sorted(plain.state_dict()),
            "weights_close": all(torch.allclose(state[k], v, atol=1e-5) for k, v in plain.state_dict().items()
                                 if k in state),
            "optim_layout": None if not optim else (sorted(optim["state"]), optim["param_groups"][0]["params"]),
            "plain_layout": (sorted(plain_optim["state"]), plain_optim["param_groups"][0]["params"]),
            "moments_close": bool(optim) and all(
                torch.allclose(optim["state"][i]["exp_avg"], plain_optim["state"][i]["exp_avg"], atol=1e-6)
                for i in optim["state"]),
        }
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_model_holds_half_gathers_whole_for_decoding_and_saves_the_unsharded_layout(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_shard_checks, args=(str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    zero, one = out[0], out[1]
    for rank in (zero, one):
        assert rank["local"] <= rank["total"] // 2 + 64  # half of every weight (a dim-0 split, rounded up)
        assert rank["gathered_types"] == {"Parameter"} and rank["after_types"] == {"DTensor"}
        assert rank["logits_close"]  # the gathered model is the unsharded one
    assert zero["local"] + one["local"] == zero["total"]
    assert zero["padded"] == ["a", "a"] and one["padded"] == ["a", "filler"]
    # rank 0 holds the full state, keyed as the plain model's (a tied weight once); the other rank nothing
    tied = set(zero["plain_keys"]) - set(zero["state_keys"])
    assert tied <= {"lm_head.weight"} and zero["weights_close"] and one["state_keys"] == []
    assert zero["optim_layout"] == zero["plain_layout"] and zero["moments_close"] and one["optim_layout"] is None


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on this CI's Linux machines")
def test_fsdp_grpo_on_two_processes_equals_one_unsharded_and_resumes_either_way(tmp_path):
    aha(tmp_path, 1, "train", *GRPO, "max_steps=3", "output_dir=one")
    two = aha(tmp_path, 2, "train", *GRPO, "max_steps=3", "fsdp=true", "output_dir=two")
    one_metrics, two_metrics = lines(tmp_path / "one/metrics.jsonl"), lines(tmp_path / "two/metrics.jsonl")
    assert [m["step"] for m in two_metrics] == [1, 2, 3]  # written once
    for a, b in zip(one_metrics, two_metrics):
        assert a["reward"] == b["reward"] and a["trained_sequences"] == b["trained_sequences"] == 12
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-3, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert lines(tmp_path / "one/eval.jsonl") == lines(tmp_path / "two/eval.jsonl")
    assert_same_weights(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3))
    assert (two.stdout + two.stderr).count("step 3/3 reward") == 1

    # sharded checkpoint -> one process, and one-process checkpoint -> sharded: both as an uninterrupted run
    os.rename(tmp_path / "one", tmp_path / "one-then-sharded")
    aha(tmp_path, 1, "train", *GRPO, "max_steps=4", "output_dir=two", "resume=true")
    aha(tmp_path, 2, "train", *GRPO, "max_steps=4", "fsdp=true", "output_dir=one-then-sharded", "resume=true")
    aha(tmp_path, 1, "train", *GRPO, "max_steps=4", "output_dir=straight")
    for resumed in ("two", "one-then-sharded"):
        assert [m["step"] for m in lines(tmp_path / resumed / "metrics.jsonl")] == [1, 2, 3, 4]
        assert_same_weights(weights(tmp_path / resumed, 4), weights(tmp_path / "straight", 4))


def test_fsdp_sft_on_two_processes_equals_one_unsharded(tmp_path):
    # 8 examples in micro-batches of 3 over 2 ranks: one rank runs a zero-weighted filler; held-out shares uneven
    check_sft_on_two_processes_equals_one(tmp_path, "eval_fraction=0.15", two=("fsdp=true",))


@pytest.mark.parametrize("setting, message", [
    ("lora_rank=8", "fsdp shards full fine-tuning"),
    ("algorithm=ppo", "ppo's value model is not sharded"),
])
def test_fsdp_with_what_it_does_not_shard_is_a_config_error(tmp_path, setting, message):
    from aha.config import GRPOConfig
    from aha.config.loading import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, None, ["fsdp=true", setting])
