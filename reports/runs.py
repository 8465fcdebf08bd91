"""`runs [NAME] [--best K]`: what the MLflow store holds, as plain text tables.

Without NAME: one line per sweep. With NAME: one line per trial. With --best K: the K best finished
trials by a metric (dev weighted F1 by default: picking configs on test would leak) and, for each,
what makes it differ from the sweep's baseline variant (an ablation) or the values it chose (a search), as
dotted overrides ready for the command line. Scores are printed in percent; MLflow holds them as 0-1.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

from reports.stats import pct
from reports.store import STATES, ReportError, Sweep, Trial, list_sweeps, load_sweep

# Bookkeeping, not a setting a user chose: the seed is its own column; a shared stage-1 seed is the sweep's.
NOT_KEY = {"seed", "stage1.shared_seed"}


def text_table(head: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _when(ms: int) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _metric(trial: Trial, key: str) -> float:
    value = trial.metrics.get(f"selected_{key}")
    return value if value is not None and math.isfinite(value) else math.nan


def _states(sweep: Sweep) -> str:
    counts = sweep.by_state()
    order = [s for s in STATES if s in counts] + sorted(set(counts) - set(STATES))
    return ", ".join(f"{counts[s]} {s}" for s in order) or "no trials"


def _best(sweep: Sweep, key: str) -> Trial | None:
    done = [t for t in sweep.trials if t.status == "FINISHED" and not math.isnan(_metric(t, key))]
    # Highest value; ties go to the earliest run so the answer does not flicker.
    return max(done, key=lambda t: (_metric(t, key), -t.start_time, t.run_id), default=None)


def sweeps_listing(tracking_uri: str, key: str = "dev_wf1") -> str:
    sweeps = list_sweeps(tracking_uri)
    if not sweeps:
        return f"no sweeps in {tracking_uri}"
    rows = []
    for s in sorted(sweeps, key=lambda s: (s.start_time, s.name)):
        best = _best(s, key)
        best_text = "—" if best is None else f"{pct(_metric(best, key))} ({best.variant}, seed {best.seed})"
        test_text = "—" if best is None else pct(_metric(best, "test_wf1"))
        rows.append([s.name, s.kind, s.tags.get("dataset", "?"), _when(s.start_time), _states(s), best_text,
                     test_text])
    return ("scores in percent (MLflow holds them as 0-1)\n"
            + text_table(["sweep", "kind", "dataset", "started", "trials", f"best {key}", "its test_wf1"], rows))


def key_params(trials: list[Trial]) -> list[str]:
    """Params whose values differ between the trials: what the variants and the search change."""
    keys = sorted({k for t in trials for k in t.params} - NOT_KEY)
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def trials_listing(name: str, tracking_uri: str) -> str:
    sweep = load_sweep(name, tracking_uri)
    keys = key_params(sweep.trials)
    head = ["variant", "seed"] + keys + ["sel.epoch", "dev_wf1", "test_wf1", "test_acc", "test_mf1", "state", "run id"]
    rows = []
    for t in sweep.trials:
        epoch = t.metrics.get("selected_epoch")
        rows.append([t.variant, t.seed] + [t.params.get(k, "") for k in keys]
                    + ["—" if epoch is None else str(int(epoch))]
                    + [("—" if math.isnan(_metric(t, m)) else pct(_metric(t, m)))
                       for m in ("dev_wf1", "test_wf1", "test_acc", "test_mf1")]
                    + [t.status + (f" ({t.tags['failure_reason']})" if t.tags.get("failure_reason") else ""), t.run_id])
    first = 2 + len(keys)
    title = (f"sweep {sweep.name} ({sweep.kind}, dataset {sweep.tags.get('dataset', '?')}, started "
             f"{_when(sweep.start_time)}): {_states(sweep)}; selected-epoch scores in percent")
    return title + "\n" + text_table(head, rows, right=set(range(first, first + 5)))


def differing_keys(trial: Trial, reference: Trial) -> list[str]:
    """The settings (MLflow params) in which `trial` differs from `reference`, bookkeeping keys aside."""
    keys = sorted((set(trial.params) | set(reference.params)) - NOT_KEY)
    return [k for k in keys if trial.params.get(k) != reference.params.get(k)]


def _baseline_trial(sweep: Sweep, seed: str) -> Trial | None:
    """The baseline variant's finished trial of the same seed, else of any seed (their settings are the same)."""
    finished = [t for t in sweep.trials if t.variant == sweep.baseline and t.status == "FINISHED"]
    return next((t for t in finished if t.seed == seed), finished[0] if finished else None)


def best_listing(name: str, tracking_uri: str, k: int, key: str = "dev_wf1") -> str:
    if k < 1:
        raise ReportError("--best K needs K >= 1")
    sweep = load_sweep(name, tracking_uri)
    done = [t for t in sweep.trials if t.status == "FINISHED" and not math.isnan(_metric(t, key))]
    if not done:
        return f"sweep {name}: no finished trial with selected_{key}"
    ranked = sorted(done, key=lambda t: (-_metric(t, key), t.start_time, t.run_id))[:k]
    keys = key_params(sweep.trials)
    lines = [f"sweep {name}: the {len(ranked)} best of {len(done)} finished trials by selected_{key} "
             f"(scores in percent; MLflow holds them as 0-1)"]
    for rank, t in enumerate(ranked, start=1):
        lines.append(f"\n#{rank}  {t.variant}  seed {t.seed}  {key} {pct(_metric(t, key))}  "
                     f"test_wf1 {pct(_metric(t, 'test_wf1'))}  run {t.run_id}")
        reference = _baseline_trial(sweep, t.seed) if sweep.kind != "tune" else None
        if reference is not None:
            differs = differing_keys(t, reference)
            overrides = " ".join(f"{k}={t.params.get(k, '(unset)')}" for k in differs)
            lines.append(f"    differs from the baseline {sweep.baseline} in: "
                         f"{overrides or '(nothing: this is the baseline config)'}")
        else:
            overrides = " ".join(f"{k}={t.params[k]}" for k in keys if k in t.params)
            lines.append(f"    differs from the other trials in: {overrides or '(nothing: the common config)'}")
        if t.tags.get("overrides") not in (None, "", "{}"):
            lines.append(f"    variant overrides (tag): {t.tags['overrides']}")
        if t.artifact_uri:
            lines.append(f"    full config: {t.artifact_uri.rstrip('/')}/config.yaml")
    return "\n".join(lines)
