"""matmul_precision: float32 products in bfloat16 (or TF32) for the run, the weights and accumulations in float32."""

import pytest
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


@pytest.mark.parametrize("cpu", ["this one", "bfloat16 dot products without AMX"])
def test_bfloat16_products_give_the_float32_gradients_to_bfloat16_accuracy(tmp_path, cpu, monkeypatch):
    """medium on this CPU (oneDNN's bfloat16 products where it has AMX), and with the linear layers rounding their
    operands themselves, as on a Zen 4 (aha.models.linear._BF16_DOT, forced): the gradients of an optimise() within
    a few bfloat16 steps of float32's."""
    import aha.models.linear

    if cpu != "this one":
        monkeypatch.setattr(aha.models.linear, "_BF16_DOT", True)
    trainer = make(tmp_path, matmul_precision="medium")
    try:
        mine = trainer_gradients(trainer)  # products in bfloat16 where this CPU has them
    finally:
        torch.set_float32_matmul_precision("highest")
    plain = plain_gradients(trainer.model, "grpo", 0.0)  # everything in float32
    errors = {}
    for name, expected in plain.items():
        assert torch.isfinite(mine[name]).all(), name
        errors[name] = float((mine[name] - expected).norm() / expected.norm())
        assert errors[name] < 0.05, (name, errors[name])  # bfloat16 keeps 8 bits of mantissa: ~0.4% per product
    if cpu != "this one":  # the layers' own bfloat16 products were taken: errors of bfloat16's size, not float32's
        assert max(e for name, e in errors.items() if name.endswith("proj.weight")) > 1e-3, errors


def test_bfloat16_weight_copies_last_one_block_and_the_next_block_sees_changed_weights(monkeypatch):
    import aha.models.linear
    from aha.models.linear import AccumulatingLinear, bfloat16_weight_copies

    monkeypatch.setattr(aha.models.linear, "_BF16_DOT", True)
    layer = AccumulatingLinear(16, 8, bias=False)
    x = torch.randn(5, 16, requires_grad=True)
    torch.set_float32_matmul_precision("medium")
    try:
        with bfloat16_weight_copies():
            first = layer(x)
            assert len(aha.models.linear._WEIGHT_COPIES) == 1  # made once, for the forward and the input gradient
            first.sum().backward()
        assert aha.models.linear._WEIGHT_COPIES is None
        with torch.no_grad():
            layer.weight.mul_(2.0)  # as an optimiser step does between blocks
        with bfloat16_weight_copies():
            second = layer(x)
    finally:
        torch.set_float32_matmul_precision("highest")
    torch.testing.assert_close(second, 2 * first)  # doubling is exact in bfloat16


def _attention(query, key, value, mask):
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)


def _attention_inputs():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, heads, 40, 64, generator=generator, requires_grad=True)
                         for heads in (9, 3, 3))
    mask = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].expand(2, 1, 40, 40)
    return query, key, value, mask


def _outputs_and_gradients(attend, inputs):
    query, key, value, mask = inputs
    out = attend(lambda q, k, v: _attention(q, k, v, mask), query, key, value)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), (query, key, value))
    return out.detach(), grads


def test_attention_keeps_float32_products_under_bfloat16_matmul_precision():
    """medium makes oneDNN's products bfloat16; the attention's (CPU flash attention, blocks of a few dozen
    queries, its operands converted for every block: ~3x slower) stay float32, forward and backward."""
    from aha.models.attention import float32_attention

    plain = lambda attend, q, k, v: attend(q, k, v)  # noqa: E731
    inputs = _attention_inputs()
    exact_out, exact_grads = _outputs_and_gradients(plain, inputs)  # highest: float32 throughout
    torch.set_float32_matmul_precision("medium")
    try:
        reduced_out, _ = _outputs_and_gradients(plain, inputs)
        kept_out, kept_grads = _outputs_and_gradients(float32_attention, inputs)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # restored after forward and backward
    finally:
        torch.set_float32_matmul_precision("highest")
    if torch.equal(reduced_out, exact_out):
        pytest.skip("this CPU computes float32 products in float32 at medium (no bfloat16 products)")
    torch.testing.assert_close(kept_out, exact_out, rtol=1e-5, atol=1e-6)
    for kept, exact in zip(kept_grads, exact_grads):
        torch.testing.assert_close(kept, exact, rtol=1e-5, atol=1e-6)
