"""The paper's ablation table: several sweeps (one per dataset) side by side.

    python run_sweep.py report iemocap_ablate meld_ablate --layout paper --metrics test_acc,test_wf1

Rows are the variants, matched by name across the sweeps (in the order the first sweep lists them, then
any the later sweeps add); each sweep is a column group with the chosen metrics, each metric followed by its
Δ against that sweep's baseline. Every group's Δ, confidence interval, test and Holm correction are computed
within its own sweep, exactly as that sweep's own report computes them (reports/table.py): one sweep's rows
never enter another's correction. A variant a sweep lacks is an empty cell (—).

Markdown, CSV, LaTeX (booktabs, \\multicolumn group headers) and HTML, from one `PaperTable`.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from html import escape

from reports.html import STYLE
from reports.render import FIT_MACRO, tex_escape
from reports.stats import pct
from reports.store import ReportError, Sweep
from reports.table import EXPECT_ALPHA, MAIN_METRICS, Row, Table, build_table, metric_label

DEFAULT_METRICS = ("test_acc", "test_wf1")
SIGNIFICANT_MARK = "*"   # Holm-corrected p < EXPECT_ALPHA within the sweep


@dataclass
class PaperTable:
    names: list[str]                  # the sweeps, in column-group order
    metrics: list[str]                # e.g. ["test_acc", "test_wf1"]
    variants: list[str]               # rows
    tables: dict[str, Table]          # sweep name -> its own table (its Δ and Holm are computed there)
    caption: str

    def row(self, sweep: str, variant: str) -> Row | None:
        return next((r for r in self.tables[sweep].rows if r.variant == variant), None)

    def group_title(self, sweep: str) -> str:
        dataset = self.tables[sweep].dataset
        return sweep if dataset in ("", "?", sweep) else f"{sweep} ({dataset})"


def parse_metrics(text: str) -> list[str]:
    valid = [k for k, _, _ in MAIN_METRICS]
    metrics = [m.strip().removeprefix("selected_") for m in text.split(",") if m.strip()]
    bad = [m for m in metrics if m not in valid]
    if bad or not metrics:
        raise ReportError(f"--metrics {text!r}: use a comma list of {', '.join(valid)}")
    return metrics


def build_paper(sweeps: list[Sweep], metrics: list[str], baseline: str | None = None) -> PaperTable:
    """One table per sweep (its own baseline unless `baseline` names one they all have), rows matched by name."""
    if len({s.name for s in sweeps}) != len(sweeps):
        raise ReportError("--layout paper: a sweep is named twice")
    tables = {s.name: build_table(s, metric=metrics[-1], baseline=baseline) for s in sweeps}
    variants: list[str] = []
    for table in tables.values():
        variants += [r.variant for r in table.rows if r.variant not in variants]
    baselines = {t.baseline for t in tables.values()}
    base_text = (f"its baseline {next(iter(baselines))}" if len(baselines) == 1
                 else "its own baseline (" + ", ".join(f"{n}: {t.baseline}" for n, t in tables.items()) + ")")
    caption = (f"Ablations across {len(sweeps)} sweeps ({', '.join(tables)}). Rows: variants matched by name. "
               f"Each column group is one sweep: scores in percent (MLflow holds fractions 0-1) at the epoch chosen "
               f"on dev, mean ± sample std over that sweep's seeds; Δ = the variant minus {base_text} in the same "
               f"sweep, in points, over the seeds both finished. {SIGNIFICANT_MARK} = Holm-corrected p < "
               f"{EXPECT_ALPHA} with the sweep's own test and a Holm family per sweep and metric (the rows of that "
               f"sweep only; `report NAME` on one sweep gives each p and CI); — = the sweep has no such variant or "
               f"no finished seed; best mean per column in bold.")
    return PaperTable(list(tables), list(metrics), variants, tables, caption)


def _mean_text(row: Row | None, key: str) -> tuple[str, str, bool]:
    """(mean, std, bold) in percent; ('—', '', False) when there is nothing."""
    if row is None or row.cells[key].summary.n == 0:
        return "—", "", False
    s = row.cells[key].summary
    return pct(s.mean), (pct(s.std) if s.n >= 2 else ""), row.cells[key].bold


def _delta(row: Row | None, key: str) -> tuple[str, bool]:
    """('+1.23', significant) or ('base', False) for the baseline, ('—', False) when there is none."""
    if row is None:
        return "—", False
    comp = row.comparisons.get(key)
    if comp is None:
        return ("base" if row.n else "—"), False
    if math.isnan(comp.delta):
        return "—", False
    p = comp.test.p_adjusted
    return f"{100 * comp.delta:+.2f}", (not math.isnan(p) and p < EXPECT_ALPHA)


def _plain_cells(paper: PaperTable, variant: str) -> list[str]:
    cells = []
    for name in paper.names:
        row = paper.row(name, variant)
        for key in paper.metrics:
            mean, std, bold = _mean_text(row, key)
            text = f"{mean} ± {std}" if std else mean
            delta, significant = _delta(row, key)
            cells += [f"**{text}**" if bold else text, delta + (SIGNIFICANT_MARK if significant else "")]
    return cells


def _heads(paper: PaperTable) -> list[str]:
    return [h for key in paper.metrics for h in (metric_label(key), "Δ")]


def render_paper_markdown(paper: PaperTable) -> str:
    head = ["Variant"] + [f"{paper.group_title(n)}: {h}" for n in paper.names for h in _heads(paper)]
    lines = [f"**Table: {', '.join(paper.names)}.** {paper.caption}", "",
             "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
             "| :-- | " + " | ".join(["--:"] * (len(head) - 1)) + " |"]
    for variant in paper.variants:
        lines.append("| " + " | ".join([variant.replace("|", "\\|")] + _plain_cells(paper, variant)) + " |")
    return "\n".join(lines) + "\n"


def render_paper_csv(paper: PaperTable) -> str:
    """Long format: one line per (sweep, variant, metric), with the numbers behind each cell and its run ids."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sweep", "dataset", "variant", "metric", "n", "mean_pct", "std_pct", "baseline", "delta_pct",
                     "ci_low_pct", "ci_high_pct", "test", "p_value", "p_holm", "run_ids"])

    def num(value: float) -> str:
        return "" if value is None or math.isnan(value) else f"{100 * value:.6f}"

    for variant in paper.variants:
        for name in paper.names:
            row = paper.row(name, variant)
            if row is None:
                continue
            table = paper.tables[name]
            for key in paper.metrics:
                cell, comp = row.cells[key], row.comparisons.get(key)
                s = cell.summary
                test = comp.test if comp else None
                writer.writerow([name, table.dataset, variant, key, s.n, num(s.mean) if s.n else "",
                                 num(s.std) if s.n > 1 else "", table.baseline,
                                 num(comp.delta) if comp else "", num(test.ci[0]) if test else "",
                                 num(test.ci[1]) if test else "", (test.name or test.note) if test else "",
                                 "" if test is None or math.isnan(test.p) else repr(test.p),
                                 "" if test is None or math.isnan(test.p_adjusted) else repr(test.p_adjusted),
                                 ";".join(cell.run_ids)])
    return buf.getvalue()


def render_paper_latex(paper: PaperTable) -> str:
    """A booktabs table with one \\multicolumn group per sweep; compiles with \\usepackage{booktabs} alone."""
    per_group = 2 * len(paper.metrics)
    groups = [(name, 2 + i * per_group, 1 + (i + 1) * per_group) for i, name in enumerate(paper.names)]
    lines = [
        f"% Paper table of sweeps {tex_escape(', '.join(paper.names))}, made from MLflow by: run_sweep.py report "
        f"{tex_escape(' '.join(paper.names))} --layout paper --metrics {tex_escape(','.join(paper.metrics))}",
        r"% Needs \usepackage{booktabs}; with \usepackage{graphicx} a table wider than the line is shrunk to fit.",
        FIT_MACRO,
        r"\begin{table}[tbp]", r"\centering", r"\small",
        rf"\caption{{{tex_escape(paper.caption)}}}",
        r"\label{tab:" + "-".join("".join(c if c.isalnum() else "-" for c in n) for n in paper.names) + "}",
        r"\setlength{\tabcolsep}{4pt}",
        r"\magtkdfit{%",
        r"\begin{tabular}{l" + "rr" * len(paper.metrics) * len(paper.names) + "}",
        r"\toprule",
        " & ".join([""] + [rf"\multicolumn{{{per_group}}}{{c}}{{{tex_escape(paper.group_title(n))}}}"
                           for n, _, _ in groups]) + r" \\",
        "".join(rf"\cmidrule(lr){{{first}-{last}}}" for _, first, last in groups),
        " & ".join(["Variant"] + [tex_escape(metric_label(k)) + r" & $\Delta$" for _ in paper.names
                                  for k in paper.metrics]) + r" \\",
        r"\midrule",
    ]
    for variant in paper.variants:
        cells = [tex_escape(variant)]
        for name in paper.names:
            row = paper.row(name, variant)
            for key in paper.metrics:
                mean, std, bold = _mean_text(row, key)
                if mean == "—":
                    cells.append("--")
                else:
                    body = rf"\textbf{{{mean}}}" if bold else mean
                    cells.append(body + (rf"\,{{\scriptsize$\pm${std}}}" if std else ""))
                delta, significant = _delta(row, key)
                cells.append(r"\textit{base}" if delta == "base" else "--" if delta == "—" else
                             f"${delta}" + (r"^{*}" if significant else "") + "$")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_paper_html(paper: PaperTable, command: str) -> str:
    per_group = 2 * len(paper.metrics)
    head1 = "<tr><th></th>" + "".join(f'<th class="group" colspan="{per_group}">{escape(paper.group_title(n))}</th>'
                                      for n in paper.names) + "</tr>"
    head2 = "<tr><th>Variant</th>" + "".join(f"<th>{escape(h)}</th>" for _ in paper.names
                                             for h in _heads(paper)) + "</tr>"
    body = []
    for variant in paper.variants:
        cells = [f"<td>{escape(variant)}</td>"]
        for name in paper.names:
            row = paper.row(name, variant)
            for key in paper.metrics:
                mean, std, bold = _mean_text(row, key)
                sd = f' <span class="sd">± {escape(std)}</span>' if std else ""
                cells.append(f'<td class="{"best" if bold else ""}">{escape(mean)}{sd}</td>')
                delta, significant = _delta(row, key)
                cells.append(f"<td>{escape(delta)}{SIGNIFICANT_MARK if significant else ''}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(', '.join(paper.names))}: MAGTKD paper table</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Ablations across sweeps: {escape(', '.join(paper.names))}</h1>",
        f'<p class="caption">{escape(paper.caption)}</p>',
        f'<div class="scroll"><table class="main"><thead>{head1}{head2}</thead><tbody>{"".join(body)}</tbody>'
        f"</table></div>",
        f'<p class="notes">Made from MLflow alone by <code>{escape(command)}</code>.</p>',
        "</body></html>"]) + "\n"
