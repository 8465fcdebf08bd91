"""`report NAME`: read one sweep from MLflow, build the table, write md/tex/csv/html atomically.

    result = make_report("demo", tracking_uri_for("runs"), Path("runs/reports/demo"))
    print(result.markdown); result.paths["tex"]

A tune sweep's Markdown, LaTeX and CSV are its trial table instead (reports/tune_table.py).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reports.html import render_html
from reports.render import render_csv, render_latex, render_markdown
from reports.store import ReportError, Sweep, load_sweep, metric_history
from reports.table import Table, build_table, metric_label
from reports.tune import tune_view
from reports.tune_table import (DEFAULT_TOP, build_tune_table, render_tune_csv, render_tune_latex,
                                render_tune_markdown)

FORMATS = ("md", "tex", "csv", "html")
FILE_NAMES = {"md": "table.md", "tex": "table.tex", "csv": "table.csv", "html": "report.html"}


@dataclass
class ReportResult:
    sweep: Sweep
    table: Table
    markdown: str
    paths: dict[str, Path]


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ReportError(f"--format {text!r}: use a comma list of {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in formats]


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _html(sweep: Sweep, table: Table, command: str, tune_table=None) -> str:
    from reports import plots  # matplotlib (seconds to import) only when figures are drawn

    finished = [t.run_id for t in sweep.trials if t.status == "FINISHED"]
    histories = metric_history(sweep.tracking_uri, finished, "dev_wf1")
    # A tune sweep is judged on dev (its objective): bars of test scores would invite picking on test.
    bar_key = "dev_wf1" if sweep.kind == "tune" else table.metric
    base_note = f" the dark bar is the baseline {table.baseline};" if table.compares else ""
    figures = [
        (f"Variants: {metric_label(bar_key)}", plots.variant_bars(table, bar_key),
         f"Mean over finished seeds with sample-std error bars; dots are single seeds;{base_note} the y axis "
         f"starts near the lowest value, not at 0, so that differences of a point are visible."),
        ("Dev weighted F1 per epoch", plots.dev_curves(table, histories),
         "From the MLflow metric history of dev_wf1 (step = epoch) of every finished trial."),
    ]
    tune = None
    if sweep.kind == "tune":
        tune = tune_view(sweep)
        if tune.points:
            history = plots.optimisation_history(tune.points, tune.objective, tune.direction)
            figures.append(("Optimisation history", history,
                            "Objective of every finished trial in launch order, and the best so far."))
        if tune.importances:
            figures.append(("Parameter importances", plots.param_importances(tune.importances, tune.evaluator),
                            f"An Optuna study rebuilt in memory from the MLflow runs (the trials that ran their "
                            f"whole budget); {tune.evaluator}."))
        if tune.study is not None:
            figures += plots.optuna_figures(tune.study, tune.importances, tune.objective)
    return render_html(table, figures, tune, sweep.tracking_uri, command, tune_table)


def make_report(name: str, tracking_uri: str, out_dir: Path, formats: list[str] | tuple[str, ...] = FORMATS,
                metric: str = "test_wf1", baseline: str | None = None, per_class: bool = False,
                output: str | Path | None = None, top: int = DEFAULT_TOP) -> ReportResult:
    """A tune sweep's md/tex/csv are its trial table (best first, top `top` rows in md/tex, all in csv);
    with a --baseline, md and tex add the comparison table after it."""
    if top < 0:
        raise ReportError(f"--top must be >= 0 (0 = every trial), got {top}")
    sweep = load_sweep(name, tracking_uri, output)
    table = build_table(sweep, metric=metric, baseline=baseline, per_class=per_class)
    markdown, latex, csv_text = render_markdown(table), lambda: render_latex(table), lambda: render_csv(table)
    tune_table = None
    if sweep.kind == "tune":
        tune_table = build_tune_table(sweep)
        compared = "\n" + markdown if table.compares else ""
        markdown = render_tune_markdown(tune_table, top) + compared
        latex = lambda: render_tune_latex(tune_table, top) + ("\n" + render_latex(table) if table.compares else "")
        csv_text = lambda: render_tune_csv(tune_table)
    command = (f"run_sweep.py report {name} --metric {table.metric}"
               + (f" --baseline {table.baseline}" if table.baseline else "") + (" --per-class" if per_class else ""))
    renderers = {"md": lambda: markdown, "tex": latex, "csv": csv_text,
                 "html": lambda: _html(sweep, table, command, tune_table)}
    paths = {}
    for fmt in formats:
        path = Path(out_dir) / FILE_NAMES[fmt]
        write_atomic(path, renderers[fmt]())
        paths[fmt] = path
    return ReportResult(sweep, table, markdown, paths)
