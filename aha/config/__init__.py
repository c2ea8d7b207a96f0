"""Every command's settings: one dataclass per command, made of shared sections (model, prompt,
sampling, optimisation, run), loaded from YAML with ``key=value`` overrides."""

from aha.config.eval import EvalConfig
from aha.config.grpo import GRPOConfig
from aha.config.loading import (Config, ConfigError, aliases, config_to_dict, describe_fields, field_docs, is_text_type,
                                load_config, parse_override, save_config, source_of)
from aha.config.sections import DEFAULT_MODEL
from aha.config.sft import SFTConfig

__all__ = ["Config", "ConfigError", "DEFAULT_MODEL", "EvalConfig", "GRPOConfig", "SFTConfig", "aliases",
           "config_to_dict", "describe_fields", "field_docs", "is_text_type", "load_config", "parse_override",
           "save_config", "source_of"]
