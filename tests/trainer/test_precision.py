"""matmul_precision: float32 products in bfloat16 (or TF32) for the run, the weights and accumulations in float32."""

import torch

from aha.config import GRPOConfig, load_config
from aha.trainer.grpo import GRPOTrainer
from tests.trainer.helpers import tiny_overrides, tiny_task
from tests.trainer.test_gradients import TEMPERATURE, plain_gradients, trainer_gradients


def make(tmp_path, **extra) -> GRPOTrainer:
    config = load_config(GRPOConfig, overrides=tiny_overrides(tmp_path, group_size=4, temperature=TEMPERATURE,
                                                              **extra))
    return GRPOTrainer.from_config(config, task=tiny_task())


def test_a_run_sets_its_precision_and_the_next_run_its_own(tmp_path):
    make(tmp_path / "a", matmul_precision="medium")
    assert torch.get_float32_matmul_precision() == "medium"
    make(tmp_path / "b")  # torch's setting is process-wide: a run at the default puts float32 back
    assert torch.get_float32_matmul_precision() == "highest"


def test_bfloat16_products_give_the_float32_gradients_to_bfloat16_accuracy(tmp_path):
    trainer = make(tmp_path, matmul_precision="medium")
    try:
        mine = trainer_gradients(trainer)  # products in bfloat16 where this CPU has them
    finally:
        torch.set_float32_matmul_precision("highest")
    plain = plain_gradients(trainer.model, "grpo", 0.0)  # everything in float32
    for name, expected in plain.items():
        assert torch.isfinite(mine[name]).all(), name
        error = float((mine[name] - expected).norm() / expected.norm())
        assert error < 0.05, (name, error)  # bfloat16 keeps 8 bits of mantissa: ~0.4% per product
