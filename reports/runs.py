"""`runs [NAME] [--best K]`: what the MLflow store holds, as plain text tables.

Without NAME: one line per sweep. With NAME: one line per trial. With --best K: the K best
configurations by a metric (dev weighted F1 by default: picking configs on test would leak), each ranked by
the mean over its finished seeds (a variant of an ablation; one trial of a search, a bundle of seeds under
`tune --seeds`): the best single seed would reward the luckiest draw. For each, what makes it differ from
the sweep's baseline variant (an ablation) or the values it chose (a search), as dotted overrides ready for
the command line. Scores are printed in percent; MLflow holds them as 0-1.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

from reports.stats import pct
from reports.store import STATES, ReportError, Sweep, Trial, list_sweeps, load_sweep
from sweep.seed_members import mean_std, seed_groups

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


def configurations(sweep: Sweep, key: str) -> list[list[Trial]]:
    """The finished seeds (with a finite `selected_KEY`) of each configuration, best mean first: an ablation's
    variants, or a search's trials (the seeds of one bundle together). Ties go to the earliest run, so the
    answer does not flicker."""
    done = [t for t in sweep.trials if t.status == "FINISHED" and not math.isnan(_metric(t, key))]
    if sweep.kind == "tune":
        groups = seed_groups(done, lambda t: t.tags)
    else:
        by_variant: dict[str, list[Trial]] = {}
        for t in done:
            by_variant.setdefault(t.variant, []).append(t)
        groups = list(by_variant.values())
    return sorted(groups, key=lambda g: (-_mean(g, key), min(t.start_time for t in g), g[0].run_id))


def _mean(group: list[Trial], key: str) -> float:
    return mean_std([_metric(t, key) for t in group])[0]


def _score(group: list[Trial], key: str) -> str:
    """'61.23 ± 0.45 over 3 seeds' (sample std), or '61.23, seed 0' for one seed."""
    values = [v for v in (_metric(t, key) for t in group) if not math.isnan(v)]   # a finished run may lack test
    if not values:
        return "—"
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{pct(mean)}, seed {group[0].seed}" if len(group) == 1 else pct(mean)
    return f"{pct(mean)} ± {pct(std)} over {len(values)} seeds"


def sweeps_listing(tracking_uri: str, key: str = "dev_wf1") -> str:
    sweeps = list_sweeps(tracking_uri)
    if not sweeps:
        return f"no sweeps in {tracking_uri}"
    rows = []
    for s in sorted(sweeps, key=lambda s: (s.start_time, s.name)):
        ranked = configurations(s, key)
        best_text = "—" if not ranked else f"{_score(ranked[0], key)} ({ranked[0][0].variant})"
        test_text = "—" if not ranked else _score(ranked[0], "test_wf1")
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
    groups = configurations(sweep, key)
    if not groups:
        return f"sweep {name}: no finished trial with selected_{key}"
    keys = key_params(sweep.trials)
    unit = "trials" if sweep.kind == "tune" else "variants"
    lines = [f"sweep {name}: the {min(k, len(groups))} best of {len(groups)} {unit} by selected_{key}, each the mean "
             f"(± sample std) over its finished seeds (scores in percent; MLflow holds them as 0-1)"]
    for rank, group in enumerate(groups[:k], start=1):
        t = group[0]
        runs = f"run {t.run_id}" if len(group) == 1 else "runs " + " ".join(r.run_id for r in group)
        lines.append(f"\n#{rank}  {t.variant}  {key} {_score(group, key)}  test_wf1 {_score(group, 'test_wf1')}  "
                     f"{runs}")
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
