"""Generation with vLLM in the trainer's own process, on the trainer's GPU ("colocated"), from the policy's
current weights.

The engine is a ``vllm.LLM`` built once from a folder holding the policy's config, tokenizer and weights: the
folder the policy was loaded from when it has one (``name_or_path`` with a ``config.json``, as TRL does), else
a copy of the policy saved once to a temporary folder under the cache (a random tiny model, a hub id in an
offline run, LoRA merged). The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; under a
multi-rank launcher, ``distributed_executor_backend="external_launcher"``, one engine per rank), so its model
is a Python object here, and a weight sync is a GPU-to-GPU copy with no serialisation.

Weights: :meth:`VLLMBackend.sync_weights` only marks the engine stale; the next ``generate`` pushes every
parameter (LoRA merged) through ``LLM.apply_model(lambda m: m.load_weights(...))`` and resets the prefix
cache. So a step costs one push however often ``sync_weights`` is called, and a sharded policy is pushed
where the trainer has gathered it for decoding. The first ``generate`` pushes too (a resumed policy differs
from its folder). The names pushed are the policy's parameter names, which are its checkpoint's for dense
models (Llama, Qwen2/3, Mistral, SmolLM2); a model that transformers lays out unlike its checkpoint would need
converting first (vLLM's ``load_weights`` fails on a name it does not know).

Sleep mode (``sleep=True``): after each ``generate`` the engine sleeps at level 1 (weights offloaded to CPU,
KV cache freed), so the optimiser step gets the GPU memory back; before the next it wakes its weights, takes
the new ones, then wakes its KV cache. Level 2 would spare the CPU copy, but it discards every tensor vLLM
owns, and anything the push does not cover comes back as garbage (vLLM issue 29341).

Versions: coded against vLLM >= 0.10.2, < 0.34 (the sources of 0.10.2, 0.17.0, 0.25.1 and 0.33.0 were read;
TRL's colocate mode, read at 1.10.0.dev0, pins 0.17.0 to 0.25.1). It relies on these vLLM API points:
``LLM(model, dtype, seed, gpu_memory_utilization, max_model_len, enable_sleep_mode, enforce_eager,
logprobs_mode)``, ``LLM.generate([{"prompt_token_ids": ...}], [SamplingParams, ...], use_tqdm=False)``,
``LLM.apply_model``, ``LLM.reset_prefix_cache()``, ``LLM.sleep(level=1)``, ``LLM.wake_up(tags=[...])``,
``SamplingParams(n, max_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids,
include_stop_str_in_output, logprobs, skip_special_tokens)``, and ``CompletionOutput.token_ids`` /
``.finish_reason`` / ``.logprobs`` (per position ``{token_id: Logprob}``). Before 0.10.2, "processed"
log-probabilities did not include the temperature, so older versions are refused; a newer one is used with a
warning.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from packaging.version import Version
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aha.models import cache_dir, is_peft, save_hf_folder
from aha.rollout.base import Generation, SamplingParams, end_token_ids, pad_token_id

__all__ = ["VLLM_VERSIONS", "VLLMBackend", "VLLMUnavailableError", "policy_weights"]

log = logging.getLogger(__name__)

MIN_VERSION = Version("0.10.2")
"""The first vLLM whose "processed_logprobs" include the temperature (and top-k / top-p)."""
NEXT_UNREAD = Version("0.34")
"""The first vLLM release whose API this module was not checked against."""
VLLM_VERSIONS = f">={MIN_VERSION},<{NEXT_UNREAD}"
INSTALL_HINT = f"the vLLM backend needs a CUDA GPU and vLLM {VLLM_VERSIONS} (pip install 'aha[vllm]')"


class VLLMUnavailableError(RuntimeError):
    """vLLM cannot run here: not installed, a version before 0.10.2, or no CUDA GPU."""


def _cuda_available() -> bool:
    """Whether a CUDA GPU is visible. A seam: tests replace it to run a stand-in ``vllm`` on the CPU."""
    return torch.cuda.is_available()


def _import_vllm() -> Any:
    """The ``vllm`` module, once it is known to be usable here."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailableError(f"{INSTALL_HINT}; vLLM is not importable: {err}") from err
    version = Version(getattr(vllm, "__version__", "0"))
    if version < MIN_VERSION:
        raise VLLMUnavailableError(f"{INSTALL_HINT}; vLLM {version} is installed")
    if version >= NEXT_UNREAD:
        log.warning("vLLM %s is newer than this backend was written for (%s); its API may have moved",
                    version, VLLM_VERSIONS)
    if not _cuda_available():
        raise VLLMUnavailableError(f"{INSTALL_HINT}; no CUDA device is visible")
    return vllm


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's parameters under the checkpoint names vLLM loads (``model.layers.0.mlp.up_proj.weight``).

    A LoRA policy yields each adapted weight with its adapters added on the fly (W + scale * B @ A): the policy
    itself is not touched, so its frozen base weights do not drift as they would under merge and unmerge every
    step. Run it under ``torch.no_grad()`` (the adapters require gradients).
    """
    if not is_peft(model):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, param in base.named_parameters():
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts) or "original_module" in parts:
            continue  # the adapters (added below), and the frozen original of a module trained whole
        weight = param.detach()
        if "base_layer" in parts:
            at = parts.index("base_layer")
            if parts[-1] == "weight":
                weight = weight + _lora_delta(lora_layers[".".join(parts[:at])])
            parts = parts[:at] + parts[at + 1:]
        if "modules_to_save" in parts:  # a module trained whole: its trained copy under the plain name
            at = parts.index("modules_to_save")
            parts = parts[:at] + parts[at + 2:]
        yield ".".join(parts), weight


def _lora_delta(layer: Any) -> torch.Tensor | float:
    """What the active adapters add to a LoRA layer's base weight (0 when merged in already, or disabled)."""
    if layer.merged or layer.disable_adapters:
        return 0.0
    delta: torch.Tensor | float = 0.0
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
            continue
        if getattr(layer, "use_dora", {}).get(adapter):
            raise ValueError("the vLLM backend merges plain LoRA adapters only, not DoRA")
        delta = delta + layer.get_delta_weight(adapter)
    return delta


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """vLLM seeds Python's, NumPy's and torch's global generators as it starts; started in the trainer's
    process, it would reset the trainer's streams too. They are put back as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _launched_as_several_ranks() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


class VLLMBackend:
    """Samples from a vLLM engine that follows the policy (see the module docstring for how).

    One request per completion (``n=1``), each with its own seed from ``seeds``: a completion then depends
    on its seed and the weights only, not on the other requests batched with it (up to vLLM's floating-point
    batch variance). Without seeds the requests are the same, unseeded, drawn from the engine's generator.

    Log-probabilities: the engine is built with ``logprobs_mode="processed_logprobs"``, so each returned
    value is log softmax of the logits after temperature scaling *and after top-p masking*. The project's
    meaning (:class:`~aha.rollout.base.Generation`) is log softmax(logits / temperature) *before* top-p.
    The two agree exactly when ``top_p == 1`` (the default) and under greedy decoding (where both are
    log softmax(logits)). With ``top_p < 1`` the engine's value is renormalised over the nucleus N that the
    token was drawn from: engine = ours - log P_T(N), where P_T(N) >= top_p is the nucleus' mass, so it is
    higher by between 0 and -log(top_p) per token (0.051 at top-p 0.95), which lowers the log of the
    trainer's importance ratio by as much. No vLLM mode gives ours: "raw_logprobs" ignores the temperature
    (exact only at temperature 1), and the two "*_logits" modes lack the normaliser.

    Text: each completion's ``text`` is its tokens decoded by ``tokenizer`` (special tokens skipped), as
    :class:`~aha.rollout.hf.HFBackend` makes it, so the reward reads exactly the tokens that are trained
    (vLLM's own text ends at a stop string, where the last token may run past it).

    model: the policy (a transformers model, LoRA-wrapped or not), on the GPU.
    gpu_memory_utilization: the share of the GPU's memory the engine may take (weights, activations, KV
    cache); the trainer holds the rest.
    max_model_len: the longest prompt + completion the engine serves; None: the model's own limit.
    sleep: free the engine's GPU memory between generations (weights offloaded to CPU, KV cache dropped).
    seed: the engine's seed, for requests that carry none.
    dtype: the engine's dtype; "auto": the policy's (``float32`` / ``bfloat16`` / ``float16``).
    enforce_eager: no CUDA graphs (slower decoding, quicker start, less memory).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, sleep: bool = True,
                 seed: int = 0, dtype: str = "auto", enforce_eager: bool = False):
        vllm = _import_vllm()
        self.vllm = vllm
        self.model = model
        self.tokenizer = tokenizer
        self.sleep = sleep
        self.pad_id = pad_token_id(tokenizer)
        self.eos_ids = sorted(end_token_ids(model, tokenizer))
        """The tokens that end a completion, as HFBackend's (passed to the engine as ``stop_token_ids``)."""
        base = model.get_base_model() if is_peft(model) else model
        self._scratch: tempfile.TemporaryDirectory | None = None
        engine: dict[str, Any] = dict(
            model=self._engine_folder(base),
            dtype=str(base.dtype).removeprefix("torch.") if dtype == "auto" else dtype,
            seed=seed, gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep,
            enforce_eager=enforce_eager, logprobs_mode="processed_logprobs",
        )
        if max_model_len is not None:
            engine["max_model_len"] = max_model_len
        if _launched_as_several_ranks():
            engine["distributed_executor_backend"] = "external_launcher"  # one engine per rank, as torchrun's
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: its model is reachable
        with _global_rng_kept():
            self.llm = vllm.LLM(**engine)
        self.stale = True
        """The engine's weights may differ from the policy's: push them before the next generation."""
        self.asleep = False
        if sleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _engine_folder(self, base: PreTrainedModel) -> str:
        """The folder the engine is built from: the policy's own, or a copy saved once (kept while the
        backend lives)."""
        source = getattr(base, "name_or_path", "") or ""
        if source and (Path(source) / "config.json").is_file():
            return source
        scratch_root = cache_dir() / "vllm"
        scratch_root.mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="engine-", dir=scratch_root)
        save_hf_folder(self.model, self.tokenizer, self._scratch.name)
        return self._scratch.name

    def sync_weights(self) -> None:
        """The policy has changed: the next ``generate`` pushes its weights first (once, however many calls)."""
        self.stale = True

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1, seeds: list[int] | None = None) -> list[Generation]:
        """``num_samples`` completions of each prompt, laid out prompt after prompt; ``seeds``: one per
        completion (same layout)."""
        count = len(prompt_ids) * num_samples
        if seeds is not None and len(seeds) != count:
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts x {num_samples} samples")
        if count == 0:
            return []
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids for _ in range(num_samples)]
        sampling = [self._sampling_params(params, None if seeds is None else int(seeds[k])) for k in range(count)]
        self._prepare_engine()
        try:
            outputs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        finally:
            if self.sleep:
                self.llm.sleep(level=1)
                self.asleep = True
        return [self._generation(output.outputs[0], params, prefill) for output in outputs]

    def _sampling_params(self, params: SamplingParams, seed: int | None) -> Any:
        return self.vllm.SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,  # below 1e-5: greedy
            top_p=params.top_p,
            top_k=0,  # off
            seed=seed,
            stop=list(params.stop),
            stop_token_ids=list(self.eos_ids),
            include_stop_str_in_output=True,
            logprobs=0 if params.logprobs else None,  # 0: the sampled token's log-probability only
            skip_special_tokens=True,
        )

    def _prepare_engine(self) -> None:
        """Awake, and holding the policy's weights."""
        if self.asleep:
            torch.cuda.empty_cache()  # hand the trainer's cached free blocks back for the engine to map
            self.llm.wake_up(tags=["weights"])
        pushed = self.stale
        if self.stale:
            with torch.no_grad():
                weights = policy_weights(self.model)
                self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
            self.stale = False
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        if pushed:
            self.llm.reset_prefix_cache()  # cached prompt KV was computed by the old weights

    def _generation(self, completion: Any, params: SamplingParams, prefill: str) -> Generation:
        reason = completion.finish_reason
        if reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason={reason!r} (expected 'stop' or "
                               f"'length'); it was not generated to the end")
        token_ids = [int(t) for t in completion.token_ids]  # the end token included when sampled
        logprobs = None
        if params.logprobs:
            if completion.logprobs is None or len(completion.logprobs) != len(token_ids):
                raise RuntimeError("vLLM returned no log-probability for some sampled tokens")
            logprobs = [float(position[token].logprob) for token, position in zip(token_ids, completion.logprobs)]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Generation(token_ids, prefill + text, reason, logprobs)
