"""`report NAME`: read one sweep from MLflow, build the table, write md/tex/csv/html atomically.

    result = make_report("demo", tracking_uri_for("runs"), Path("runs/reports/demo"))
    print(result.markdown); result.paths["tex"]

A tune sweep's Markdown, LaTeX and CSV are its trial table instead (reports/tune_table.py).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reports.html import DEFAULT_MLFLOW_UI, render_html
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


def progress_printer(enabled: bool):
    """say(text): one 'report: ...' line on stderr with the seconds since the start, when enabled."""
    started = time.perf_counter()

    def say(text: str) -> None:
        if enabled:
            print(f"report: {text} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return say


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


CURVE_ROWS = 12   # per-epoch curves of at most this many rows (a search's best trials): more lines hide each other


def _html(sweep: Sweep, table: Table, command: str, tune_table=None, mlflow_ui: str = DEFAULT_MLFLOW_UI,
          say=lambda text: None) -> str:
    from reports import plots  # matplotlib (seconds to import) only when figures are drawn

    # A tune sweep is judged on dev (its objective): bars of test scores would invite picking on test.
    bar_key = "dev_wf1" if sweep.kind == "tune" else table.metric
    curve_rows = table.rows
    if sweep.kind == "tune":   # the best trials by dev wF1: bars and a legend of 1,000 trials help nobody
        curve_rows = sorted((r for r in table.rows if r.cells["dev_wf1"].summary.n),
                            key=lambda r: -r.cells["dev_wf1"].summary.mean)[:CURVE_ROWS]
    scored = sum(1 for r in table.rows if r.cells["dev_wf1"].summary.n)
    best_note = (f" The {len(curve_rows)} best trials by dev wF1 of the {scored} with a score."
                 if len(curve_rows) < scored else "")
    wanted = [run_id for r in curve_rows for run_id in r.cells["dev_wf1"].run_ids]
    say(f"reading the per-epoch dev wF1 of {len(wanted)} trials")
    histories = metric_history(sweep.tracking_uri, wanted, "dev_wf1")
    say("drawing the figures")
    forest = plots.forest(table) if table.compares and any(table.metric in r.comparisons for r in table.rows) \
        else None
    base_note = f" the dark bar is the baseline {table.baseline};" if table.compares else ""
    figures = [
        (f"Variants: {metric_label(bar_key)}", plots.variant_bars(table, bar_key, rows=curve_rows),
         f"Mean over finished seeds with sample-std error bars, in percent; dots are single seeds;{base_note} the "
         f"x axis starts near the lowest value, not at 0, so that differences of a point are visible.{best_note}"),
        ("Dev weighted F1 per epoch", plots.dev_curves(table, histories, rows=curve_rows),
         f"From the MLflow metric history of dev_wf1 (step = epoch; MLflow holds fractions, drawn here in percent): "
         f"one line per row, the mean over its seeds, and a band of ± one sample std.{best_note}"),
    ]
    tune = None
    if sweep.kind == "tune":
        say("rebuilding the Optuna study and its importances")
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
            say("drawing Optuna's plots")
            figures += plots.optuna_figures(tune.study, tune.importances, tune.objective)
    return render_html(table, figures, tune, sweep.tracking_uri, command, tune_table, forest_png=forest,
                       mlflow_ui=mlflow_ui)


def make_report(name: str, tracking_uri: str, out_dir: Path, formats: list[str] | tuple[str, ...] = FORMATS,
                metric: str = "test_wf1", baseline: str | None = None, per_class: bool = False,
                output: str | Path | None = None, top: int = DEFAULT_TOP, mlflow_ui: str = DEFAULT_MLFLOW_UI,
                progress: bool = False) -> ReportResult:
    """A tune sweep's md/tex/csv are its trial table (best first, top `top` rows in md/tex, all in csv);
    with a --baseline, md and tex add the comparison table after it. `progress`: say on stderr what it is
    doing while it works (the command line does; a sweep's own end-of-run table does not)."""
    if top < 0:
        raise ReportError(f"--top must be >= 0 (0 = every trial), got {top}")
    say = progress_printer(progress)
    say(f"reading sweep '{name}' from {tracking_uri}")
    sweep = load_sweep(name, tracking_uri, output)
    say(f"{len(sweep.trials)} trials ({', '.join(f'{n} {s}' for s, n in sweep.by_state().items()) or 'none'}); "
        f"building the table" + (" and its tests (reading each trial's predictions)" if sweep.kind != "tune" else ""))
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
                 "html": lambda: _html(sweep, table, command, tune_table, mlflow_ui, say)}
    return ReportResult(sweep, table, markdown, _write_all(renderers, formats, out_dir, FILE_NAMES, say))


def _write_all(renderers: dict, formats, out_dir: Path, names: dict[str, str], say) -> dict[str, Path]:
    """Render and write each asked-for format (atomically); their paths by format."""
    paths = {}
    for fmt in formats:
        say(f"writing {names[fmt]}")
        path = Path(out_dir) / names[fmt]
        write_atomic(path, renderers[fmt]())
        paths[fmt] = path
    return paths


PAPER_FILE_NAMES = {"md": "paper.md", "tex": "paper.tex", "csv": "paper.csv", "html": "paper.html"}


def make_paper_report(names: list[str], tracking_uri: str, out_dir: Path,
                      formats: list[str] | tuple[str, ...] = FORMATS,
                      metrics: list[str] | tuple[str, ...] = ("test_acc", "test_wf1"),
                      baseline: str | None = None, output: str | Path | None = None,
                      progress: bool = False) -> tuple[str, dict[str, Path]]:
    """`report A B --layout paper`: the sweeps side by side (reports/paper.py); (Markdown, written paths)."""
    from reports.paper import (build_paper, render_paper_csv, render_paper_html, render_paper_latex,
                               render_paper_markdown)

    say = progress_printer(progress)
    sweeps = []
    for name in names:
        say(f"reading sweep '{name}' from {tracking_uri}")
        sweeps.append(load_sweep(name, tracking_uri, output))
    say("building each sweep's table and its tests")
    paper = build_paper(sweeps, list(metrics), baseline)
    command = (f"run_sweep.py report {' '.join(names)} --layout paper --metrics {','.join(metrics)}"
               + (f" --baseline {baseline}" if baseline else ""))
    markdown = render_paper_markdown(paper)
    renderers = {"md": lambda: markdown, "tex": lambda: render_paper_latex(paper),
                 "csv": lambda: render_paper_csv(paper), "html": lambda: render_paper_html(paper, command)}
    return markdown, _write_all(renderers, formats, out_dir, PAPER_FILE_NAMES, say)
