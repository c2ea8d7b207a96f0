"""``aha report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page (plots inline as PNG, no network needed
to view it) of one or several training runs, or of a pipeline's run directory (a section per training stage).

Per RL run: held-out evaluations, then curves — reward and accuracy, response length (mean, p90, right and wrong
apart), reflection rate with the aha moment marked (:func:`find_aha_moment`), KL, entropy, clip ratio — then
the aha-moment section (where, how sure, whether reflective answers were right more often before and after it,
and example rollouts from before and after, the same question where possible, reflective phrases highlighted),
then a table of the logged rollouts with filters (right / wrong, with reflection, text). Several runs share
each plot, one line per run. A supervised run (a pipeline's SFT stages, a distillation's students) shows its
training loss and its held-out loss instead. The same figures can be written as PNG files for papers and READMEs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aha.analysis.curves import is_supervised
from aha.analysis.reflection import AhaMoment, ReflectionCounter, find_aha_moment
from aha.run.layout import RunLayout
from aha.utils.io import JsonlFile, atomic_write_text

PANELS = [
    ("reward", ["reward", "reward/accuracy"], "reward and sampled accuracy"),
    ("length", ["length/mean", "length/p90", "length/correct", "length/incorrect"], "response length (tokens)"),
    ("reflection", ["reflection/rate"], "responses with a reflection phrase"),
    ("reflective_accuracy", ["reflection/accuracy_reflective", "reflection/accuracy_plain"],
     "accuracy: reflective vs plain responses"),
    ("kl", ["kl"], "KL to the reference"),
    ("entropy", ["entropy"], "token entropy"),
    ("no_signal", ["zero_std_groups"], "groups whose samples all scored alike (no gradient)"),
    ("clip", ["clip_ratio"], "clipped share of tokens"),
]
SUPERVISED_PANELS = [("supervised_loss", ["loss"], "training loss (supervised runs)")]
MAX_ROLLOUTS = 600
"""Rollouts in the table at most (of steps spread over the run); the page stays light enough to open anywhere."""


@dataclass
class Run:
    label: str
    layout: RunLayout
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def supervised(self) -> bool:
        return is_supervised(self.metrics)


def _read(path: Path) -> list[dict[str, Any]]:
    return JsonlFile(path).read() if path.is_file() else []


def _runs_in(label: str, folder: Path) -> list[tuple[str, Path]]:
    """The folder as a run, or a distillation's folder as its students' runs."""
    if RunLayout(folder).metrics.is_file():
        return [(label, folder)]
    return [(f"{label}/{student.name}", student) for student in sorted((folder / "students").glob("*"))]


def find_runs(paths: list[str]) -> list[Run]:
    """Every training run named: a run directory, each training stage of a pipeline's run directory, or each
    student of a distillation's (its own or a pipeline stage's: ``students/<name>/``)."""
    runs = []
    for given in paths:
        root = Path(given)
        manifest = root / "pipeline.json"
        if manifest.is_file():
            stages = json.loads(manifest.read_text(encoding="utf-8")).get("stages", [])
            folders = [(f"{root.name}/{s['name']}", root / s["name"]) for s in stages]
        else:
            folders = [(root.name or str(root), root)]
        folders = [run for label, folder in folders for run in _runs_in(label, folder)]
        for label, folder in folders:
            layout = RunLayout(folder)
            if not layout.metrics.is_file():
                continue
            summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}
            runs.append(Run(label, layout, _read(layout.metrics), _read(layout.evals), _read(layout.samples),
                            summary))
        if not folders or not any(r.layout.root.is_relative_to(root) for r in runs):
            raise FileNotFoundError(f"{given}: no training run here (no metrics.jsonl, nor a pipeline.json "
                                    "with training stages, nor a distillation's students)")
    return runs


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in run.metrics if isinstance(r.get(key), (int, float))]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def figures(runs: list[Run], moments: dict[str, AhaMoment | None]) -> dict[str, bytes]:
    """One PNG per panel with data (and the held-out evaluations), every run in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    reinforced = [run for run in runs if not run.supervised]
    panels = [(name, keys, title, reinforced) for name, keys, title in PANELS]
    panels += [(name, keys, title, [run for run in runs if run.supervised]) for name, keys, title in SUPERVISED_PANELS]
    for name, keys, title, shown in panels:
        if not any(series(run, key)[0] for run in shown for key in keys):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        for r, run in enumerate(shown):
            for k, key in enumerate(keys):
                steps, values = series(run, key)
                if steps:
                    label = f"{run.label}: {key}" if len(shown) > 1 else key
                    ax.plot(steps, values, color=colours[(r * len(keys) + k) % len(colours)], label=label,
                            alpha=0.9, linewidth=1.2)
            moment = moments.get(run.label)
            if name == "reflection" and moment is not None:
                ax.axvline(moment.index, color="tab:red", linestyle=":", label=f"aha moment ({run.label})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out[name] = _figure_png(fig)
        plt.close(fig)
    held_out = [("heldout", "held-out accuracy", [("strict_accuracy", "o-", "strict"), ("lenient_accuracy", "s--",
                                                                                        "lenient")]),
                ("heldout_loss", "held-out loss (supervised runs)", [("loss", "o-", "loss")])]
    for name, title, keys in held_out:
        shown = [run for run in runs if any(key in e for e in run.evals for key, _, _ in keys)]
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        for r, run in enumerate(shown):
            for k, (key, style, what) in enumerate(keys):
                points = [(e["step"], e[key]) for e in run.evals if isinstance(e.get(key), (int, float))]
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colours[r % len(colours)],
                        alpha=1.0 if k == 0 else 0.6, label=f"{run.label}: {what}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out[name] = _figure_png(fig)
        plt.close(fig)
    return out


def moment_of(run: Run) -> AhaMoment | None:
    steps, values = series(run, "reflection/rate")
    moment = find_aha_moment(values) if values else None
    if moment is None:
        return None
    return AhaMoment(steps[moment.index], moment.confidence, moment.before, moment.after)


def highlighted(text: str, counter: ReflectionCounter) -> str:
    """HTML of ``text`` with its reflection phrases in <mark>."""
    parts, last = [], 0
    for start, end in counter.spans(text):
        parts.append(html.escape(text[last:start]))
        parts.append(f"<mark>{html.escape(text[start:end])}</mark>")
        last = end
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _correct(sample: dict[str, Any]) -> bool | None:
    value = sample.get("reward/accuracy")
    return None if value is None else value > 0


def _weighted(run: Run, key: str, lo: int, hi: int) -> float | None:
    values = [r[key] for r in run.metrics if lo <= r["step"] < hi and isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def moment_section(run: Run, moment: AhaMoment | None, counter: ReflectionCounter) -> str:
    steps, rates = series(run, "reflection/rate")
    if not rates:
        return "<p>This run logged no reflection statistics.</p>"
    if moment is None:
        first, last = rates[: max(1, len(rates) // 5)], rates[-max(1, len(rates) // 5):]
        return (f"<p class='verdict'>No aha moment: the reflection rate never moves to a higher level and stays "
                f"there (first fifth of the steps {sum(first) / len(first):.1%}, last fifth "
                f"{sum(last) / len(last):.1%}).</p>")
    end = steps[-1] + 1
    rows = []
    for label, lo, hi in (("before", 0, moment.index), ("after", moment.index, end)):
        reflective = _weighted(run, "reflection/accuracy_reflective", lo, hi)
        plain = _weighted(run, "reflection/accuracy_plain", lo, hi)
        rows.append(f"<tr><td>{label}</td><td>{_pct(reflective)}</td><td>{_pct(plain)}</td></tr>")
    text = (f"<p class='verdict'>Aha moment at step {moment.index} (confidence {moment.confidence:.2f}): the "
            f"reflection rate moves from {moment.before:.1%} to {moment.after:.1%}.</p>"
            "<table><tr><th></th><th>accuracy of reflective responses</th><th>of the others</th></tr>"
            + "".join(rows) + "</table>")
    before = [s for s in run.samples if s.get("step", 0) < moment.index]
    after = [s for s in run.samples if s.get("step", 0) >= moment.index and counter.spans(s.get("completion", ""))]
    pairs = []
    for sample in after[:40]:
        twin = next((b for b in reversed(before) if b.get("question") == sample.get("question")), None)
        pairs.append((twin, sample))
        if len(pairs) == 3:
            break
    for twin, sample in pairs:
        text += ("<div class='pair'><div><h4>before" + (f" (step {twin['step']})" if twin else "") + "</h4><pre>"
                 + (highlighted(twin["completion"], counter) if twin else "(no earlier rollout of this question)")
                 + f"</pre></div><div><h4>after (step {sample['step']})</h4><p class='q'>"
                 + html.escape(sample.get("question", "")) + "</p><pre>"
                 + highlighted(sample["completion"], counter) + "</pre></div></div>")
    return text


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def held_out_change(run: Run) -> str:
    """The held-out result before and after training, from the run's summary: accuracy for an RL run, loss and
    perplexity for a supervised one; empty before the run's end."""
    before, after = run.summary.get("before") or {}, run.summary.get("after") or {}
    if not after:
        return ""
    if "strict_accuracy" not in after and "loss" in after:
        return (f", held-out loss {before.get('loss', float('nan')):.4f} → {after['loss']:.4f} (perplexity "
                f"{before.get('perplexity', float('nan')):.2f} → {after.get('perplexity', float('nan')):.2f})")
    return (f", held-out strict {_pct(before.get('strict_accuracy'))} → {_pct(after.get('strict_accuracy'))}, "
            f"lenient {_pct(before.get('lenient_accuracy'))} → {_pct(after.get('lenient_accuracy'))}")


def table_samples(samples: list[dict[str, Any]], limit: int = MAX_ROLLOUTS,
                  moment: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The rollouts the table shows, and a line that says which: all of them when they fit; else every logged
    rollout of steps spread evenly from the first to the last (how the responses changed over the run), the
    first steps from the aha moment on among them, in step order."""
    if len(samples) <= limit:
        return samples, f"All {len(samples):,} logged rollouts."
    by_step: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        by_step.setdefault(int(sample.get("step", 0)), []).append(sample)
    steps = sorted(by_step)
    per_step = -(-len(samples) // len(steps))  # the mean, rounded up
    count = max(1, min(len(steps), limit // per_step))
    chosen: set[int] = set()
    if moment is not None:  # the moment's first steps: what the new behaviour looks like when it starts
        chosen.update([s for s in steps if s >= moment][: max(1, count // 10)])
    others, rest = [s for s in steps if s not in chosen], count - len(chosen)
    if rest > 0:  # evenly over the other steps, the first and the last included
        chosen.update(others[round(i * (len(others) - 1) / max(rest - 1, 1))] for i in range(rest))
    cap = max(1, limit // count)  # rollouts a step at most (a step that logged more shows its first ones)
    shown = [sample for step in sorted(chosen) for sample in by_step[step][:cap]]
    kept = sorted(chosen)
    each = "every rollout" if all(len(by_step[s]) <= cap for s in kept) else f"up to {cap} rollouts"
    return shown, (f"{len(shown):,} of {len(samples):,} logged rollouts: {each} of {len(kept)} of the "
                   f"{len(steps)} steps, spread from step {kept[0]} to step {kept[-1]}"
                   + (f", the first from the aha moment (step {moment}) on among them" if moment is not None else "")
                   + ".")


def rollout_table(run: Run, counter: ReflectionCounter, table_id: str, moment: AhaMoment | None = None) -> str:
    rows = []
    samples, caption = table_samples(run.samples, MAX_ROLLOUTS, moment.index if moment is not None else None)
    for sample in samples:
        correct = _correct(sample)
        completion = sample.get("completion", "")
        reflective = bool(counter.spans(completion))
        rows.append(
            f"<tr data-correct='{'' if correct is None else int(correct)}' data-reflective='{int(reflective)}'>"
            f"<td>{sample.get('step', '')}</td><td>{html.escape(str(sample.get('question', '')))}</td>"
            f"<td><pre>{highlighted(completion, counter)}</pre></td>"
            f"<td>{sample.get('reward', '')}</td><td>{'' if correct is None else ('right' if correct else 'wrong')}"
            "</td></tr>")
    return (f"<p class='q'>{html.escape(caption)}</p><div class='filters' data-table='{table_id}'>"
            "<label><select class='f-correct'><option value=''>right and wrong</option>"
            "<option value='1'>right</option><option value='0'>wrong</option></select></label> "
            "<label><input type='checkbox' class='f-reflective'> with reflection only</label> "
            "<label><input type='search' class='f-text' placeholder='text in question or response'></label> "
            "<span class='count'></span></div>"
            f"<table class='rollouts' id='{table_id}'><thead><tr><th>step</th><th>question</th><th>response</th>"
            "<th>reward</th><th>answer</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots img{width:580px;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top}
pre{white-space:pre-wrap;margin:0;font-size:12px} mark{background:#ffe08a}
.pair{display:flex;gap:12px;margin:8px 0} .pair>div{flex:1;background:#fafafa;padding:6px}
.verdict{font-weight:600} .filters{margin:8px 0} .count{color:#666} .q{font-size:12px;color:#555}
"""

SCRIPT = """
function applyFilters(box){
  var table=document.getElementById(box.dataset.table);
  var want=box.querySelector('.f-correct').value, refl=box.querySelector('.f-reflective').checked;
  var text=box.querySelector('.f-text').value.toLowerCase(), shown=0, rows=table.tBodies[0].rows;
  for(var i=0;i<rows.length;i++){
    var r=rows[i], ok=(want===''||r.dataset.correct===want)&&(!refl||r.dataset.reflective==='1')
      &&(!text||r.textContent.toLowerCase().indexOf(text)>=0);
    r.style.display=ok?'':'none'; if(ok){shown++;}
  }
  box.querySelector('.count').textContent=shown+' of '+rows.length+' rollouts';
  return shown;
}
document.querySelectorAll('.filters').forEach(function(box){
  box.querySelectorAll('select,input').forEach(function(el){
    el.addEventListener('input',function(){applyFilters(box);});
    el.addEventListener('change',function(){applyFilters(box);});
  });
  applyFilters(box);
});
if(location.hash==='#selftest'){
  var out=[];
  document.querySelectorAll('.filters').forEach(function(box){
    var all=applyFilters(box);
    box.querySelector('.f-correct').value='1'; var right=applyFilters(box);
    box.querySelector('.f-correct').value='0'; var wrong=applyFilters(box);
    box.querySelector('.f-correct').value=''; box.querySelector('.f-reflective').checked=true;
    var refl=applyFilters(box); box.querySelector('.f-reflective').checked=false; applyFilters(box);
    out.push(box.dataset.table+':'+all+','+right+','+wrong+','+refl);
  });
  var p=document.createElement('pre'); p.id='selftest'; p.textContent=out.join(';');
  document.body.appendChild(p);
}
"""


def build_report(paths: list[str], out: str | Path | None = None, png_dir: str | Path | None = None,
                 phrases: list[str] | None = None) -> Path:
    """Write the report (default: report.html in the first folder named: a run's, a pipeline's, a distillation's)
    and optionally its PNG figures."""
    runs = find_runs(paths)
    counter = ReflectionCounter(phrases)
    moments = {run.label: moment_of(run) for run in runs}
    pngs = figures(runs, moments)
    if png_dir:
        folder = Path(png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in pngs.items():
            (folder / f"{name}.png").write_bytes(data)
    body = [f"<h1>aha report: {html.escape(', '.join(r.label for r in runs))}</h1>"]
    body.append("<div class='plots'>" + "".join(
        f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        for name, data in pngs.items()) + "</div>")
    for i, run in enumerate(runs):
        summary = run.summary
        body.append(f"<h2>{html.escape(run.label)}</h2><p>{len(run.metrics)} steps logged" + held_out_change(run)
                    + (f"; stopped: {html.escape(str(summary['stopped']))}" if summary.get("stopped") else "")
                    + ("" if summary else " (running or stopped before its end)") + ".</p>")
        if not run.supervised:
            body.append("<h3>The aha moment</h3>" + moment_section(run, moments[run.label], counter))
        if run.samples:
            body.append("<h3>Rollouts</h3>" + rollout_table(run, counter, f"rollouts-{i}", moments[run.label]))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>aha report</title><style>" + STYLE
            + "</style></head><body>" + "".join(body) + "<script>" + SCRIPT + "</script></body></html>")
    target = Path(out) if out else Path(paths[0]) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, page)
    return target
