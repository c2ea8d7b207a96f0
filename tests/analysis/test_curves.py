import json

import pytest

from aha.analysis import plot_run
from aha.cli import main


def test_plot_writes_a_png_with_held_out_points(tmp_path):
    rows = [{"step": s, "reward": s / 10, "reward/accuracy": s / 20, "format_rate": 0.1 * s,
             "completion_length": 20 + s, "reflection/rate": 0.05 if s < 5 else 0.5} for s in range(1, 12)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 0, "strict_accuracy": 0.0, "lenient_accuracy": 0.3})
                                         + "\n")
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nope")
