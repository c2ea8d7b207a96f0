"""`aha report`: the HTML page of a run — the aha moment found and explained, reflective phrases highlighted,
rollouts with filters — opened in headless Chromium: it loads with no console error, shows its plots, and its
filters show the right rows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aha.analysis.reflection import ReflectionCounter
from aha.analysis.report import PANELS, build_report
from aha.cli import main


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(root: Path, steps: int = 30, moment: int = 18) -> Path:
    """A run whose reflection rate jumps at ``moment``; samples right/wrong, with and without reflection."""
    root.mkdir(parents=True)
    metrics, samples = [], []
    for step in range(1, steps + 1):
        after = step >= moment
        rate = (0.6 if after else 0.05) + (0.02 if step % 2 else -0.02)
        metrics.append({"step": step, "reward": 0.3 + 0.01 * step, "reward/accuracy": 0.2 + 0.01 * step,
                        "length/mean": 30 + step, "length/p90": 40 + step, "length/correct": 28 + step,
                        "length/incorrect": 33 + step, "reflection/rate": rate,
                        "reflection/accuracy_reflective": 0.7 if after else 0.2, "reflection/accuracy_plain": 0.4,
                        "entropy": 1.0 - 0.01 * step, "clip_ratio": 0.0, "kl": 0.001 * step,
                        "zero_std_groups": min(1.0, 0.03 * step)})
        for k in range(2):
            reflective = after and k == 0
            text = ("<think>2 + 3 = 6. Wait, let me check: 2 + 3 = 5.</think><answer>5</answer>" if reflective
                    else f"<think>2 + 3 = {5 + k}</think><answer>{5 + k}</answer>")
            samples.append({"step": step, "question": f"q{step % 4}: 2 + 3 =", "completion": text,
                            "reward": 1.0 if (reflective or k == 0) else 0.0,
                            "reward/accuracy": 1.0 if (reflective or k == 0) else 0.0})
    write_jsonl(root / "metrics.jsonl", metrics)
    write_jsonl(root / "samples.jsonl", samples)
    write_jsonl(root / "eval.jsonl", [{"step": 0, "label": "before", "strict_accuracy": 0.1, "lenient_accuracy": 0.3},
                                      {"step": steps, "label": "after", "strict_accuracy": 0.5,
                                       "lenient_accuracy": 0.6}])
    (root / "summary.json").write_text(json.dumps({"steps": steps, "before": {"strict_accuracy": 0.1,
                                                   "lenient_accuracy": 0.3},
                                                   "after": {"strict_accuracy": 0.5, "lenient_accuracy": 0.6}}))
    return root


def test_the_report_finds_the_moment_and_explains_it(tmp_path):
    run = fake_run(tmp_path / "run")
    out = build_report([str(run)], png_dir=tmp_path / "png")
    page = out.read_text()
    assert out == run / "report.html"
    assert "Aha moment at step 18" in page
    assert "<mark>Wait</mark>" in page and "<mark>let me check</mark>" in page
    # the 8 panels, all with data, and held-out accuracy
    pngs = sorted(p.stem for p in (tmp_path / "png").glob("*.png"))
    assert page.count("<img ") == len(pngs) == 9
    assert "no_signal" in pngs and "alt='no_signal'" in page  # the share of groups without a gradient
    assert "http://" not in page and "https://" not in page  # nothing fetched to view it
    flat = fake_run(tmp_path / "flat", moment=999)
    assert "No aha moment" in build_report([str(flat)]).read_text()
    both = build_report([str(run), str(flat)], out=tmp_path / "both.html").read_text()
    assert "rollouts-0" in both and "rollouts-1" in both


def test_a_long_runs_table_shows_rollouts_from_the_whole_run_and_the_moment(tmp_path, monkeypatch):
    """More rollouts than the table holds: whole steps spread from the first to the last, the aha moment's first
    steps among them, and a line that says so — not only the run's last rollouts."""
    import aha.analysis.report as report

    monkeypatch.setattr(report, "MAX_ROLLOUTS", 20)
    run = fake_run(tmp_path / "run", steps=60, moment=40)  # 120 rollouts, 2 a step
    page = build_report([str(run)]).read_text()
    table = page[page.index("class='rollouts'"):]
    steps = [int(s) for s in re.findall(r"<tr data-correct='[01]?' data-reflective='[01]'><td>(\d+)</td>", table)]
    assert len(steps) == 20 and steps == sorted(steps)
    assert {1, 40, 60} <= set(steps) and all(steps.count(s) == 2 for s in steps)  # whole steps
    assert "20 of 120 logged rollouts: every rollout of 10 of the 60 steps, spread from step 1 to step 60" in page
    assert "All 16 logged rollouts." in build_report([str(fake_run(tmp_path / "short", steps=8, moment=4))]).read_text()


def test_a_pipeline_directory_gets_a_section_per_training_stage(tmp_path):
    fake_run(tmp_path / "pipe" / "rl")
    (tmp_path / "pipe" / "mix").mkdir()
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({"stages": [{"name": "mix"}, {"name": "rl"}]}))
    page = build_report([str(tmp_path / "pipe")]).read_text()
    assert "<h2>pipe/rl</h2>" in page and "pipe/mix" not in page


def fake_sft_run(root: Path, steps: int = 6) -> Path:
    """What aha sft writes: a loss a step, held-out loss and perplexity before and after, no rewards."""
    root.mkdir(parents=True)
    write_jsonl(root / "metrics.jsonl", [{"step": s, "loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "lr": 1e-5}
                                         for s in range(1, steps + 1)])
    before, after = {"loss": 2.0, "perplexity": 7.389}, {"loss": 1.4, "perplexity": 4.055}
    write_jsonl(root / "eval.jsonl", [{"step": 0, "label": "before", **before},
                                      {"step": steps, "label": "after", **after}])
    (root / "summary.json").write_text(json.dumps({"steps": steps, "before": before, "after": after}))
    return root


def test_supervised_runs_show_their_losses_beside_rl_runs(tmp_path):
    """A pipeline's SFT stages and a distillation's students: training and held-out loss, no aha-moment section."""
    fake_sft_run(tmp_path / "pipe" / "cold_start")
    fake_run(tmp_path / "pipe" / "rl")
    fake_sft_run(tmp_path / "pipe" / "distill" / "students" / "small")
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({"stages": [
        {"name": "cold_start"}, {"name": "rl"}, {"name": "distill"}]}))
    out = build_report([str(tmp_path / "pipe")], png_dir=tmp_path / "png")
    assert out == tmp_path / "pipe" / "report.html"  # the pipeline's, not its first stage's
    page = out.read_text()
    sections = re.findall(r"<h2>(.*?)</h2>", page)
    assert sections == ["pipe/cold_start", "pipe/rl", "pipe/distill/small"]
    assert page.count("held-out loss 2.0000 → 1.4000 (perplexity 7.39 → 4.05)") == 2
    assert "held-out strict 10.0% → 50.0%" in page
    assert page.count("<h3>The aha moment</h3>") == 1  # the RL stage's only
    pngs = sorted(p.stem for p in (tmp_path / "png").glob("*.png"))
    assert pngs == sorted([name for name, _, _ in PANELS] + ["heldout", "heldout_loss", "supervised_loss"])
    alone = build_report([str(tmp_path / "pipe" / "distill")], png_dir=tmp_path / "alone").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", alone) == ["distill/small"]
    assert sorted(p.stem for p in (tmp_path / "alone").glob("*.png")) == ["heldout_loss", "supervised_loss"]


def test_a_folder_without_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no training run here" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_the_page_of_a_real_run_works_in_a_real_browser(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    run = tmp_path / "run"  # a real (tiny) training run: what aha train writes is what the page reads
    assert main(["train", "recipes/zero-tiny.yaml", f"output_dir={run}", "max_steps=3", "save_steps=0"]) == 0
    page = build_report([str(run)])
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", f"file://{page}#selftest"],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    found = re.search(r"<pre id=\"selftest\">(.*?)</pre>", dom.stdout)
    assert found, dom.stdout[-2000:]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    right = sum(s["reward/accuracy"] > 0 for s in samples)
    counter = ReflectionCounter()
    reflective = sum(bool(counter.spans(s["completion"])) for s in samples)
    assert len(samples) == 3 * 8  # every completion of the 3 steps
    assert found.group(1) == f"rollouts-0:{len(samples)},{right},{len(samples) - right},{reflective}"
    assert dom.stdout.count("data:image/png;base64,") >= 5  # reward, length, reflection, entropy, ... held-out
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,2200", f"--screenshot={shot}", f"file://{page}"],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
