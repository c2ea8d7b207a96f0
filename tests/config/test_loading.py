import pytest
import yaml

from aha.config import ConfigError, GRPOConfig, describe_fields, field_docs, load_config, save_config


def test_defaults_are_the_default_run():
    config = load_config(GRPOConfig)
    assert config.model == "smollm2-135m-instruct" and config.task == "chain_sum"


def test_yaml_then_overrides_with_types(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 3.0e-6\ngroup_size: 4\nrewards: {accuracy: 1.0}\n")
    config = load_config(GRPOConfig, recipe, ["learning_rate=1e-5", "group_size=8", "beta=0",
                                              "stop_strings=[</answer>]", "eval_dataset=null"])
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.group_size == 8 and config.beta == 0.0 and isinstance(config.beta, float)
    assert config.rewards == {"accuracy": 1.0} and config.stop_strings == ["</answer>"]
    assert config.eval_dataset is None


def test_lr_is_short_for_learning_rate(tmp_path):
    config = load_config(GRPOConfig, None, ["lr=1e-5", "group_size=8"])  # as users write it
    assert config.learning_rate == 1e-5 and config.group_size == 8
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 2.0e-5\n")
    assert load_config(GRPOConfig, recipe, ["lr=3e-5"]).learning_rate == 3e-5  # the override wins
    recipe.write_text("group_size: 4\nlr: 2.0e-5\nlearning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:2: 'lr' and 'learning_rate' are the same field; give one"):
        load_config(GRPOConfig, recipe)
    assert "learning_rate (float, default 1e-05, or lr)" in describe_fields(GRPOConfig)


def test_unknown_key_in_a_file_names_file_line_and_suggests(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("group_size: 4\n\nlearning_rat: 1e-5\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:3: unknown field 'learning_rat' .*did you mean learning_rate"):
        load_config(GRPOConfig, recipe)


def test_wrong_type_in_a_file_names_file_line_and_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 10\ngroup_size: eight\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:2: group_size: expected int, got 'eight'"):
        load_config(GRPOConfig, recipe)


@pytest.mark.parametrize("override, message", [
    ("group_sze=4", "unknown field 'group_sze'.*did you mean group_size"),
    ("group_size=2.5", "group_size: expected int, got 2.5"),
    ("use_chat_template=maybe", "use_chat_template: expected bool"),
    ("loss_type=ppo", "loss_type: unknown loss_type 'ppo'; valid: dapo, dr_grpo, grpo, gspo"),
    ("advantage_estimator=zscore", "advantage_estimator: unknown advantage estimator 'zscore'; valid: batch, group, "
                                   "none, process, reinforce_pp, rloo"),
    ("advantage_scale=zscore", "advantage_estimator: unknown advantage estimator 'zscore'"),  # the former name
    ("group_size=0", "group_size: must be >= 1"),
    ("lr_scheduler=cosin", "lr_scheduler: unknown scheduler 'cosin'; valid: linear, cosine"),
    ("prompt_template=r1", "prompt_template: must be one of r1-zero, chat, plain"),
    ("top_p=0", r"top_p: must be in \(0, 1\]"),
    ("resume=true", "resume=true needs output_dir"),
    ("noequals", "expected key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, overrides=[override])


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(GRPOConfig, bad)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(GRPOConfig, tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(GRPOConfig, overrides=["learning_rate=2e-6", "stop_strings=[</answer>]",
                                                "system_prompt=Think: then answer.", "task_options={max_terms: 3}"])
    save_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "# Peak AdamW learning rate." in text  # each field documented where it is written
    assert load_config(GRPOConfig, tmp_path / "config.yaml") == config
    assert yaml.safe_load(text)["learning_rate"] == 2e-6


def test_every_field_has_a_docstring_and_help_lists_it():
    import dataclasses

    docs = field_docs(GRPOConfig)
    missing = [f.name for f in dataclasses.fields(GRPOConfig) if f.name not in docs]
    assert missing == []
    assert "group_size (int, default 8)" in describe_fields(GRPOConfig)
