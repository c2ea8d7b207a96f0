"""`aha pipeline recipes/r1-tiny.yaml`: every stage of the R1 recipe on tiny models, killed with SIGKILL in the
middle of a training stage and run again: every stage ends `done`, the stages finished before the kill are not
run again, and the killed stage goes on from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ["cold_start", "rl_reasoning", "rejection", "sft_data", "sft_all", "rl_all", "distill", "final_eval"]


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "aha", "pipeline", "recipes/r1-tiny.yaml", f"output_dir={out}"]


def manifest(out: Path) -> dict:
    try:
        return json.loads((out / "pipeline.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in manifest(out).get("stages", [])}


def test_r1_tiny_killed_mid_stage_then_run_again_finishes_without_redoing_work(tmp_path):
    out = tmp_path / "r1"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(command(out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    first_checkpoint = out / "rl_all" / "checkpoints" / "step-000001"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if statuses(out).get("rl_all") == "running" and (first_checkpoint / "manifest.json").exists():
            break
        time.sleep(0.05)
    assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = manifest(out)
    assert statuses(out)["rl_all"] == "running"
    killed_rl = next(s for s in killed["stages"] if s["name"] == "rl_all")
    until_checkpoint = (first_checkpoint / "manifest.json").stat().st_mtime - time.mktime(
        time.strptime(killed_rl["started"], "%Y-%m-%dT%H:%M:%S"))
    finished = {s["name"]: s for s in killed["stages"] if s["status"] == "done"}
    assert set(finished) >= {"cold_start", "rl_reasoning", "rejection", "sft_data", "sft_all"}
    kept = {p: p.stat().st_mtime_ns for p in first_checkpoint.rglob("*") if p.is_file()}
    done_files = {p: p.stat().st_mtime_ns for name in finished for p in (out / name).rglob("*") if p.is_file()}

    rerun = subprocess.run(command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = manifest(out)
    assert [s["name"] for s in final["stages"]] == STAGES
    assert all(s["status"] == "done" for s in final["stages"]), statuses(out)
    for name in finished:  # finished stages: skipped, their files untouched, their record kept
        assert f"stage {name} (" in rerun.stderr and "done, skipped" in rerun.stderr
        record = next(s for s in final["stages"] if s["name"] == name)
        assert record["ended"] == finished[name]["ended"] and record["output_hash"] == finished[name]["output_hash"]
    assert all(p.stat().st_mtime_ns == t for p, t in done_files.items())
    assert "stage rl_all (grpo): resuming" in rerun.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the checkpoint it resumed from is as it was
    steps = [json.loads(line)["step"] for line in (out / "rl_all" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # each step logged once: none redone, none lost
    assert "its last attempt was killed" in rerun.stderr  # and its time, to its last write, is in the stage's
    rl_seconds = next(s for s in final["stages"] if s["name"] == "rl_all")["seconds"]
    assert rl_seconds >= until_checkpoint - 1  # (started is to the second)
    summary = final["summary"]
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert summary["total"]["trained_tokens"] > 0 and summary["total"]["flops"] > 0
    assert next(s for s in summary["stages"] if s["name"] == "sft_data")["metric"].endswith("rows")

    again = subprocess.run(command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("done, skipped") == len(STAGES)

    # the finished pipeline's report and plots: a section per training stage, SFT stages and the student included
    report = subprocess.run([sys.executable, "-m", "aha", "report", str(out), "--out", str(tmp_path / "r1.html")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (tmp_path / "r1.html").read_text()
    for stage in ("cold_start", "rl_reasoning", "sft_all", "rl_all", "distill/tiny-llama"):
        assert f"<h2>r1/{stage}</h2>" in page
    cold = json.loads((out / "cold_start" / "summary.json").read_text())
    assert f"held-out loss {cold['before']['loss']:.4f} → {cold['after']['loss']:.4f}" in page
    assert "alt='heldout_loss'" in page and "alt='heldout'" in page and "alt='supervised_loss'" in page
    for run in ("cold_start", "rl_all", "distill/students/tiny-llama"):
        plot = subprocess.run([sys.executable, "-m", "aha", "plot", str(out / run)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert plot.returncode == 0 and (out / run / "curves.png").is_file(), plot.stderr[-3000:]
