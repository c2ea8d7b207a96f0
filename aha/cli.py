"""The ``aha`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from aha.config import ConfigError, GRPOConfig, describe_fields, load_config


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


def _train(args: argparse.Namespace) -> int:
    recipe, overrides = _split_recipe(args.settings)
    config = load_config(GRPOConfig, recipe, overrides)
    from aha.trainer.grpo import GRPOTrainer, RunDirError

    try:
        trainer = GRPOTrainer(config)
    except RunDirError as err:
        raise ConfigError(str(err)) from None
    trainer.train()
    return 0


def _plot(args: argparse.Namespace) -> int:
    from aha.analysis import plot_run

    try:
        print(plot_run(args.run_dir, args.out))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aha", description="Reasoning from reinforcement learning with verifiable rewards (the DeepSeek-R1 "
                                "recipe) on any Hugging Face causal LM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train", help="R1-Zero RL (GRPO and variants) with verifiable rewards",
        description="Train a policy with GRPO. With no recipe, runs the default R1-Zero job: SmolLM2-135M-Instruct "
                    "on multi-step arithmetic (chain_sum), evaluated greedily on a held-out set before and after.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  aha train\n  aha train recipes/zero-tiny.yaml lr=1e-5 group_size=8\n"
               "  aha train output_dir=runs/a resume=true\n\nfields (set in a YAML recipe or as key=value):\n"
               + describe_fields(GRPOConfig))
    train.add_argument("settings", nargs="*", metavar="RECIPE.yaml | key=value",
                       help="an optional YAML recipe, then field overrides")
    train.set_defaults(func=_train)
    plot = sub.add_parser("plot", help="draw a run's training curves (reward, accuracy, format, length) to a PNG")
    plot.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    plot.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"aha: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
