"""Markdown, LaTeX (booktabs) and CSV from a `Table`.

All three are pure functions of the table: no clock, no paths, no hostnames, so two regenerations
are byte-identical. The CSV is long (one line per variant x metric) and carries the run id behind
every value, in seed order.
"""
from __future__ import annotations

import csv
import io
import math

from reports.stats import format_p, pct
from reports.table import Cell, Row, Table, metric_label

Columns = list[tuple[str, str, str]]


# ---- shared ------------------------------------------------------------------

def delta_text(row: Row, key: str) -> str:
    comp = row.comparisons.get(key)
    if comp is None:
        return "baseline"
    if math.isnan(comp.delta):
        return "—"
    low, high = comp.test.ci
    interval = "" if math.isnan(low) else f" [{100.0 * low:+.2f}, {100.0 * high:+.2f}]"
    return f"{100.0 * comp.delta:+.2f}{interval}"


def test_text(row: Row, key: str) -> str:
    comp = row.comparisons.get(key)
    return "baseline" if comp is None else comp.test.text()


def compare_header(table: Table) -> tuple[str, str]:
    return f"Δ {metric_label(table.metric)} [95% CI]", f"test vs {table.baseline}"


def per_class_title(table: Table) -> str:
    return (f"Per-class test F1 of sweep {table.sweep} (percent, mean ± sample std over the same finished seeds "
            f"as the main table; best per column in bold).")


def column_groups(columns: Columns, first_index: int) -> list[tuple[str, int, int]]:
    """(group, first column, last column) for header spans; column numbers start at `first_index`."""
    groups: list[tuple[str, int, int]] = []
    for i, (_, group, _) in enumerate(columns, start=first_index):
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1], i)
        else:
            groups.append((group, i, i))
    return groups


# ---- Markdown ----------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: Cell, row: Row) -> str:
    text = cell.text(row.n)
    return f"**{text}**" if cell.bold and cell.summary.n else text


def expected_text(row: Row) -> str:
    return "" if row.expected is None else row.expected.text()


def _md_table(table: Table, columns: Columns, compare: bool) -> list[str]:
    delta_head, test_head = compare_header(table)
    expects = compare and table.expects
    head = (["Variant", "n"] + [f"{g} {s}" for _, g, s in columns] + ([delta_head, test_head] if compare else [])
            + (["expected"] if expects else []))
    align = (([":--", "--:"] + ["--:"] * len(columns) + (["--:", ":--"] if compare else []))
             + ([":--"] if expects else []))
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "| " + " | ".join(align) + " |"]
    for row in table.rows:
        name = _md(row.variant) + (f" {row.marks}" if row.marks else "")
        cells = [_md_cell(row.cells[k], row) for k, _, _ in columns]
        if compare:
            cells += [delta_text(row, table.metric), _md(test_text(row, table.metric))]
        if expects:
            cells.append(expected_text(row))
        lines.append("| " + " | ".join([name, str(row.n)] + cells) + " |")
    return lines


def render_markdown(table: Table) -> str:
    """The table first under a short reading guide; the full caption (method, stage 1, sources) and the
    footnotes after it."""
    lines = [f"**Table: sweep {_md(table.sweep)}.** {_md(table.summary)}".rstrip()]
    if table.warning:
        lines += ["", f"> **{_md(table.warning)}**"]
    lines += [""] + _md_table(table, table.columns, table.compares) + [""]
    lines += ["Details: " + " ".join(_md(c) for c in table.caption), ""]
    # Two trailing spaces: a Markdown line break, so each footnote keeps its own line.
    lines += [_md(note) + "  " for note in table.footnotes[:-1]] + [_md(n) for n in table.footnotes[-1:]]
    if table.class_columns:
        lines += ["", f"**{_md(per_class_title(table))}**", ""] + _md_table(table, table.class_columns, False)
    return "\n".join(lines).rstrip() + "\n"


# ---- LaTeX -------------------------------------------------------------------

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "§": r"\S{}", "‡": r"$^\ddagger$", "—": "--",
                "…": r"\ldots{}", "◦": r"$\circ$", "<": r"$<$", ">": r"$>$", "|": r"\textbar{}"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)
    # Anything outside ASCII left over (a label in another script) would break pdflatex: spell it out.
    return "".join(ch if ord(ch) < 128 else f"\\symbol{{{ord(ch)}}}" for ch in out)


def _tex_cell(cell: Cell, row: Row) -> str:
    s = cell.summary
    if s.n == 0:
        return "--"
    body = pct(s.mean)
    if cell.bold:
        body = rf"\textbf{{{body}}}"
    if s.n >= 2:
        body += rf"\,{{\scriptsize$\pm${pct(s.std)}}}"
    if s.n != row.n:
        body += rf"\,{{\scriptsize($n{{=}}{s.n}$)}}"
    return body


def _tex_delta(row: Row, key: str) -> str:
    text = delta_text(row, key)
    if text == "baseline":
        return r"\textit{base}"
    return "--" if text == "—" else f"${text}$"


def _tex_test(row: Row, key: str) -> str:
    comp = row.comparisons.get(key)
    if comp is None:
        return "--"
    if not comp.test.made:
        return tex_escape(comp.test.note)
    holm = "" if math.isnan(comp.test.p_adjusted) else f"; Holm {format_p(comp.test.p_adjusted)}"
    return f"{format_p(comp.test.p)}{holm} ({comp.test.n})"


def _tex_tabular(table: Table, columns: Columns, compare: bool) -> list[str]:
    groups = column_groups(columns, 3)
    tail = 2 if compare else 0
    lines = [
        r"\magtkdfit{%",
        r"\begin{tabular}{l" + "r" * (1 + len(columns)) + ("rc" if compare else "") + "}",
        r"\toprule",
        " & ".join(["", ""] + [rf"\multicolumn{{{last - first + 1}}}{{c}}{{{tex_escape(group)}}}"
                               for group, first, last in groups] + [""] * tail) + r" \\",
        "".join(rf"\cmidrule(lr){{{first}-{last}}}" for _, first, last in groups),
    ]
    head = ["Variant", "$n$"] + [tex_escape(short) for _, _, short in columns]
    if compare:
        head += [r"$\Delta$ [95\% CI]", rf"$p$; Holm ($n$) vs {tex_escape(table.baseline)}"]
    lines += [" & ".join(head) + r" \\", r"\midrule"]
    for row in table.rows:
        name = tex_escape(row.variant) + (tex_escape(row.marks) if row.marks else "")
        cells = [_tex_cell(row.cells[k], row) for k, _, _ in columns]
        if compare:
            cells += [_tex_delta(row, table.metric), _tex_test(row, table.metric)]
        lines.append(" & ".join([name, str(row.n)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    return lines


def _tex_label(table: Table, suffix: str = "") -> str:
    return "tab:" + "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in table.sweep) + suffix


# Shrinks a tabular to the line width only when it is wider (and only when graphicx is loaded), so the
# file compiles with booktabs alone and narrow tables keep their natural size.
FIT_MACRO = (r"\providecommand{\magtkdfit}[1]{\ifdefined\resizebox"
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{#1}\else#1\fi}")


def render_latex(table: Table) -> str:
    """`table` floats with booktabs tabulars; compiles with \\usepackage{booktabs} alone."""
    caption = " ".join(tex_escape(c) for c in table.caption)
    if table.warning:
        caption = r"\textbf{" + tex_escape(table.warning) + "} " + caption
    lines = [
        f"% Ablation table of sweep {tex_escape(table.sweep)}, made from MLflow by: run_sweep.py report "
        f"{tex_escape(table.sweep)}",
        r"% Needs \usepackage{booktabs}; with \usepackage{graphicx} a table wider than the line is shrunk to fit.",
        FIT_MACRO,
        r"\begin{table}[tbp]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption}}}",
        rf"\label{{{_tex_label(table)}}}",
        r"\setlength{\tabcolsep}{4pt}",
    ]
    lines += _tex_tabular(table, table.columns, table.compares)
    if table.footnotes:
        lines += [r"\par\smallskip",
                  r"\parbox{\linewidth}{\footnotesize " + r" \\ ".join(tex_escape(n) for n in table.footnotes) + "}"]
    lines.append(r"\end{table}")
    if table.class_columns:
        lines += ["", r"\begin{table}[tbp]", r"\centering", r"\small",
                  rf"\caption{{{tex_escape(per_class_title(table))}}}", rf"\label{{{_tex_label(table, '-per-class')}}}",
                  r"\setlength{\tabcolsep}{4pt}"]
        lines += _tex_tabular(table, table.class_columns, False)
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---- CSV ---------------------------------------------------------------------

CSV_COLUMNS = ["sweep", "variant", "row", "metric", "mlflow_metric", "n", "mean", "std", "mean_pct", "std_pct",
               "bold", "baseline", "delta_pct", "ci_low_pct", "ci_high_pct", "se_pct", "df", "test", "t_statistic",
               "p_value", "p_holm", "n_pairs", "seeds", "run_ids", "values", "missing_seeds", "flags",
               "expected", "expected_p", "expected_met"]   # the spec's expectation, on the compared metric's line


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _pct6(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{100.0 * value:.6f}"


def _expected_fields(row: Row, compared: bool) -> list:
    e = row.expected
    if e is None or not compared:
        return ["", "", ""]
    return [e.must if e.must == "below" else f"equivalent {e.margin!r}", _num(e.p),
            "" if e.met is None else int(e.met)]


def render_csv(table: Table) -> str:
    """Long format: one line per (variant, metric); `run_ids` and `values` are ';'-joined in `seeds` order.

    Difference and paired test are given for every metric (the Markdown/LaTeX tables show the --metric one).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for index, row in enumerate(table.rows, start=1):
        flags = ((["missing_seeds"] if row.missing else []) + (["not_in_variant_list"] if row.unlisted else [])
                 + (["shared_stage1_understates"] if row.understated else []))
        for key, _, _ in table.all_columns:
            cell = row.cells[key]
            s = cell.summary
            comp = row.comparisons.get(key)
            if comp is None:
                compared = ["", "", "", "", "", "baseline" if table.compares else "", "", "", "", ""]
            else:
                t = comp.test
                compared = [_pct6(comp.delta), _pct6(t.ci[0]), _pct6(t.ci[1]), _pct6(t.se), _num(t.df),
                            t.name or t.note, _num(t.statistic), _num(t.p), _num(t.p_adjusted), t.n]
            writer.writerow([
                table.sweep, row.variant, index, key, f"selected_{key}", s.n, _num(s.mean), _num(s.std),
                pct(s.mean) if s.n else "", pct(s.std) if s.n > 1 else "", int(cell.bold), table.baseline,
                *compared,
                ";".join(cell.seeds), ";".join(cell.run_ids), ";".join(repr(v) for v in cell.values),
                ";".join(f"{seed}:{why}" for seed, why in row.missing), ";".join(flags),
                *_expected_fields(row, key == table.metric),
            ])
    return buf.getvalue()
