import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from aha.models import ModelLoadError, apply_lora, char_tokenizer, load_model, model_source_problem, save_hf_folder


def test_char_tokenizer_round_trips_text_and_has_a_chat_template():
    tok = char_tokenizer()
    text = "<think> 12 + 3 = 15 </think>\n<answer>15</answer>"
    assert tok.decode(tok(text).input_ids) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "1+1"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == tok.pad_token == "<|im_end|>"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_are_seeded(arch):
    a, _ = load_model(f"tiny:{arch}", seed=5)
    b, _ = load_model(f"tiny:{arch}", seed=5)
    c, _ = load_model(f"tiny:{arch}", seed=6)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_lora_checkpoint_is_a_plain_folder_with_the_adapters_merged(tmp_path):
    model, tok = load_model("tiny:llama", seed=0)
    peft_model = apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a non-zero update, so the merged weights differ from the base
    ids = tok("2 + 2 =", return_tensors="pt").input_ids
    expected = peft_model(ids).logits
    save_hf_folder(peft_model, tok, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    assert not any("lora" in k for k in reloaded.state_dict())


def test_a_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    import aha.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda: False)  # as on this offline machine, whatever the network
    with pytest.raises(ModelLoadError, match="no-such-model: no such folder"):
        load_model(str(tmp_path / "no-such-model"))
    assert model_source_problem(str(tmp_path / "no-such-model")).endswith("no-such-model: no such folder")
    assert model_source_problem("org/model") is None  # a hub id: checked when it is loaded
    assert model_source_problem("tiny:gpt9") == "unknown tiny architecture 'gpt9'; valid: tiny:llama, tiny:qwen2"
    (tmp_path / "folder").mkdir()
    assert model_source_problem(str(tmp_path / "folder")).endswith("not a model folder (no config.json)")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_an_offline_hub_id_not_in_the_cache_fails_at_once(monkeypatch):
    import aha.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    with pytest.raises(ModelLoadError, match=r"'aha-tests/no-such-model': the Hugging Face hub \(.*\) is unreachable "
                                             "and it is not in the local cache"):
        load_model("aha-tests/no-such-model")  # at once, not after a minute of network retries
    with pytest.raises(ModelLoadError, match="not a model folder, a .gguf file or a hub id"):
        load_model("org/bad name")


def test_a_cached_hub_id_loads_without_the_network(tmp_path):
    model, tok = load_model("tiny:qwen2", seed=3)
    snapshot = tmp_path / "hub" / "models--aha-tests--cached" / "snapshots" / ("0" * 40)
    save_hf_folder(model, tok, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    code = ("import logging; logging.basicConfig(level=logging.INFO); from aha.models import load_model; "
            "m, _ = load_model('aha-tests/cached'); print(sum(float(p.sum()) for p in m.parameters()))")
    env = {**{k: v for k, v in os.environ.items() if "proxy" not in k.lower()}, "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{refused.getsockname()[1]}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    refused.close()
    assert out.returncode == 0, out.stderr
    expected = sum(float(p.detach().sum()) for p in model.parameters())
    assert float(out.stdout.split()[-1]) == pytest.approx(expected, rel=1e-5)  # the cached weights
    assert "hub is unreachable: aha-tests/cached is read from the local cache" in out.stderr
    assert "Retrying" not in out.stderr  # no request to the hub


@pytest.mark.slow
def test_default_model_converts_once_from_gguf_and_reloads_identically():
    import time

    model, tok = load_model("smollm2-135m-instruct")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>"
    start = time.perf_counter()
    again, _ = load_model("smollm2-135m-instruct")  # from the cached safetensors folder now
    assert time.perf_counter() - start < 10
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)


@pytest.mark.parametrize("tied", [True, False])
def test_sparse_embedding_gradients_train_the_same_weights_as_dense_ones(tied):
    from aha.models import char_tokenizer, sparse_embedding_gradients, tiny_model
    from aha.trainer.core import Policy

    tok = char_tokenizer()
    ids = [tok(t, return_tensors="pt").input_ids for t in ("12 + 30 = 42", "7 - 9 = -2, so")]
    states = []
    for sparse in (False, True):
        model = tiny_model("llama", tok, seed=3)
        if not tied:  # an output layer of its own: the embedding's gradient is all sparse
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        assert sparse_embedding_gradients(model) if sparse else True
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        policy = Policy(model, tok, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
        for _ in range(2):  # two optimiser steps of two micro-batches each
            for x in ids:
                model(input_ids=x, labels=x).loss.backward()
            if sparse:  # the embedding's rows wait beside the (tied output layer's dense) gradient
                assert len(model.get_input_embeddings().row_gradients) == 2
                assert (model.get_input_embeddings().weight.grad is None) is (not tied)
            policy.step(max_grad_norm=1.0)
        states.append(model.state_dict())
        model(input_ids=ids[0], labels=ids[0]).loss.backward()
        policy.zero_grad()  # e.g. a skipped step: no rows wait to be added to the next one
        assert not getattr(model.get_input_embeddings(), "row_gradients", [])
        assert model.get_input_embeddings().weight.grad is None
    dense, sparse = states
    assert all(torch.allclose(dense[k], sparse[k], atol=1e-6) for k in dense)


def test_grouped_query_attention_gives_sdpa_numbers_without_repeating_keys(monkeypatch):
    """CPU models attend to grouped key/value heads as they are; logits and gradients equal sdpa's, for a
    left-padded prompt and for a continuation from its KV cache (the training pass's shape)."""
    from transformers.cache_utils import DynamicCache

    model, _ = load_model("tiny:llama", seed=5)
    assert model.config._attn_implementation == "aha_sdpa_gqa"
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(3, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[2, :2] = 0
    grouped = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        grouped.append(kwargs.get("enable_gqa", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)

    def run(implementation):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        cache = DynamicCache(config=model.config)
        prompt = model(input_ids=ids[:, :6], attention_mask=mask[:, :6], past_key_values=cache, use_cache=True)
        rest = model(input_ids=ids[:, 6:], attention_mask=mask, past_key_values=prompt.past_key_values,
                     position_ids=(mask.cumsum(1) - 1).clamp(min=0)[:, 6:], use_cache=True)
        logits = torch.cat([prompt.logits, rest.logits], 1)
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_logits, plain_grads = run("sdpa")
    assert not any(grouped)
    grouped.clear()
    logits, grads = run("aha_sdpa_gqa")
    assert grouped == [True] * 2 * model.config.num_hidden_layers  # every layer, both passes
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("lora,checkpointing,products", [
    (False, False, "onednn"), (True, False, "onednn"), (False, True, "onednn"),
    (False, False, "onednn, gradients summed by addmm_"), (False, False, "onednn, weight gradients by addmm_ on Zen 4"),
    (False, False, "torch, as on Intel"), (False, False, "torch")])
def test_weight_gradients_added_in_place_train_the_same_weights(lora, checkpointing, products, monkeypatch):
    """Linear layers whose backward adds the weight gradient into ``.grad`` (aha.models.linear.AccumulatingLinear):
    over two optimiser steps of two micro-batches each (so both the first gradient and the in-place sum are
    used), with the tied output layer and the embedding's row gradients, the weights equal the plain layers'.
    The products run on oneDNN on AMD processors with AVX-512 (the weight gradient added after its product, or by
    MKL's ``addmm_`` for a vocabulary-wide weight and on Zen 4), else torch's own; each route forced here."""
    import aha.models.linear
    from aha.models import sparse_embedding_gradients, tiny_model
    from aha.models.linear import AccumulatingLinear, accumulate_weight_gradients
    from aha.trainer.core import Policy

    monkeypatch.setattr(aha.models.linear, "_MKL_NATIVE", products == "torch, as on Intel")
    monkeypatch.setattr(aha.models.linear, "_AVX512", products.startswith("onednn"))  # oneDNN only with AVX-512
    monkeypatch.setattr(aha.models.linear, "_HALF_WIDTH_AVX512", "Zen 4" in products)  # its forward products on oneDNN
    if products == "torch":
        monkeypatch.setattr(aha.models.linear, "ONEDNN_LINEAR", None)
    elif "addmm_" in products:  # a weight as wide as a vocabulary: its gradient summed by MKL's addmm_
        monkeypatch.setattr(aha.models.linear, "WIDE_OUTPUT", 1)
    tok = char_tokenizer()
    ids = [tok(t, return_tensors="pt").input_ids for t in ("12 + 30 = 42", "7 - 9 = -2, so")]
    states = []
    for fused in (False, True):
        model = tiny_model("llama", tok, seed=3)
        if checkpointing:  # the layers' forwards run again inside the backward
            model.train()
            model.gradient_checkpointing_enable()
        if lora:
            torch.manual_seed(0)  # PEFT draws the adapters' initial weights from the global generator
            model = apply_lora(model, rank=4, alpha=8)
        sparse_embedding_gradients(model)
        changed = accumulate_weight_gradients(model) if fused else 0
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert changed == (len(linears) if fused else 0)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        policy = Policy(model, tok, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
        for _ in range(2):
            for x in ids:
                model(input_ids=x, labels=x).loss.backward()
            embedding = model.get_input_embeddings().weight  # its rows wait beside its grad till the step
            assert all(p.grad is not None for p in params if p.dim() == 2 and p is not embedding)
            policy.step(max_grad_norm=1.0)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all(isinstance(m, AccumulatingLinear) is bool(fused) for m in linears)
    plain, fused = states
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def bfloat16_products(monkeypatch):
    """matmul_precision=medium on a processor with bfloat16 dot products and no AMX (aha.models.linear._BF16_DOT),
    whatever this one is."""
    import aha.models.linear

    monkeypatch.setattr(aha.models.linear, "_BF16_DOT", True)
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision("highest")


def _bf16_reference(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The product of the operands rounded to bfloat16, summed exactly, its output rounded to bfloat16."""
    return (rows.bfloat16().double() @ weight.bfloat16().double().t()).bfloat16().float()


def test_bfloat16_products_round_the_operands_and_the_output_and_only_at_medium(bfloat16_products):
    from aha.models.linear import _times_transposed, bfloat16_products

    generator = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(37, 64, generator=generator), torch.randn(48, 64, generator=generator)
    bias = torch.randn(48, generator=generator)
    exact = rows.double() @ weight.double().t()
    assert bfloat16_products()
    reduced = _times_transposed(rows, weight)
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, rows @ weight.t())
    # summed in float32 inside the product: at most one bfloat16 step (2^-8 relative) from the exact sum's rounding
    torch.testing.assert_close(reduced, _bf16_reference(rows, weight), rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(_times_transposed(rows, weight, bias), reduced + bias)
    # the output layer's products (reduced=False) and a float32 run's stay float32
    torch.testing.assert_close(_times_transposed(rows, weight, reduced=False).double(), exact, rtol=1e-5, atol=1e-5)
    torch.set_float32_matmul_precision("highest")
    assert not bfloat16_products()
    torch.testing.assert_close(_times_transposed(rows, weight).double(), exact, rtol=1e-5, atol=1e-5)


def test_bfloat16_products_train_to_bfloat16_accuracy_with_the_output_layer_in_float32(bfloat16_products):
    """The training layers' forward and both gradient products take bfloat16 operands (the gradients within a few
    bfloat16 steps of float32 training's, and not equal to them); the output layer's products stay float32."""
    from aha.models import tiny_model
    from aha.models.linear import AccumulatingLinear, accumulate_weight_gradients

    tok = char_tokenizer()
    ids = tok("12 + 30 = 42, so 7 - 9 = -2", return_tensors="pt").input_ids
    grads, outputs = [], []
    for fused in (False, True):
        torch.set_float32_matmul_precision("medium" if fused else "highest")  # plain: float32 throughout
        model = tiny_model("llama", tok, seed=3)
        if fused:
            accumulate_weight_gradients(model)
            assert model.lm_head.float32_products
            assert not any(m.float32_products for m in model.modules()
                           if isinstance(m, AccumulatingLinear) and m is not model.lm_head)
        hidden = model.model(input_ids=ids).last_hidden_state
        outputs.append((hidden.detach(), model.lm_head(hidden.detach()).detach()))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (plain_hidden, _), (reduced_hidden, reduced_logits) = outputs
    assert not torch.equal(reduced_hidden, plain_hidden)
    torch.testing.assert_close(reduced_hidden, plain_hidden, rtol=0.05, atol=0.05)
    exact_logits = reduced_hidden.double() @ model.lm_head.weight.detach().double().t()
    torch.testing.assert_close(reduced_logits.double(), exact_logits, rtol=1e-5, atol=1e-5)  # float32 products
    plain, reduced = grads
    assert plain.keys() == reduced.keys()
    for name, expected in plain.items():
        error = float((reduced[name] - expected).norm() / expected.norm())
        assert error < 0.05, (name, error)  # bfloat16 keeps 8 bits of mantissa: ~0.4% per product
    weights = [n for n in plain if n.endswith("proj.weight")]
    assert weights and all(not torch.equal(reduced[n], plain[n]) for n in weights)


def test_bfloat16_products_decode_with_bfloat16_copies_of_all_but_the_output_layer(bfloat16_products, monkeypatch):
    import aha.models.linear
    from aha.rollout.hf import packed_linears

    if not (torch.backends.mkldnn.is_available() and aha.models.linear._AVX512):
        pytest.skip("oneDNN's bfloat16 products need AVX-512")
    monkeypatch.setattr(aha.models.linear, "_MKL_NATIVE", False)  # packed copies, as on AMD's processors
    model, _ = load_model("tiny:llama", seed=4)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.no_grad(), packed_linears(model):
        packed = {n: m.forward.args[0] for n, m in model.named_modules() if "forward" in vars(m)}
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model.lm_head(hidden)
    assert packed["lm_head"].dtype == torch.float32
    assert all(w.dtype == torch.bfloat16 for n, w in packed.items() if n != "lm_head")
    torch.set_float32_matmul_precision("highest")
    with torch.no_grad():
        plain = model.model(input_ids=ids).last_hidden_state
    assert not torch.equal(hidden, plain)
    torch.testing.assert_close(hidden, plain, rtol=0.05, atol=0.05)
    torch.testing.assert_close(logits, hidden @ model.lm_head.weight.t(), rtol=1e-5, atol=1e-5)


def test_a_weight_with_a_gradient_hook_keeps_the_plain_backward():
    from aha.models import tiny_model
    from aha.models.linear import accumulate_weight_gradients

    tok = char_tokenizer()
    model = tiny_model("llama", tok, seed=3)
    accumulate_weight_gradients(model)
    weight = model.model.layers[0].mlp.down_proj.weight
    seen = []
    weight.register_hook(lambda grad: seen.append(grad.clone()))
    x = tok("1 + 2 = 3", return_tensors="pt").input_ids
    model(input_ids=x, labels=x).loss.backward()
    assert len(seen) == 1 and torch.equal(seen[0], weight.grad)
