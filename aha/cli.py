"""The ``aha`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import Any

from aha.config import ConfigError, GRPOConfig, aliases, describe_fields, field_docs, is_text_type, load_config


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    """``RECIPE.yaml key=value ...``: the first argument without '=' is the recipe."""
    recipe = None
    overrides = []
    for arg in args:
        if "=" not in arg and recipe is None:
            recipe = arg
        elif "=" not in arg:
            raise ConfigError(f"unexpected argument {arg!r}: overrides are key=value")
        else:
            overrides.append(arg)
    return recipe, overrides


def _run_recipe(args: argparse.Namespace) -> int:
    """``aha train|sft|distill [RECIPE.yaml] [key=value ...]``: load the config, then run the command."""
    recipe, overrides = _split_recipe(args.settings)
    config = load_config(args.config_class, recipe, overrides)
    if args.command in ("train", "sft"):
        from aha.run import init_world, leave_world

        init_world(config.device)  # several processes when launched by torchrun; else one
        finished = False
        try:
            if args.command == "train":
                from aha.trainer import rl_trainer

                rl_trainer(config).fit()
            else:
                from aha.trainer.sft import SFTTrainer

                SFTTrainer.from_config(config).fit()
            finished = True
        finally:
            leave_world(finished)
    else:
        from aha.pipeline.distill import distill
        from aha.utils.console import make_console

        distill(config, make_console())
    return 0


def _plot(args: argparse.Namespace) -> int:
    from aha.analysis import plot_run

    try:
        print(plot_run(args.run_dir, args.out))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a config dataclass, documented by the field's docstring; a field's other
    names (``--max-new-tokens`` for ``--max-completion-length``) are accepted too."""
    docs = field_docs(cls)
    other_names: dict[str, list[str]] = {}
    for alias, target in aliases(cls).items():
        other_names.setdefault(target, []).append(alias)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        flags = [_flag(f.name), *(_flag(a) for a in other_names.get(f.name, []))]
        if typing.get_type_hints(cls)[f.name] is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=text)


def flag_overrides(cls: type, values: dict[str, Any]) -> list[str]:
    """Given flag values -> ``key=value`` overrides that :func:`aha.config.load_config` reads exactly:
    text stays text, ``a=b c=d`` and ``{a: 1}`` are mappings, ``1,8`` a list."""
    from aha.data.records import parse_field_map

    hints = typing.get_type_hints(cls)
    overrides = []
    for name, raw in values.items():
        tp, origin = hints[name], typing.get_origin(hints[name])
        if isinstance(raw, bool) or tp in (int, float):
            value = raw
        elif origin is dict and raw.lstrip().startswith("{"):
            value = raw  # a YAML mapping, read as a key=value override reads one: {min_terms: 2, max_terms: 2}
        elif origin is dict:
            value = json.dumps(parse_field_map(raw))
        elif origin is list:
            (item,) = typing.get_args(tp)
            items = [v.strip() for v in raw.split(",") if v.strip()]
            try:
                value = json.dumps([item(v) for v in items])
            except ValueError:
                raise ConfigError(f"{_flag(name)}: expected a comma-separated list of {item.__name__}, got {raw!r}")
        elif is_text_type(tp):
            value = raw  # text fields take the override as written
        else:
            value = json.dumps(raw)
        overrides.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
    return overrides


def flags_config(cls: type, args: argparse.Namespace, **positional: str | None):
    """A config from a flag-style command: defaults, then --config FILE.yaml, then the flags given, then the
    positional arguments given (field -> value)."""
    values = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(cls)}}
    values.update({name: value for name, value in positional.items() if value})
    return load_config(cls, args.config, flag_overrides(cls, values))


def eval_config(args: argparse.Namespace):
    """The EvalConfig of ``aha eval`` arguments."""
    from aha.config import EvalConfig

    return flags_config(EvalConfig, args, model=args.model_arg)


def _generate(args: argparse.Namespace) -> int:
    from aha.config.generate import GenerateConfig
    from aha.pipeline.traces import generate_traces
    from aha.utils.console import make_console

    config = flags_config(GenerateConfig, args, prompts=args.prompts_arg)
    generate_traces(config, make_console())
    return 0


def _sample(args: argparse.Namespace) -> int:
    from aha.config.generate import SampleConfig
    from aha.pipeline.sample import rejection_sample
    from aha.utils.console import make_console

    config = flags_config(SampleConfig, args, prompts=args.prompts_arg)
    rejection_sample(config, make_console())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from aha.eval.runner import evaluate

    evaluate(eval_config(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aha", description="Reasoning from reinforcement learning with verifiable rewards (the DeepSeek-R1 "
                                "recipe) on any Hugging Face causal LM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from aha.config import SFTConfig
    from aha.config.distill import DistillConfig

    _add_recipe_command(
        sub, "train", GRPOConfig, "R1-Zero RL (GRPO and variants) with verifiable rewards",
        "Train a policy with GRPO. With no recipe, runs the default R1-Zero job: SmolLM2-135M-Instruct on multi-step "
        "arithmetic (chain_sum), evaluated greedily on a held-out set before and after.",
        ["aha train", "aha train recipes/zero-tiny.yaml lr=1e-5 group_size=8",
         "aha train output_dir=runs/a resume=true"])
    _add_recipe_command(
        sub, "sft", SFTConfig, "supervised fine-tuning (cold-start traces, distillation students)",
        "Fine-tune a model on conversations or prompt/completion pairs; the loss is on the response tokens. Same run "
        "directory, checkpoints and resume as aha train.",
        ["aha sft model=smollm2-135m-instruct dataset=traces.jsonl output_dir=runs/sft",
         "aha sft dataset=cold_start.jsonl trace_format=r1 lora_rank=16", "aha sft output_dir=runs/sft resume=true"])
    _add_recipe_command(
        sub, "distill", DistillConfig,
        "teacher traces -> verified, readable ones -> SFT of students -> retention table",
        "Distil a teacher (`model`) into one or several students: sample the teacher's traces, keep the verified and "
        "readable ones, fine-tune each student on them (or logit / on-policy distillation), evaluate the teacher and "
        "every student before and after on the same held-out set, and print how much of the teacher's accuracy each "
        "student retains. Running the same command again resumes.",
        ["aha distill recipes/smollm2/distill-chain-sum.yaml",
         "aha distill model=runs/zero prompts=chain_sum num_prompts=400 k=4 students=[smollm2-135m-instruct]"])
    plot = sub.add_parser("plot", help="draw a run's training curves (reward, accuracy, format, length) to a PNG")
    plot.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    plot.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")
    plot.set_defaults(func=_plot)
    _add_eval(sub)
    _add_traces(sub)
    _add_compare(sub)
    _add_pipeline(sub)
    _add_chat(sub)
    report = sub.add_parser(
        "report", help="an HTML report of training runs: curves, the aha moment, rollouts with filters",
        description="Write one self-contained HTML page (no network needed to view it) of one or several runs, or "
                    "of a pipeline's run directory (a section per training stage): held-out evaluations; reward, "
                    "accuracy, response length, reflection rate with the aha moment marked, KL, entropy, clip "
                    "ratio; example rollouts before and after the moment with reflective phrases highlighted; "
                    "the logged rollouts with filters. Run it again on a live run to refresh.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", help="the HTML file (default: FIRST_RUN_DIR/report.html)")
    report.add_argument("--png-dir", help="also write each figure as a PNG file here")
    report.set_defaults(func=_report)
    _add_data(sub)
    return parser


def _report(args: argparse.Namespace) -> int:
    from aha.analysis.report import build_report

    try:
        print(build_report(args.run_dirs, args.out, args.png_dir))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return 0


def _chat(args: argparse.Namespace) -> int:
    from aha.eval.chat import main_chat
    from aha.models import model_source_problem
    from aha.run import RunDirError, resolve_model_source

    try:
        problem = model_source_problem(resolve_model_source(args.model))
    except RunDirError as err:
        problem = str(err)
    if problem:
        raise ConfigError(f"model: {problem}")
    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
    return main_chat(args.model, system=args.system, prefill=args.prefill, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed, device=args.device,
                     dtype=args.dtype)


def _add_chat(sub) -> None:
    chat = sub.add_parser(
        "chat", help="talk to a reasoning model (thinking shown apart from the answer)",
        description="Talk to a model: replies stream, the thinking dimmed apart from the answer, with tokens and "
                    "tokens/s; earlier turns keep only their answers. A run directory is prompted as it was "
                    "trained (its config.yaml). With standard input not a terminal, each line is a message and "
                    "each answer is printed on one line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha chat runs/zero-chain-sum\n  aha chat smollm2-135m-instruct --system ''\n"
               "  printf '1 + 2 =\\n3 - 5 =\\n' | aha chat runs/zero-chain-sum --temperature 0")
    chat.add_argument("model", help="a run directory, checkpoint, HF folder, .gguf file or alias")
    chat.add_argument("--system", help="the system prompt ('' for none; default: the run's, else none)")
    chat.add_argument("--prefill", help="text that opens each reply (default: the run's, e.g. <think>)")
    chat.add_argument("--max-new-tokens", type=int, default=1024)
    chat.add_argument("--temperature", type=float, default=0.6, help="0: greedy (default 0.6, as the paper)")
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto")
    chat.set_defaults(func=_chat)


def _pipeline(args: argparse.Namespace) -> int:
    from aha.pipeline.recipe import parse
    from aha.pipeline.runner import run_pipeline
    from aha.utils.console import make_console

    recipe, overrides = _split_recipe(args.settings)
    if recipe is None:
        raise ConfigError("give the pipeline recipe, e.g. aha pipeline recipes/r1-tiny.yaml")
    result = run_pipeline(parse(recipe, overrides), make_console(), from_stage=args.from_stage, until=args.until,
                          dry=args.dry_run, accelerator=args.accelerator, devices=args.devices)
    return 130 if result.get("stopped") else 0


def _add_pipeline(sub) -> None:
    from aha.pipeline.cost import ACCELERATORS

    pipe = sub.add_parser(
        "pipeline", help="run a multi-stage recipe (cold start -> RL -> rejection sampling -> SFT -> RL -> distill)",
        description="Run the stages of a pipeline recipe in order, each in its own folder of the run directory, "
                    "recorded in pipeline.json. Running the same command again skips finished stages, resumes an "
                    "interrupted one from its last checkpoint, and re-runs a stage whose settings or inputs changed "
                    "together with every stage that reads from it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha pipeline recipes/r1-tiny.yaml\n  aha pipeline recipes/r1-cpu.yaml --dry-run\n"
               "  aha pipeline recipes/r1.yaml --dry-run --accelerator h100 --devices 8\n"
               "  aha pipeline recipes/r1-cpu.yaml output_dir=runs/r1 rl_reasoning.max_steps=40 --from rl_reasoning\n"
               "\nstage kinds: sft, grpo, generate, sample, mix, distill, eval (see docs/recipes.md)")
    pipe.add_argument("settings", nargs="*", metavar="RECIPE.yaml | output_dir=D | STAGE.field=value")
    pipe.add_argument("--from", dest="from_stage", metavar="STAGE",
                      help="run this stage and every stage that reads from it again, from the start")
    pipe.add_argument("--until", metavar="STAGE", help="stop after this stage")
    pipe.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost; run nothing")
    pipe.add_argument("--accelerator", default="cpu", choices=sorted(ACCELERATORS),
                      help="what --dry-run prices the run on (default: cpu)")
    pipe.add_argument("--devices", type=int, default=1, help="how many of them (default: 1)")
    pipe.set_defaults(func=_pipeline)


def _add_recipe_command(sub, name: str, cls: type, summary: str, description: str, examples: list[str]) -> None:
    """A command that takes an optional YAML recipe, then ``key=value`` overrides of ``cls``'s fields."""
    command = sub.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "".join(f"  {e}\n" for e in examples)
               + "\nfields (set in a YAML recipe or as key=value):\n" + describe_fields(cls))
    command.add_argument("settings", nargs="*", metavar="RECIPE.yaml | key=value",
                         help="an optional YAML recipe, then field overrides")
    command.set_defaults(func=_run_recipe, config_class=cls)


def _load_source(source: str, field_map: str | None, on_error: str, required=("question",)):
    """(raw rows, validated records) of a dataset source, for the ``aha data`` commands."""
    from aha.data.readers import read_rows
    from aha.data.records import collect_records, parse_field_map

    rows = list(read_rows(source))
    loaded = collect_records(rows, source, parse_field_map(field_map), required, on_error)
    return rows, loaded


def _data_check(args: argparse.Namespace) -> int:
    _, loaded = _load_source(args.source, args.field_map, args.on_error, ("question", "answer"))
    print(f"{args.source}: {len(loaded.records)} usable records, {len(loaded.skipped)} skipped")
    for message in loaded.skipped[: args.show]:
        print(f"  {message}")
    return 0


def _data_decontaminate(args: argparse.Namespace) -> int:
    from aha.data.benchmarks import BENCHMARKS, load_benchmark
    from aha.data.decontaminate import find_contamination, without_rows
    from aha.utils.io import atomic_write_text, jsonl_text

    rows, loaded = _load_source(args.train, args.field_map, args.on_error)
    if loaded.skipped:
        print(f"{args.train}: skipped {len(loaded.skipped)} malformed rows; the first: {loaded.skipped[0]}")
    names = [n for n in args.benchmarks.split(",") if n] if args.benchmarks != "all" else \
        [name for name, b in BENCHMARKS.items() if b.file]
    benchmarks = {name: [p["question"] for p in load_benchmark(name, args.data_dir).problems] for name in names}
    report = find_contamination([r["question"] for r in loaded.records], benchmarks, args.ngram)
    print(f"{args.train}: {len(report.contaminated_rows)} of {report.train_rows} training rows share a "
          f"{args.ngram}-gram with a benchmark question")
    for name, counts in report.per_benchmark().items():
        print(f"  {name:<14} {counts['problems_seen_in_training']:>5} of {counts['problems']:>5} problems seen in "
              f"training, {counts['training_rows']} training rows")
    for match in report.matches[: args.show]:
        print(f"  training row {match.train_index + 1} ~ {match.benchmark} problem {match.problem_index + 1}: "
              f"\"{match.ngram}\"")
    if args.output:
        usable = [raw.row for raw in rows if raw.row is not None and raw.problem is None]
        if len(usable) != len(loaded.records):
            raise ConfigError("--output needs every training row to be valid (the skipped rows would be dropped "
                              "silently); fix them, or run `aha data check` to list them")
        kept = without_rows(usable, report.contaminated_rows)
        atomic_write_text(args.output, jsonl_text(kept))
        print(f"wrote {len(kept)} rows to {args.output}")
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="check datasets; n-gram decontamination against the benchmarks")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--field-map", metavar="MAP", help="ours=theirs pairs, e.g. 'question=problem answer=answer' "
                                                             "or composite 'question=Body+Question'")
    common.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                        help="a malformed row: stop with file:line (raise) or skip and count it")
    common.add_argument("--show", type=int, default=10, help="how many problems or matches to list")
    check = data_sub.add_parser("check", parents=[common], help="validate a dataset (file, folder or hub name)",
                                description="Validate every row of a dataset up front and report file:line problems.")
    check.add_argument("source", help="a .jsonl/.json/.csv/.parquet file, a folder of them, or a hub dataset name")
    check.set_defaults(func=_data_check)
    decon = data_sub.add_parser(
        "decontaminate", parents=[common], help="find training rows that share word n-grams with benchmark questions",
        description="Report the training questions that share a word n-gram with a benchmark question (lower-cased "
                    "words; a question shorter than n words is one n-gram), and optionally write the training set "
                    "without them.")
    decon.add_argument("train", help="the training set (file, folder or hub name) with a question field")
    decon.add_argument("--benchmarks", default="all", help="comma-separated benchmark names (default: every math "
                                                           "benchmark)")
    decon.add_argument("--data-dir", help="folder holding the benchmark files (default $AHA_DATA_DIR, ./data, ...)")
    decon.add_argument("--ngram", type=int, default=8, help="n of the word n-grams (default 8)")
    decon.add_argument("--output", metavar="CLEAN.jsonl", help="write the training rows that are not contaminated")
    decon.set_defaults(func=_data_decontaminate)


def _add_eval(sub) -> None:
    from aha.config import EvalConfig

    ev = sub.add_parser(
        "eval", help="evaluate a model on benchmarks: pass@1 over k samples, pass@k, cons@k",
        description="Sample k responses per problem, grade them with the training rewards, and report pass@1 "
                    "(mean correctness over the k samples), pass@k (unbiased estimator) and cons@k (majority vote "
                    "over equivalent answers), with response length, truncation and format rates. Writes "
                    "results.json and samples.jsonl to --output; running again with the same --output resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha eval smollm2-135m-instruct --benchmarks gsm8k --k 1 --temperature 0 --prompt chat "
               "--limit 100 --output runs/eval-gsm8k\n  aha eval runs/zero --benchmarks math500,aime24 --k 64 "
               "--output runs/zero/eval\n  aha eval my-model --api-base http://127.0.0.1:8000/v1 --benchmarks aime24 "
               "--k 16 --output runs/eval-server")
    ev.add_argument("model_arg", nargs="?", metavar="MODEL",
                    help="HF folder or hub id, run directory, checkpoint, .gguf file, or the served model name")
    ev.add_argument("--config", metavar="FILE.yaml", help="a YAML file of the fields below; flags override it")
    add_config_flags(ev, EvalConfig, skip=("model",))
    ev.set_defaults(func=_eval)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aha.pipeline.compare import compare
    from aha.utils.console import make_console

    recipe, overrides = _split_recipe(args.settings)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    compare(recipe, overrides, variants, args.budget_minutes, args.budget_completions, Path(args.output_dir),
            make_console())
    return 0


def _add_compare(sub) -> None:
    from aha.pipeline.compare import VARIANTS

    cmp = sub.add_parser(
        "compare", help="one recipe, several algorithm variants, equal budgets, side by side",
        description="Train the same recipe with each variant (each in its own process and run directory, all under "
                    "the same budget) and report held-out accuracy, time, memory, trainable parameters and sampled "
                    "completions side by side, with a plot. Finished variants are read back, not redone.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants: " + "; ".join(f"{k} ({' '.join(f'{a}={b}' for a, b in v.items()) or 'the recipe'})"
                                        for k, v in VARIANTS.items())
               + "\n\nexample:\n  aha compare --variants grpo,dapo,ppo --budget-minutes 15 --output-dir runs/compare")
    cmp.add_argument("settings", nargs="*", metavar="RECIPE.yaml | key=value", help="the recipe, then overrides")
    cmp.add_argument("--variants", default="grpo,dr_grpo,dapo,ppo", help="comma-separated (default: %(default)s)")
    cmp.add_argument("--budget-minutes", type=float, default=15.0, help="training minutes each (default 15)")
    cmp.add_argument("--budget-completions", type=int, default=0,
                     help="sampled completions each (0: no limit; default 0)")
    cmp.add_argument("--output-dir", default="runs/compare", help="where the runs and the comparison go")
    cmp.set_defaults(func=_compare)


def _add_traces(sub) -> None:
    from aha.config.generate import GenerateConfig, SampleConfig

    gen = sub.add_parser(
        "generate", help="reasoning traces from a teacher (a local model or an OpenAI-compatible server)",
        description="Sample k traces per prompt from a teacher and write them to --output as they arrive; running "
                    "the same command again adds only the missing ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha generate questions.jsonl --model runs/zero --k 4 --output traces.jsonl\n"
               "  aha generate chain_sum --num-prompts 500 --model runs/zero --k 8 --output traces.jsonl\n"
               "  aha generate questions.jsonl --api-base http://127.0.0.1:8000/v1 --model deepseek-r1 --api-chat "
               "--k 4 --api-concurrency 32 --output traces.jsonl")
    gen.add_argument("prompts_arg", nargs="?", metavar="PROMPTS", help="prompt rows (a file, folder, hub name) or "
                                                                         "a built-in task")
    gen.add_argument("--config", metavar="FILE.yaml", help="a YAML file of the fields below; flags override it")
    add_config_flags(gen, GenerateConfig, skip=("prompts",))
    gen.set_defaults(func=_generate)
    sample = sub.add_parser(
        "sample", help="rejection sampling: keep verified, readable traces (for SFT)",
        description="Take k traces per prompt from a model (or --traces from aha generate), keep those the grader "
                    "verifies, drop unreadable ones (mixed languages, no think/answer structure, repetition, long "
                    "paragraphs, stray code) and duplicates, keep at most --max-per-prompt, and write rows for aha "
                    "sft with a report of what each filter removed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha sample chain_sum --num-prompts 500 --model runs/zero --k 8 --output kept.jsonl\n"
               "  aha sample --traces traces.jsonl --output kept.jsonl --max-per-prompt 2")
    sample.add_argument("prompts_arg", nargs="?", metavar="PROMPTS", help="prompt rows or a built-in task")
    sample.add_argument("--config", metavar="FILE.yaml", help="a YAML file of the fields below; flags override it")
    add_config_flags(sample, SampleConfig, skip=("prompts",))
    sample.set_defaults(func=_sample)


def _with_tcmalloc() -> None:
    """Replace this process by the same command with tcmalloc preloaded (``aha.utils.memory.tcmalloc_environment``:
    a shorter step and a lower peak); nothing when it is not installed or ``AHA_ALLOCATOR=system``."""
    import os

    from aha.utils.memory import tcmalloc_environment

    env = tcmalloc_environment()
    if env is None:
        return
    script = sys.argv[0]
    command = [sys.executable, "-m", "aha"] if script.endswith("__main__.py") else [sys.executable, script]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command + sys.argv[1:], env)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if argv is None:  # the command line itself (not a call from Python): run again with tcmalloc where there is one
        _with_tcmalloc()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from aha.data.readers import DataError
    from aha.models import ModelLoadError
    from aha.pipeline.traces import IncompleteError
    from aha.rollout.openai import ServerError
    from aha.run import DiskFullError, RunDirError
    from aha.trainer.core import NonFiniteError

    from aha.run.world import WorldError, launched_ranks

    try:
        if launched_ranks() > 1 and args.command not in ("train", "sft"):
            raise WorldError(f"aha {args.command} runs as one process; of the commands only train and sft run on "
                             "several (torchrun --nproc_per_node N -m aha train|sft ...)")
        return args.func(args)
    except (ConfigError, DataError, ModelLoadError, RunDirError, WorldError) as err:
        print(f"aha: error: {err}", file=sys.stderr)
        return 2
    except (IncompleteError, ServerError, DiskFullError, NonFiniteError) as err:
        print(f"aha: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"aha: {err or 'interrupted'}; what was written is kept (run the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
