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


def test_plot_of_a_supervised_run_shows_its_training_and_held_out_loss(tmp_path, monkeypatch):
    rows = [{"step": s, "loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "lr": 1e-5 * s} for s in range(1, 9)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"step": s, "label": label, "loss": loss,
                                                             "perplexity": 2.718 ** loss}) + "\n"
                                                 for s, label, loss in ((0, "before", 2.0), (8, "after", 1.3))))
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    out = plot_run(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert list(axes) == ["training loss", "gradient norm", "learning rate"]
    held = [line for line in axes["training loss"].lines if line.get_label() == "held-out loss"]
    assert [list(held[0].get_xdata()), list(held[0].get_ydata())] == [[0, 8], [2.0, 1.3]]
    assert [list(line.get_ydata()) for line in axes["learning rate"].lines] == [[1e-5 * s for s in range(1, 9)]] * 2
    monkeypatch.undo()
    plt.close("all")


def test_plot_of_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nope")
