"""Pipeline recipes: every mistake is found before anything runs and named by file, line, stage and field;
the plan and its cost estimate; which stages run again when a config or an input changes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from aha.cli import main
from aha.config import ConfigError
from aha.models import load_model
from aha.pipeline.recipe import parse
from aha.pipeline.runner import run_pipeline
from aha.utils.console import make_console

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def rows(path: Path, n: int, tag: str = "a") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{tag}{i}", "completion": f"c{i}"}) + "\n" for i in range(n)))
    return path


BAD = [
    ("unknown kind", """
        stages:
          - name: a
            kind: sfft
        """, "p.yaml:3: stage 'a': unknown kind 'sfft'; did you mean sft?"),
    ("no kind", """
        stages:
          - name: a
            model: tiny:qwen2
        """, "p.yaml:2: stage 'a': no kind; kinds: sft, grpo"),
    ("duplicate name", """
        stages:
          - {name: a, kind: mix, inputs: [{data: d.jsonl}]}
          - {name: a, kind: mix, inputs: [{data: d.jsonl}]}
        """, "stage 'a': name: two stages are named 'a'"),
    ("unknown reference", """
        stages:
          - name: a
            kind: mix
            inputs: [{data: d.jsonl}]
          - name: b
            kind: sft
            dataset: ${stages.aa.output}
        """, "p.yaml:7: stage 'b': dataset: ${stages.aa.output} names no stage; did you mean a?"),
    ("cycle", """
        stages:
          - name: a
            kind: mix
            inputs: [{data: "${stages.b.output}"}]
          - name: b
            kind: mix
            inputs: [{data: "${stages.a.output}"}]
        """, "its inputs form a cycle: a -> b -> a"),
    ("own output", """
        stages:
          - name: a
            kind: mix
            inputs: [{data: "${stages.a.output}"}]
        """, "p.yaml:4: stage 'a': inputs: a stage cannot read its own output"),
    ("bad reference", """
        stages:
          - name: a
            kind: mix
            inputs: [{data: d.jsonl}]
          - name: b
            kind: sft
            dataset: ${stages.a.outputs}
        """, "p.yaml:7: stage 'b': dataset: cannot resolve ${stages.a.outputs}; a reference is "
             "${stages.NAME.output}"),
    ("unknown field", """
        stages:
          - name: a
            kind: grpo
            model: tiny:qwen2
            learning_rat: 0.1
        """, "p.yaml:5: stage 'a': unknown field 'learning_rat' for GRPOConfig; did you mean learning_rate"),
    ("wrong type", """
        stages:
          - name: a
            kind: grpo
            max_steps: many
        """, "p.yaml:4: stage 'a': max_steps: expected int, got 'many'"),
    ("invalid value", """
        stages:
          - name: a
            kind: grpo
            group_size: 0
        """, "p.yaml:4: stage 'a': group_size: must be >= 1, got 0"),
    ("missing input", """
        stages:
          - name: a
            kind: sft
            dataset: data/missing.jsonl
        """, "p.yaml:4: stage 'a': dataset: data/missing.jsonl: no such file or folder (and no stage makes it)"),
    ("output set by hand", """
        stages:
          - name: a
            kind: sft
            dataset: d.jsonl
            output_dir: elsewhere
        """, "p.yaml:5: stage 'a': output_dir: set by the pipeline"),
    ("unknown top-level key", """
        stage:
          - {name: a, kind: sft}
        """, "p.yaml:1: unknown top-level key 'stage'; did you mean stages?"),
    ("no stages", """
        output_dir: x
        """, "`stages` must be a non-empty list"),
    ("bad name", """
        stages:
          - {name: 1st, kind: sft}
        """, "stage 1: name must be a word"),
    ("bad mix input", """
        stages:
          - name: a
            kind: mix
            inputs: [{data: d.jsonl, weight: -1}]
        """, "p.yaml:4: stage 'a': inputs: inputs[0].weight must be a number > 0, got -1"),
    ("invalid yaml", "stages: [\n", "p.yaml:2: invalid YAML"),
    ("bad reward", """
        stages:
          - name: a
            kind: grpo
            rewards: {accuracy: {weight: 1, when: math}}
        """, "p.yaml:4: stage 'a': rewards.accuracy.when must map a column to a value or list of values"),
]


@pytest.mark.parametrize("name, text, expected", BAD, ids=[b[0] for b in BAD])
def test_a_bad_recipe_is_named_before_anything_runs(tmp_path, monkeypatch, name, text, expected):
    monkeypatch.chdir(tmp_path)
    rows(tmp_path / "d.jsonl", 3)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse(path.name)
    assert expected in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_command_line_mistakes_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows(tmp_path / "d.jsonl", 3)
    write(tmp_path, """
        stages:
          - {name: a, kind: mix, inputs: [{data: d.jsonl}]}
        """)
    cases = [(["pipeline", "p.yaml", "b.max_rows=3"], "override b.…: no stage named 'b'"),
             (["pipeline", "p.yaml", "max_rows=3"], "a pipeline takes output_dir=D or STAGE.field=value"),
             (["pipeline", "p.yaml", "--from", "z"], "no stage named 'z'"),
             (["pipeline", "p.yaml", "a.max_rows=-1"], "max_rows: must be >= 0"),
             (["pipeline", "missing.yaml"], "missing.yaml: pipeline recipe not found")]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("aha: error: ") and expected in err, err


def test_every_shipped_recipe_is_valid():
    for path in sorted((REPO / "recipes").glob("r1*.yaml")):
        pipeline = parse(path)
        assert pipeline.stages, path


def test_stages_run_after_what_they_read_and_references_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows(tmp_path / "d.jsonl", 3)
    path = write(tmp_path, """
        output_dir: out
        defaults: {seed: 7, learning_rate: 0.5}
        stages:
          - name: train
            kind: sft
            model: tiny:qwen2
            dataset: ${stages.data.output}
          - name: data
            kind: mix
            inputs: [{data: d.jsonl}]
        """)
    pipeline = parse(path, ["output_dir=elsewhere", "train.max_steps=3"])
    assert pipeline.names == ["data", "train"]
    train = pipeline.stage("train")
    assert train.config.dataset == "elsewhere/data/mixed.jsonl"
    assert train.config.output_dir == "elsewhere/train" and train.config.resume
    assert (train.config.seed, train.config.learning_rate, train.config.max_steps) == (7, 0.5, 3)
    assert pipeline.stage("data").config.seed == 7  # a default goes to every kind that has the field


def test_dry_run_prints_the_plan_with_hand_computed_estimates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    pipeline = parse("recipes/r1-tiny.yaml", [f"output_dir={tmp_path / 'r1'}"])
    plan = run_pipeline(pipeline, make_console(), dry=True, accelerator="h100", devices=2)
    assert not (tmp_path / "r1").exists()
    by_name = {s["name"]: s for s in plan["stages"]}
    assert [s["action"] for s in plan["stages"]] == ["run"] * 8
    model, _ = load_model("tiny:qwen2")
    n = sum(p.numel() for p in model.parameters())
    rl = by_name["rl_reasoning"]  # 3 steps x 2 prompts x 4 samples; 2 evaluations of 4 problems; 16 tokens each
    assert rl["parameters"] == n  # the model it starts from: the cold-start run of the same tiny model
    assert rl["generated_tokens"] == (3 * 2 * 4 + 2 * 4) * 16
    assert pipeline.stage("rl_reasoning").config.max_prompt_length == 512  # prompts counted at their cap
    assert rl["trained_tokens"] == 3 * 2 * 4 * (512 + 16)
    assert rl["flops"] == 2 * n * rl["generated_tokens"] + 6 * n * rl["trained_tokens"]
    assert rl["hours"] == pytest.approx(rl["flops"] / (989e12 * 0.35 * 2) / 3600)
    assert by_name["cold_start"]["trained_tokens"] == 4 * 8 * 1024  # 4 steps of 8 rows at max_length
    assert by_name["rejection"]["generated_tokens"] == 8 * 2 * 16
    assert by_name["sft_data"]["flops"] == 0.0
    assert by_name["sft_all"]["trained_tokens"] == 3 * 4 * 1024
    out = capsys.readouterr().err
    assert "rl_reasoning" in out and "h100-hours" in out


def test_a_changed_stage_runs_again_with_everything_that_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows(tmp_path / "d.jsonl", 10)
    rows(tmp_path / "e.jsonl", 4, tag="e")
    path = write(tmp_path, """
        output_dir: out
        stages:
          - {name: a, kind: mix, inputs: [{data: d.jsonl}]}
          - {name: b, kind: mix, inputs: [{data: "${stages.a.output}", weight: 0.5}]}
          - {name: c, kind: mix, inputs: [{data: e.jsonl}]}
        """)
    console = make_console()

    def run(*overrides, **kwargs):
        before = {p: p.stat().st_mtime_ns for p in Path("out").glob("*/mixed.jsonl")}
        summary = run_pipeline(parse(path, list(overrides)), console, **kwargs)
        after = {p: p.stat().st_mtime_ns for p in Path("out").glob("*/mixed.jsonl")}
        return sorted(p.parent.name for p in after if before.get(p) != after[p]), summary

    ran, summary = run()
    assert ran == ["a", "b", "c"]
    manifest = json.loads(Path("out/pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in manifest["stages"]] == [("a", "done"), ("b", "done"), ("c", "done")]
    assert manifest["stages"][1]["inputs"] == {"a": "out/a/mixed.jsonl"}
    assert summary["stages"][1]["metric"] == "5 rows"
    assert run()[0] == []                                  # nothing changed: nothing runs
    assert run("a.max_rows=8")[0] == ["a", "b"]            # a's config changed: a and what reads it
    assert run("a.max_rows=8")[0] == []
    rows(tmp_path / "d.jsonl", 9)                          # an input file changed
    assert run("a.max_rows=8")[0] == ["a", "b"]
    assert run("a.max_rows=8", from_stage="b")[0] == ["b"]  # --from: that stage and after it
    assert run("a.max_rows=8", "c.seed=1", until="b")[0] == []  # c changed but the run stops after b
    assert json.loads(Path("out/pipeline.json").read_text())["stages"][2]["status"] == "done"
    assert run("a.max_rows=8", "c.seed=1")[0] == ["c"]


def test_a_failed_stage_is_recorded_and_runs_again_once_fixed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows(tmp_path / "d.jsonl", 3)
    path = write(tmp_path, """
        output_dir: out
        stages:
          - {name: a, kind: mix, inputs: [{data: d.jsonl}]}
          - {name: b, kind: mix, inputs: [{data: "${stages.a.output}", field_map: {question: prompt}}]}
        """)
    (tmp_path / "d.jsonl").write_text(json.dumps({"completion": "x"}) + "\n")
    with pytest.raises(Exception, match="no field 'prompt'"):
        run_pipeline(parse(path), make_console())
    stages = json.loads(Path("out/pipeline.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["done", "failed"] or [s["status"] for s in stages] == ["failed", "pending"]
    failed = next(s for s in stages if s["status"] == "failed")
    assert "no field 'prompt'" in failed["error"]
    rows(tmp_path / "d.jsonl", 3)
    run_pipeline(parse(path), make_console())
    assert [s["status"] for s in json.loads(Path("out/pipeline.json").read_text())["stages"]] == ["done", "done"]
