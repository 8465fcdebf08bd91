"""One self-contained HTML page: the table first (readable at 1280 px without scrolling sideways) under a
short reading guide, the full caption and footnotes folded underneath, a forest plot of every row's Δ, the
other figures as base64 PNG, and every trial with its run id linking to the MLflow UI. No scripts, fonts,
stylesheets or images from anywhere else, so the page opens offline and can be mailed around as one file;
the only links are to runs in the MLflow UI (`run_sweep.py ui`, base address `mlflow_ui`).
"""
from __future__ import annotations

import base64
import math
from html import escape

from reports.render import compare_header, delta_text, expected_text, per_class_title, test_text
from reports.stats import pct
from reports.table import Table
from reports.tune import TuneView
from reports.tune_table import TuneTable, tune_table_cells, tune_table_head

STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1240px;
       color: #1a1a1a; line-height: 1.4; padding: 0 12px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em;
     border-bottom: 1px solid #ccc; padding-bottom: 2px; }
.caption { font-size: 0.92em; color: #333; }
.lead { font-size: 0.95em; color: #222; max-width: 62em; }
details { font-size: 0.88em; color: #333; margin: 6px 0 12px; }
details summary { cursor: pointer; color: #1f4e79; }
span.sd { font-size: 0.85em; color: #555; }
.warning { background: #fde2e1; border: 2px solid #c0392b; color: #7b1c12; padding: 8px 12px;
           font-weight: bold; margin: 10px 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { padding: 3px 7px; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
td:first-child { white-space: normal; max-width: 14em; }
td.text { white-space: normal; min-width: 7em; }
thead tr:first-child th { border-top: 2px solid #000; }
thead tr:last-child th { border-bottom: 1px solid #000; }
tbody tr:last-child td { border-bottom: 2px solid #000; }
th.group { border-bottom: 1px solid #666; text-align: center; }
td.best { font-weight: bold; }
td.muted, tr.muted td { color: #777; }
.notes { font-size: 0.85em; color: #333; }
.notes li { margin-bottom: 3px; }
a.run { color: #1f4e79; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
code, .mono { font-family: "DejaVu Sans Mono", monospace; font-size: 0.85em; }
.trials td { font-size: 0.95em; }
.state-FAILED, .state-KILLED { color: #b03a2e; font-weight: bold; }
.state-RUNNING { color: #9a7d0a; }
"""


DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"   # where `run_sweep.py ui` serves by default


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of one run (its URL pattern: #/experiments/<exp>/runs/<run>)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(table: Table, columns, compare: bool) -> str:
    delta_head, test_head = compare_header(table)
    groups: list[list] = []
    for _, group, _ in columns:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    expects = compare and table.expects
    tail1 = ("<th></th><th></th>" if compare else "") + ("<th></th>" if expects else "")
    tail2 = (f'<th>{escape(delta_head)}</th><th class="text">{escape(test_head)}</th>' if compare else "") \
        + ('<th class="text">expected</th>' if expects else "")
    head1 = '<tr><th></th><th></th>' + "".join(
        f'<th class="group" colspan="{n}">{escape(g)}</th>' for g, n in groups) + tail1 + "</tr>"
    head2 = "<tr><th>Variant</th><th>n</th>" + "".join(f"<th>{escape(s)}</th>" for _, _, s in columns) \
        + tail2 + "</tr>"
    body = []
    for row in table.rows:
        cells = []
        for key, _, _ in columns:
            cell = row.cells[key]
            cls = "best" if cell.bold else ("muted" if cell.summary.n == 0 else "")
            title = "runs: " + ", ".join(f"seed {s}: {r}" for s, r in zip(cell.seeds, cell.run_ids))
            mean, _, sd = cell.text(row.n).partition(" ± ")
            text = escape(mean) + (f' <span class="sd">± {escape(sd)}</span>' if sd else "")
            cells.append(f'<td class="{cls}" title="{escape(title)}">{text}</td>')
        name = escape(row.variant) + (f" <sup>{escape(row.marks)}</sup>" if row.marks else "")
        if compare:
            cells += [f"<td>{escape(delta_text(row, table.metric))}</td>",
                      f'<td class="text">{escape(test_text(row, table.metric))}</td>']
        if expects:
            title = "" if row.expected is None else f' title="{escape(row.expected.why)}"'
            cells.append(f'<td class="text"{title}>{escape(expected_text(row))}</td>')
        body.append(f"<tr><td>{name}</td><td>{row.n}</td>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="main"><thead>{head1}{head2}</thead><tbody>{"".join(body)}</tbody>'
            f'</table></div>')


def _trials_table(table: Table, mlflow_ui: str) -> str:
    head = ("<tr><th>Variant</th><th>seed</th><th class='text'>state</th><th>sel. epoch</th>"
            "<th>dev wF1</th><th>test wF1</th>"
            '<th class="text">masked</th><th class="text">run id</th><th class="text">failure reason</th></tr>')

    def num(trial, key):
        v = trial.metrics.get(key)
        return "—" if v is None or not math.isfinite(v) else pct(v)

    rows = []
    for t in table.trials:
        epoch = t.metrics.get("selected_epoch")
        rows.append(f"<tr><td>{escape(t.variant)}</td><td>{escape(t.seed)}</td>"
                    f'<td class="text state-{escape(t.status)}">{escape(t.status)}</td>'
                    f"<td>{'—' if epoch is None else int(epoch)}</td>"
                    f"<td>{num(t, 'selected_dev_wf1')}</td><td>{num(t, 'selected_test_wf1')}</td>"
                    f'<td class="text">{escape(", ".join(t.masked_modalities))}</td>'
                    f'<td class="text mono"><a class="run" href="{escape(run_url(mlflow_ui, table.experiment_id, t.run_id))}">'
                    f'{escape(t.run_id)}</a></td>'
                    f'<td class="text">{escape(t.tags.get("failure_reason", ""))}</td></tr>')
    return (f'<div class="scroll"><table class="trials"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _tune_table(tune_table: TuneTable) -> str:
    """Every trial of a tune sweep, best first (reports/tune_table.py); stopped ones in grey."""
    head = "".join(f'<th class="{"text" if i == 1 else ""}">{escape(h)}</th>'
                   for i, h in enumerate(tune_table_head(tune_table)))
    body = []
    for row in tune_table.rows:
        cells = tune_table_cells(tune_table, row)
        cls = "best" if row.rank == 1 else ("muted" if row.stopped or row.rank is None else "")
        tds = "".join(f'<td class="{"text mono" if i == 1 else cls if i == 2 else ""}">{escape(c)}</td>'
                      for i, c in enumerate(cells))
        title = f"run {row.trial.run_id}; {row.state()}"
        body.append(f'<tr class="{cls}" title="{escape(title)}">{tds}</tr>')
    return (f'<p class="caption">{" ".join(escape(c) for c in tune_table.caption)}</p>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _notes(table: Table) -> str:
    return '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in table.footnotes) + "</ul>"


def render_html(table: Table, figures: list[tuple[str, bytes, str]], tune: TuneView | None,
                tracking_uri: str, command: str, tune_table: TuneTable | None = None,
                forest_png: bytes | None = None, mlflow_ui: str = DEFAULT_MLFLOW_UI) -> str:
    """`figures`: (title, png, caption) in page order, after the table and the forest plot. A tune sweep's
    trial table (every trial, best first) comes first; its ablation-style table only when a baseline is
    compared. Run ids link to `mlflow_ui` (the MLflow UI's base address)."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(table.sweep)}: MAGTKD {escape(table.kind)} report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep <code>{escape(table.sweep)}</code>: {escape(table.kind)} report</h1>",
    ]
    if table.warning:
        parts.append(f'<div class="warning">{escape(table.warning)}</div>')
    if tune_table is not None:
        parts.append(_tune_table(tune_table))
    if tune_table is None or table.compares:
        if table.summary:
            parts.append(f'<p class="lead">{escape(table.summary)}</p>')
        parts.append(_table(table, table.columns, table.compares))
    parts.append("<details><summary>How the table was made: statistics, epoch selection, stage 1, sources "
                 f"({len(table.caption)} sentences) and {len(table.footnotes)} note(s)</summary>"
                 f'<p class="caption">{" ".join(escape(c) for c in table.caption)}</p>{_notes(table)}'
                 '<p class="notes">Hover a cell to see the MLflow run ids behind it; the CSV lists them too.</p>'
                 "</details>")
    if forest_png is not None:
        parts.append(f'<h2>Δ {escape(table.column_name(table.metric))} against {escape(table.baseline)}</h2>'
                     f'<figure id="forest">{_img(forest_png, "forest plot")}<figcaption>Each row\'s Δ (square) '
                     f"with its 95% CI (line), in points; the vertical line is no difference, the grey band the "
                     f"spec's equivalence margin when it states one; green = the spec's expectation met, red = "
                     f"not met. The numbers at the right are Δ, CI and Holm p as in the table.</figcaption></figure>")
    if table.class_columns:
        parts.append(f"<h2>Per-class F1</h2><p class=\"caption\">{escape(per_class_title(table))}</p>")
        parts.append(_table(table, table.class_columns, False))
    for title, png, caption in figures:
        parts.append(f"<h2>{escape(title)}</h2><figure>{_img(png, title)}"
                     f"<figcaption>{escape(caption)}</figcaption></figure>")
    if tune is not None:
        parts.append("<h2>Parameter importances as numbers</h2>")
        if tune.importances:
            rows = "".join(f'<tr><td class="text mono">{escape(k)}</td><td>{v:.3f}</td></tr>'
                           for k, v in tune.importances.items())
            parts.append(f"<p class=\"caption\">Importances by {escape(tune.evaluator)} over the {len(tune.run_ids)} "
                         f"trials that ran their whole budget, objective {escape(tune.objective)}.</p>"
                         f"<table><thead><tr><th>parameter</th><th>importance</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table>")
        if tune.note:
            parts.append(f'<p class="notes">{escape(tune.note)}</p>')
    parts.append("<h2>Every trial</h2>")
    parts.append(f'<p class="notes">Scores in percent; a run id opens that run in the MLflow UI at '
                 f'{escape(mlflow_ui)} (start it with <code>python run_sweep.py ui</code>; another address: '
                 f'<code>report --mlflow-ui URL</code>).</p>')
    parts.append(_trials_table(table, mlflow_ui))
    parts.append(f'<p class="notes">Made from MLflow alone ({escape(tracking_uri)}) by <code>{escape(command)}</code>.'
                 f"</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
