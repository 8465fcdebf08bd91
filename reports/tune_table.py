"""The table of a tune sweep: what each trial chose and how it scored, best first.

One row per trial, sorted by the sweep's objective (best first; failed and unfinished trials last, unranked),
one column per searched parameter (grouped choices such as width/heads appear as their parts; a blank cell
is a conditional parameter that was not active for that trial), the objective, the test scores at the
selected epoch, and how far the trial got: a trial the scheduler (ASHA) stopped early is marked with the
epoch it reached, since its score is that of a shorter run. Markdown and LaTeX show the top K rows, CSV and
HTML all of them. A trial of `tune --seeds k` is one row: its scores are the mean +- sample std over its
finished seeds (reports/tune.py search_trials), with a seeds column; the CSV adds each std and the seeds'
MLflow run ids.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from reports.render import FIT_MACRO, tex_escape
from reports.stats import pct
from reports.store import Sweep, Trial
from reports.table import metric_label
from reports.tune import chosen_values, objective_of, scored, search_trials, searched_keys, stopped_at

TEST_KEYS = ("selected_test_wf1", "selected_test_acc", "selected_test_mf1")
STOPPED_MARK = "◦"
DEFAULT_TOP = 10


@dataclass
class TuneRow:
    rank: int | None                # 1 = best objective; None for trials without a score
    trial: Trial
    name: str                       # Ray's trial id
    values: dict[str, Any]          # searched key -> chosen value; absent = inactive
    objective: float                # nan without a score
    stopped: tuple[int, int] | None  # (epoch reached, epochs planned) when the scheduler stopped it

    @property
    def seeds(self) -> str:
        """'3' (every seed finished), '2/3', or '1' for a trial of one seed."""
        runs = self.trial.seed_runs
        if not runs:
            return "1"
        done = sum(1 for r in runs if r.status == "FINISHED")
        return str(len(runs)) if done == len(runs) else f"{done}/{len(runs)}"

    def state(self) -> str:
        if self.trial.status != "FINISHED":
            return self.trial.status
        return f"stopped at epoch {self.stopped[0]}/{self.stopped[1]}" if self.stopped else "complete"


@dataclass
class TuneTable:
    sweep: str
    objective: str                  # MLflow metric, e.g. selected_dev_wf1
    direction: str                  # maximize | minimize
    params: list[str]
    rows: list[TuneRow]
    caption: list[str]
    multi_seed: bool = False        # some trial trained several seeds (a seeds column, mean +- std)

    @property
    def objective_label(self) -> str:
        return _label(self.objective) + " (objective)"


def _label(metric: str) -> str:
    return metric_label(metric[len("selected_"):] if metric.startswith("selected_") else metric)


def value_text(value: Any) -> str:
    """A chosen value, short: 3 significant digits for floats, true/false for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _score(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else pct(value)


def _score_of(trial: Trial, key: str) -> str:
    """A trial's score at `key`; mean +- std over the seeds of a multi-seed trial."""
    if trial.status != "FINISHED":
        return _score(math.nan)
    text = _score(trial.metrics.get(key, math.nan))
    std = trial.metrics.get(f"{key}_std", math.nan) if trial.seed_runs else math.nan
    return f"{text} ± {pct(std)}" if math.isfinite(std) else text


def build_tune_table(sweep: Sweep) -> TuneTable:
    objective, direction = objective_of(sweep)
    keys = searched_keys(sweep)
    sign = -1.0 if direction == "maximize" else 1.0
    rows = [TuneRow(None, t, t.tags.get("trial_id") or t.run_id, chosen_values(t, keys),
                    t.metrics[objective] if scored(t, objective) else math.nan, stopped_at(t))
            for t in search_trials(sweep)]
    # Best first; ties keep launch order. Trials without a score follow, in launch order.
    rows.sort(key=lambda r: (math.isnan(r.objective), sign * r.objective if not math.isnan(r.objective) else 0.0,
                             r.trial.start_time, r.trial.run_id))
    for rank, row in enumerate((r for r in rows if not math.isnan(r.objective)), start=1):
        row.rank = rank
    n_stopped = sum(1 for r in rows if r.stopped)
    caption = [
        f"Tune sweep {sweep.name} on dataset {sweep.tags.get('dataset', 'unknown')}: {len(rows)} trial(s), best "
        f"first by {objective} ({'higher' if direction == 'maximize' else 'lower'} is better).",
        "One column per searched parameter (a blank cell: a conditional parameter not active for that trial); "
        "scores in percent at the epoch selected on dev.",
    ]
    multi_seed = any(r.trial.seed_runs for r in rows)
    if multi_seed:
        seeds = sweep.tags.get("seeds", "").strip("[]").replace(" ", "") or "?"
        optimised = "the mean"
        if sweep.tags.get("seed_objective") == "mean-std":
            optimised = "the mean minus one std" if direction == "maximize" else "the mean plus one std"
        caption.append(f"Each trial trained seeds {seeds} of its config as one bundle: scores are the mean ± sample "
                       f"std over its finished seeds (column seeds), and Optuna optimised {optimised}; every seed "
                       f"is its own MLflow run.")
    if n_stopped:
        caption.append(f"{STOPPED_MARK} {n_stopped} trial(s) stopped early by the scheduler (ASHA) at the epoch "
                       f"shown: their score is that of a shorter run (the Optuna study holds them as PRUNED).")
    return TuneTable(sweep.name, objective, direction, keys, rows, caption, multi_seed)


def tune_table_head(table: TuneTable) -> list[str]:
    return (["#", "trial", table.objective_label] + table.params
            + [_label(k) for k in TEST_KEYS] + ["epochs"] + (["seeds"] if table.multi_seed else []))


def tune_table_cells(table: TuneTable, row: TuneRow) -> list[str]:
    if row.stopped:
        reached = f"{STOPPED_MARK} {row.stopped[0]}/{row.stopped[1]}"
    elif row.trial.status != "FINISHED":
        reached = row.trial.status
    else:
        reached = "all"
    objective = _score_of(row.trial, table.objective) if math.isfinite(row.objective) else _score(math.nan)
    return ([str(row.rank) if row.rank else "—", row.name, objective]
            + [value_text(row.values[k]) if k in row.values else "" for k in table.params]
            + [_score_of(row.trial, k) for k in TEST_KEYS] + [reached]
            + ([row.seeds] if table.multi_seed else []))


def _top(table: TuneTable, top: int) -> tuple[list[TuneRow], str]:
    shown = table.rows[:top] if top > 0 else table.rows
    rest = len(table.rows) - len(shown)
    return shown, (f"The top {len(shown)} of {len(table.rows)} trials; every trial is in table.csv and report.html."
                   if rest else "")


def render_tune_markdown(table: TuneTable, top: int = DEFAULT_TOP) -> str:
    def md(text: str) -> str:
        return text.replace("|", "\\|")

    shown, more = _top(table, top)
    head = tune_table_head(table)
    align = ["--:", ":--"] + ["--:"] * (len(head) - 2)
    lines = [f"**Table: tune sweep {md(table.sweep)}.** " + " ".join(md(c) for c in table.caption), "",
             "| " + " | ".join(md(h) for h in head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(md(c) for c in tune_table_cells(table, row)) + " |" for row in shown]
    if more:
        lines += ["", md(more)]
    return "\n".join(lines) + "\n"


def render_tune_latex(table: TuneTable, top: int = DEFAULT_TOP) -> str:
    shown, more = _top(table, top)
    head = tune_table_head(table)
    label = "tab:" + "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in table.sweep) + "-tune"
    lines = [f"% Tune table of sweep {tex_escape(table.sweep)}, made from MLflow by: run_sweep.py report "
             f"{tex_escape(table.sweep)}",
             r"% Needs \usepackage{booktabs}; with \usepackage{graphicx} a table wider than the line is shrunk to fit.",
             FIT_MACRO, r"\begin{table}[tbp]", r"\centering", r"\small",
             rf"\caption{{{' '.join(tex_escape(c) for c in table.caption)}}}", rf"\label{{{label}}}",
             r"\setlength{\tabcolsep}{4pt}", r"\magtkdfit{%",
             r"\begin{tabular}{rl" + "r" * (len(head) - 2) + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
    for row in shown:
        lines.append(" & ".join(tex_escape(c) for c in tune_table_cells(table, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if more:
        lines += [r"\par\smallskip", r"\parbox{\linewidth}{\footnotesize " + tex_escape(more) + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _csv_value(value: Any) -> str:
    """A chosen value at full precision: numbers as Python writes them, true/false, text as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def render_tune_csv(table: TuneTable) -> str:
    """Every trial, one line each, best first; the chosen values at full precision (blank: inactive)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    metrics = ["selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1", *TEST_KEYS]
    writer.writerow(["sweep", "rank", "trial_id", "run_id", "status", "state", "stopped_at_epoch", "planned_epochs",
                     "selected_epoch", "objective", table.objective, *table.params,
                     *[m for m in metrics if m != table.objective], "overrides",
                     *(["seeds", "seed_run_ids", *[f"{m}_std" for m in metrics]] if table.multi_seed else [])])
    for row in table.rows:
        t = row.trial
        writer.writerow([table.sweep, row.rank or "", row.name, t.run_id, t.status, row.state(),
                         row.stopped[0] if row.stopped else "", row.stopped[1] if row.stopped else "",
                         _num(t.metrics.get("selected_epoch")), table.objective, _num(row.objective),
                         *[_csv_value(row.values[k]) if k in row.values else "" for k in table.params],
                         *[_num(t.metrics.get(m)) for m in metrics if m != table.objective],
                         t.tags.get("overrides", ""),
                         *([row.seeds, " ".join(r.run_id for r in t.seed_runs),
                            *[_num(t.metrics.get(f"{m}_std")) for m in metrics]] if table.multi_seed else [])])
    return buf.getvalue()
