"""Figures for the HTML report as PNG bytes (matplotlib's Agg canvas, no pyplot, no display needed).

Using `Figure` + `FigureCanvasAgg` directly leaves matplotlib's global backend alone, so a report made
inside another program (the sweep driver) changes nothing there.
"""
from __future__ import annotations

import io
import math
import textwrap

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.stats import format_p
from reports.table import Table, metric_label

BASE_COLOR = "#1f4e79"
OTHER_COLOR = "#7fa7cc"


def _label(text: str, width: int = 14) -> str:
    """A variant name safe for matplotlib ('$' would start mathtext) and wrapped for a tick label."""
    return "\n".join(textwrap.wrap(text.replace("$", r"\$"), width, break_long_words=True)) or " "


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software/date metadata: the same report gives the same image bytes.
    # bbox_inches="tight": rotated tick labels are never cut off at the figure's edge.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()


def variant_bars(table: Table, key: str, rows=None) -> bytes:
    """Mean of `key` per variant (or per row of `rows`) as horizontal bars (names on the y axis never overlap),
    error bars = sample std, one dot per seed; the x axis is cut to the data so that a point's difference is
    visible."""
    rows = table.rows if rows is None else rows
    fig = Figure(figsize=(8.0, 0.34 * len(rows) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    means = [100 * r.cells[key].summary.mean if r.cells[key].summary.n else 0.0 for r in rows]
    stds = [100 * r.cells[key].summary.std if r.cells[key].summary.n > 1 else 0.0 for r in rows]
    colors = [BASE_COLOR if r.variant == table.baseline else OTHER_COLOR for r in rows]
    ax.barh(ys, means, xerr=stds, color=colors, capsize=3, edgecolor="black", linewidth=0.6, height=0.7, zorder=2)
    for y, row in zip(ys, rows):
        values = row.cells[key].values
        for i, v in enumerate(values):  # fixed offsets instead of random jitter: the image is reproducible
            offset = (i - (len(values) - 1) / 2) * 0.15
            ax.plot(100 * v, y + offset, "o", color="black", markersize=3, zorder=3)
        if not values:  # at the left of the axes, whatever the x range (x in axes units, y in data)
            ax.text(0.01, y, "no finished run", va="center", fontsize=8, transform=ax.get_yaxis_transform())
    finite = [100 * v for r in rows for v in r.cells[key].values]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_xlim(max(0.0, lo - 3 * pad), min(100.0, hi + pad))
    labels = [_label(r.variant + (f" {r.marks}" if r.marks else ""), 40) + f" (n={r.n})" for r in rows]
    ax.set_yticks(ys, labels, fontsize=9)
    ax.invert_yaxis()   # table order, top to bottom
    ax.set_xlabel(f"{metric_label(key)} (percent)")
    dark = "; dark: baseline" if table.compares else ""
    ax.set_title(f"{_label(table.sweep, 60)}: {metric_label(key)}, mean ± std over seeds (dots: seeds{dark})",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    return _png(fig)


MET_COLOR, NOT_MET_COLOR = "#1e7b34", "#b03a2e"


def forest(table: Table) -> bytes:
    """Every compared row's Δ against the baseline with its 95% CI (the picture an ablation is read from):
    the zero line, the equivalence margin when the spec states one, and each row's Δ, CI and Holm p as text.
    Colour: green = the spec's expectation met, red = not met, blue = no expectation."""
    rows = [r for r in table.rows if table.metric in r.comparisons]
    fig = Figure(figsize=(9.0, 0.36 * max(1, len(rows)) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    margins = {r.expected.margin for r in rows if r.expected is not None and r.expected.must == "equivalent"}
    for margin in sorted(margins):
        ax.axvspan(-100 * margin, 100 * margin, color="#d9d9d9", alpha=0.6, zorder=0)
    ax.axvline(0.0, color="black", linewidth=1.0, zorder=1)
    for y, row in enumerate(rows):
        comp = row.comparisons[table.metric]
        low, high = comp.test.ci
        color = BASE_COLOR if row.expected is None or row.expected.met is None else (
            MET_COLOR if row.expected.met else NOT_MET_COLOR)
        if not math.isnan(low):
            ax.plot([100 * low, 100 * high], [y, y], color=color, linewidth=2.0, zorder=2)
        if not math.isnan(comp.delta):
            ax.plot(100 * comp.delta, y, "s", color=color, markersize=6, zorder=3)
        holm = comp.test.p_adjusted
        p_text = "" if math.isnan(holm) else f"  Holm p={format_p(holm)}"
        # Right of the axes (x in axes units, y in data): every row's numbers in one column.
        ax.text(1.02, y, f"{100 * comp.delta:+.2f}" + ("" if math.isnan(low) else
                                                       f" [{100 * low:+.2f}, {100 * high:+.2f}]") + p_text,
                transform=ax.get_yaxis_transform(), va="center", fontsize=8, family="monospace")
    ax.set_yticks(range(len(rows)), [_label(r.variant + (f" {r.marks}" if r.marks else ""), 40) for r in rows],
                  fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)   # table order, top to bottom
    ax.set_xlabel(f"Δ {metric_label(table.metric)} against {table.baseline} (points; 95% CI)")
    band = ("; grey band: equivalence margin " + ", ".join(f"±{100 * m:.1f}" for m in sorted(margins))
            if margins else "")   # said in the title: a legend box would cover the bottom row's interval
    ax.set_title(f"{_label(table.sweep, 60)}: left of 0 = below {table.baseline}{band}", fontsize=10)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    return _png(fig)


def dev_curves(table: Table, histories: dict[str, list[tuple[int, float]]], key: str = "dev_wf1",
               rows=None) -> bytes:
    """Per-epoch dev weighted F1: one line per variant (the mean over its seeds) with a band of ± one sample
    std where two or more seeds reached that epoch; the legend sits beside the axes, outside the curves."""
    rows = table.rows if rows is None else rows
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10" if len(rows) <= 10 else "tab20"]
    drawn = 0
    for i, row in enumerate(rows):
        color = cmap(i % cmap.N)
        run_ids = row.cells[table.metric].run_ids or row.cells["dev_wf1"].run_ids
        curves = [histories.get(r, []) for r in run_ids]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted({s for c in curves for s, _ in c})
        mean, low, high = [], [], []
        for step in steps:
            vals = [100 * v for c in curves for s, v in c if s == step]
            m = math.fsum(vals) / len(vals)
            sd = math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            mean.append(m)
            low.append(m - sd)
            high.append(m + sd)
        ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        ax.plot(steps, mean, color=color, linewidth=1.8, label=f"{_label(row.variant, 30)} (n={len(curves)})")
        drawn += 1
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric_label(key)} (percent)")
    ax.set_title(f"{_label(table.sweep, 60)}: {metric_label(key)} per epoch (line: mean over seeds; band: ± std)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if drawn <= 16 else 2,
                  frameon=False)
    else:
        ax.text(0.5, 0.5, "no per-epoch history in MLflow", transform=ax.transAxes, ha="center")
    return _png(fig)


def optimisation_history(points: list[tuple[int, float]], objective: str, direction: str = "maximize") -> bytes:
    """Objective per trial in launch order, with the best so far."""
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    xs = [n for n, _ in points]
    ys = [100 * v for _, v in points]
    ax.plot(xs, ys, "o", color=OTHER_COLOR, markeredgecolor="black", markersize=5, label="trial")
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if direction == "maximize" else min(running, y))
        best.append(running)
    ax.step(xs, best, where="post", color=BASE_COLOR, linewidth=2, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (launch order)")
    ax.set_ylabel(f"{objective} (%)")
    ax.set_title(f"Optimisation history: {objective}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def param_importances(importances: dict[str, float], evaluator: str) -> bytes:
    names = list(importances)[::-1]  # most important at the top
    fig = Figure(figsize=(7.0, 0.5 * len(names) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=BASE_COLOR)
    for y, n in enumerate(names):
        ax.text(importances[n], y, f" {importances[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(importances.values()) * 1.2 if importances else 1)
    ax.set_xlabel("importance (normalised to sum 1)")
    ax.set_title(f"Parameter importances ({evaluator})", fontsize=10)
    return _png(fig)


# ---- Optuna's own plots (optuna.visualization.matplotlib) ------------------------------------------

MIN_TRIALS_FOR_CONTOUR = 6  # a contour through fewer points is mostly interpolation


def _optuna_png(draw, width: float, height: float) -> bytes:
    """Run one of Optuna's matplotlib plot functions and return its figure as PNG.

    They draw through pyplot and switch the global style to ggplot: rc_context puts the style back, and
    the figure is closed so that a report made inside another program leaves no figure behind."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # matplotlib widening a range where all trials agree
        result = draw()
        axes = result.flat[0] if hasattr(result, "flat") else result
        fig = axes.figure
        try:
            fig.set_size_inches(width, height)
            return _png(fig)
        finally:
            plt.close(fig)


def optuna_figures(study, importances: dict[str, float], objective: str) -> list[tuple[str, bytes, str]]:
    """Parallel coordinates, one slice per parameter and, with enough trials, a contour of the two most
    important parameters: (title, png, caption) each. Optuna draws COMPLETE trials only."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({p for t in complete for p in t.params}, key=lambda p: (-importances.get(p, 0.0), p))
    if len(complete) < 2 or not params:
        return []
    why = (f"the {len(complete)} trials that ran their whole budget (trials stopped early are left out, as "
           f"Optuna leaves out pruned trials); objective {objective}.")
    figures = [
        ("Parallel coordinates", _optuna_png(lambda: ovm.plot_parallel_coordinate(study, params=params,
                                                                                    target_name=objective),
                                             max(8.0, 1.3 * len(params) + 2), 4.8),
         f"Optuna's parallel-coordinate plot: one line per trial through its chosen values, coloured by the "
         f"objective; {why} A conditional parameter that was not active for a trial is drawn at 'None'."),
        ("Slices: objective against each parameter", _optuna_png(
            lambda: ovm.plot_slice(study, params=params, target_name=objective),
            min(18.0, 3.2 * len(params) + 1), 3.8),
         f"Optuna's slice plot: the objective against each parameter's value, darker dots are later trials; {why}"),
    ]
    top = [p for p in importances if p in params][:2]
    both = [t for t in complete if all(p in t.params for p in top)]
    if len(top) == 2 and len(both) >= MIN_TRIALS_FOR_CONTOUR:
        figures.append((f"Contour: {top[0]} and {top[1]}", _optuna_png(
            lambda: ovm.plot_contour(study, params=top, target_name=objective), 7.0, 5.5),
            f"Optuna's contour plot of the objective over the two most important parameters (fANOVA), "
            f"interpolated between the {len(both)} trials that set both (dots)."))
    return figures
