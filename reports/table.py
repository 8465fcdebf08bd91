"""The ablation table as data: rows = variants in sweep order, cells = mean +- std over seeds with run ids.

Every renderer (Markdown, LaTeX, CSV, HTML) draws from one `Table`, so the formats cannot disagree.
Only FINISHED child runs enter a number; the others are counted in footnotes.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from reports.stats import (BOOTSTRAP_SEED, LEVEL, MIN_PAIRS, REPLICATES, TEST_NAME, TTEST_NAME, PairedTest,
                           Predictions, Summary, bootstrap_test, equivalence_p, format_p, holm, paired_test, pct,
                           summarize)
from reports.store import ReportError, Sweep, Trial, stands_for, trial_predictions

# (key, split, short name); the MLflow metric is "selected_" + key.
MAIN_METRICS = [("dev_wf1", "dev", "wF1"), ("dev_acc", "dev", "Acc"), ("dev_mf1", "dev", "mF1"),
                ("test_wf1", "test", "wF1"), ("test_acc", "test", "Acc"), ("test_mf1", "test", "mF1")]
MISSING_MARK = "†"
UNLISTED_MARK = "‡"
SHARED_STAGE1_MARK = "§"   # shared stage 1 and the row changes stage 1: its p understates the uncertainty
REASON_CHARS = 80
EXPECT_ALPHA = 0.05        # the level at which a row's written expectation counts as met


@dataclass
class Cell:
    metric: str
    seeds: list[str]
    run_ids: list[str]
    values: list[float]           # in [0, 1], in seed order
    summary: Summary
    bold: bool = False

    def text(self, row_n: int) -> str:
        """'63.21 ± 0.54' in percent; '(n=2)' when this cell has fewer values than its row."""
        s = self.summary
        if s.n == 0:
            return "—"
        body = pct(s.mean) if s.n < 2 else f"{pct(s.mean)} ± {pct(s.std)}"
        return body if s.n == row_n else f"{body} (n={s.n})"


@dataclass
class Comparison:
    delta: float                   # mean paired difference over the seeds both finished, in [0, 1] units
    test: PairedTest               # its CI, p and Holm-corrected p (reports/stats.py)


@dataclass
class Expectation:
    """What the spec says a row must show against the baseline (written before the run), and whether it did."""
    must: str                      # "below" | "equivalent" (sweep/ablation_spec.py)
    why: str
    margin: float = math.nan       # +-margin of an `equivalent` row, in the metric's units
    p: float = math.nan            # what decides: the row's Holm p (below), the Holm-corrected TOST p (equivalent)
    met: Optional[bool] = None     # None: no test could be made

    def text(self) -> str:
        """'below: met' / 'equivalent ±5.00: not met' / 'below: no test'."""
        what = "below" if self.must == "below" else f"equivalent ±{pct(self.margin)}"
        return f"{what}: {'no test' if self.met is None else 'met' if self.met else 'not met'}"


@dataclass
class Row:
    variant: str
    n: int                                            # finished seeds
    cells: dict[str, Cell]
    comparisons: dict[str, Comparison]                # per metric, vs the baseline (empty for the baseline)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (seed, why) for expected seeds without a number
    unlisted: bool = False
    masked: list[str] = field(default_factory=list)
    understated: bool = False     # shared stage 1 while this row changes stage 1 (SHARED_STAGE1_MARK)
    expected: Optional[Expectation] = None   # the spec's expectation for this row, checked on the compared metric

    @property
    def marks(self) -> str:
        return ((MISSING_MARK if self.missing else "") + (UNLISTED_MARK if self.unlisted else "")
                + (SHARED_STAGE1_MARK if self.understated else ""))


@dataclass
class Table:
    sweep: str
    kind: str
    dataset: str
    metric: str                                       # the compared metric, e.g. test_wf1
    baseline: str
    columns: list[tuple[str, str, str]]               # main table: (key, group, short name)
    class_columns: list[tuple[str, str, str]]         # per-class table (--per-class), may be empty
    rows: list[Row]
    caption: list[str]                                # plain-text sentences, renderers escape them
    warning: str                                      # loud notes: plan incomplete, select-on-test ("" when none)
    footnotes: list[str]                              # plain text, the first characters may be a mark
    trials: list[Trial]                               # every child run, for traceability in HTML/CSV
    labels: list[str]
    summary: str = ""                                 # two or three sentences: how to read a row (before the table)
    experiment_id: str = ""                           # MLflow experiment, for links to runs in the HTML

    @property
    def compares(self) -> bool:
        """False for a tune sweep without a baseline: no difference and test columns."""
        return bool(self.baseline)

    @property
    def expects(self) -> bool:
        """True when the spec wrote expectations for some row: the tables get an `expected` column."""
        return any(r.expected is not None for r in self.rows)

    @property
    def all_columns(self) -> list[tuple[str, str, str]]:
        keys = {k for k, _, _ in self.columns}
        return self.columns + [c for c in self.class_columns if c[0] not in keys]

    def column_name(self, key: str) -> str:
        for k, group, short in self.all_columns:
            if k == key:
                return f"{group} {short}"
        return key


def metric_label(key: str) -> str:
    for k, split, short in MAIN_METRICS:
        if k == key:
            return f"{split} {short}"
    if "_f1_" in key:
        split, label = key.split("_f1_", 1)
        return f"{split} F1 {label}"
    return key


def class_labels(sweep: Sweep) -> list[str]:
    """Per-class labels in the dataset's order: the parent's `labels` tag, else the `labels` list of a
    finished trial's per_class_report.json artifact; labels found nowhere else follow sorted."""
    found: set[str] = set()
    for trial in sweep.trials:
        for key in trial.metrics:
            for split in ("dev", "test"):
                prefix = f"selected_{split}_f1_"
                if key.startswith(prefix):
                    found.add(key[len(prefix):])
    declared = []
    if sweep.tags.get("labels"):
        try:
            declared = [str(v) for v in json.loads(sweep.tags["labels"])]
        except (json.JSONDecodeError, TypeError):
            declared = []
    if not declared and found:
        declared = sweep.artifact_labels()
    return [lbl for lbl in declared if lbl in found] + sorted(found - set(declared))


def normalise_metric(metric: str, labels: list[str]) -> str:
    key = metric[len("selected_"):] if metric.startswith("selected_") else metric
    valid = [k for k, _, _ in MAIN_METRICS] + [f"{s}_f1_{lbl}" for s in ("dev", "test") for lbl in labels]
    if key not in valid:
        raise ReportError(f"--metric {metric!r} is not one of: {', '.join(valid)}")
    return key


def _finished_by_variant_seed(sweep: Sweep) -> tuple[dict[tuple[str, str], Trial], list[Trial]]:
    """One FINISHED run per (variant, seed), chosen by the rule the sweep's own dedup uses
    (`store.stands_for`: the first to start); the others are reported as duplicates."""
    groups: dict[tuple[str, str], list[Trial]] = {}
    for trial in sweep.trials:
        if trial.status == "FINISHED":
            groups.setdefault((trial.variant, trial.seed), []).append(trial)
    chosen = {key: stands_for(group) for key, group in groups.items()}
    duplicates = sorted((t for key, group in groups.items() for t in group if t is not chosen[key]),
                        key=lambda t: t.run_id)
    return chosen, duplicates


def _select_on_test(sweep: Sweep) -> tuple[bool, bool]:
    """(any trial picked its epoch on test, the trials disagree)."""
    rule = sweep.tags.get("selection_rule", "").strip().lower()
    tag_says = rule == "test" or rule.startswith("test") or "select_on=test" in rule.replace(" ", "")
    values = {t.params.get("train.select_on") for t in sweep.trials if t.params.get("train.select_on")}
    if values:
        return "test" in values, len(values) > 1
    return tag_says, False


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def build_table(sweep: Sweep, metric: str = "test_wf1", baseline: str | None = None,
                per_class: bool = False) -> Table:
    labels = class_labels(sweep)
    metric = normalise_metric(metric, labels)
    # A tune sweep has no natural baseline: without one asked for, its table compares nothing.
    baseline = baseline or ("" if sweep.kind == "tune" and not sweep.tags.get("baseline") else sweep.baseline)
    if baseline and baseline not in sweep.variants:
        raise ReportError(f"baseline {baseline!r} is not a variant of sweep '{sweep.name}'; "
                          f"variants: {', '.join(sweep.variants) or 'none'}")
    main = list(MAIN_METRICS)
    if metric not in [c[0] for c in main]:  # a per-class metric is compared: show it in the main table too
        split, label = metric.split("_f1_", 1)
        main.append((metric, f"{split} F1", label))
    # Per-class F1 goes to a table of its own: seven more columns would not fit a page beside the main ones.
    per_class_columns = [(f"test_f1_{lbl}", "test F1", lbl) for lbl in labels] if per_class else []
    columns = main + [c for c in per_class_columns if c[0] not in {m[0] for m in main}]

    chosen, duplicates = _finished_by_variant_seed(sweep)
    statuses: dict[tuple[str, str], list[str]] = {}
    for trial in sweep.trials:
        statuses.setdefault((trial.variant, trial.seed), []).append(trial.status)

    def values_of(variant: str, key: str) -> dict[str, tuple[float, str]]:
        out = {}
        for seed in sweep.seeds:
            trial = chosen.get((variant, seed))
            value = trial.metrics.get(f"selected_{key}") if trial else None
            if value is not None and math.isfinite(value):
                out[seed] = (float(value), trial.run_id)
        return out

    files: dict[str, str] = {}
    parsed: dict[tuple[str, str], Predictions] = {}   # (run id, split): each file is read and parsed once

    def predictions(variant: str, key: str) -> dict[str, Predictions] | None:
        """Per seed, the finished trial's predictions on the metric's split; None when any trial has none."""
        split = key.split("_", 1)[0]
        out = {}
        for seed in sweep.seeds:
            trial = chosen.get((variant, seed))
            if trial is None:
                continue
            if trial.run_id not in files:
                files[trial.run_id] = trial_predictions(sweep.tracking_uri, trial.run_id, trial.artifact_uri)
            if not files[trial.run_id]:
                return None
            if (trial.run_id, split) not in parsed:
                parsed[(trial.run_id, split)] = _parse_predictions(files[trial.run_id], split, labels, trial)
            out[seed] = parsed[(trial.run_id, split)]
            if len(out[seed].gold) == 0:   # the file has no row of this split
                return None
        return out

    rows: list[Row] = []
    base_values = {key: {s: v for s, (v, _) in values_of(baseline, key).items()} if baseline else {}
                   for key, _, _ in columns}
    for variant in sweep.variants:
        cells = {}
        for key, _, _ in columns:
            vals = values_of(variant, key)
            seeds = list(vals)
            cells[key] = Cell(key, seeds, [vals[s][1] for s in seeds], [vals[s][0] for s in seeds],
                              summarize([vals[s][0] for s in seeds]))
        finished_seeds = [s for s in sweep.seeds if (variant, s) in chosen]
        expected = json.loads(sweep.tags["seeds"]) if sweep.tags.get("seeds") else sweep.seeds
        expected = [str(s) for s in expected]
        missing = []
        for seed in expected:
            if (variant, seed) not in chosen:
                states = sorted(set(statuses.get((variant, seed), [])))
                missing.append((seed, "/".join(states) if states else "no run"))
        comparisons = {}
        if baseline and variant != baseline:
            for key, _, _ in columns:
                mine = {s: v for s, v in zip(cells[key].seeds, cells[key].values)}
                comparisons[key] = _compare(key, mine, base_values[key], predictions(variant, key),
                                            predictions(baseline, key), labels)
        masked = sorted({m for t in sweep.trials if t.variant == variant for m in t.masked_modalities})
        rows.append(Row(variant, len(finished_seeds), cells, comparisons, missing,
                        variant in sweep.unlisted_variants, masked,
                        understated=bool(comparisons) and _shared_stage1_changed(sweep, variant, baseline)))
    _correct_across_rows(rows, [key for key, _, _ in columns])
    about, expectations = _expectations(sweep)
    checked = bool(expectations) and baseline == sweep.baseline and metric == about
    if checked:
        _check_expectations(rows, metric, expectations)

    # Best per column, compared at the printed precision so that equal-looking numbers are all bold.
    for key, _, _ in columns:
        shown = [(pct(r.cells[key].summary.mean), r) for r in rows if r.cells[key].summary.n > 0]
        if shown:
            best = max(float(v) for v, _ in shown)
            for v, r in shown:
                r.cells[key].bold = float(v) == best

    caption, warning = _caption(sweep, metric, baseline)
    if any(r.expected is not None for r in rows):
        caption.append(_expectation_caption(metric, baseline))
        late = _expectations_after_results(sweep)
        warning = " ".join(w for w in (warning, late) if w)
    # A tune sweep without a baseline shows its trial table instead (reports/tune_table.py): no seed notes.
    ablation_rows = rows if baseline or sweep.kind != "tune" else []
    footnotes = _footnotes(sweep, ablation_rows, duplicates)
    if checked:
        footnotes += _expectation_notes(rows, baseline, expectations)
    elif expectations:
        why = (f"this table compares {metric_label(metric)}" if metric != about else f"this table's baseline is "
               f"{baseline or 'none'}")
        footnotes.append(f"The spec's written expectations are about {metric_label(about)} against "
                         f"{sweep.baseline}; {why}, so they are not checked here.")
    return Table(sweep=sweep.name, kind=sweep.kind, dataset=sweep.tags.get("dataset", "?"), metric=metric,
                 baseline=baseline, columns=main, class_columns=per_class_columns, rows=rows,
                 caption=caption, warning=warning,
                 footnotes=footnotes, trials=list(sweep.trials), labels=labels,
                 summary=_summary(sweep, rows, metric, baseline), experiment_id=sweep.experiment_id)


def _summary(sweep: Sweep, rows: list[Row], metric: str, baseline: str) -> str:
    """How to read a row, in a few sentences that come before the table; the full caption follows it."""
    on_test, _ = _select_on_test(sweep)
    seeds = ", ".join(sweep.seeds) if sweep.seeds else "none"
    text = (f"Scores in percent (MLflow holds them as fractions 0-1) at the epoch chosen on "
            f"{'TEST (optimistic)' if on_test else 'dev'}, mean ± std over seeds {seeds}; n = finished seeds; "
            f"bold = best per column.")
    if baseline:
        text += (f" Δ = variant minus {baseline} on {metric_label(metric)}, in points, with its {LEVEL:.0%} CI: "
                 f"negative means the variant scores lower, so the part it removes or changes helps; p is "
                 f"two-sided, Holm-corrected across the rows.")
    if any(r.understated for r in rows):
        text += (f" {SHARED_STAGE1_MARK}: the row changes stage 1 while seeds share one stage 1, so its p and CI "
                 f"understate the uncertainty.")
    if any(r.expected is not None for r in rows):
        text += " expected: what the sweep's spec wrote, before the run, that the row must show; met or not."
    return text


def _parse_predictions(text: str, split: str, labels: list[str], trial: Trial) -> Predictions:
    from core.predictions import read_predictions

    try:
        rows = read_predictions(text, split)
        return Predictions.from_rows(rows["dialogue_ids"], rows["utterance_ids"], rows["gold"], rows["predicted"],
                                     labels)
    except ValueError as err:
        raise ReportError(f"run {trial.run_id} ({trial.variant}, seed {trial.seed}): predictions.csv: {err}") from None


def _compare(key: str, mine: dict[str, float], base: dict[str, float], mine_predictions, base_predictions,
             labels: list[str]) -> Comparison:
    """The bootstrap test when both sides left predictions, else the paired t-test over seeds."""
    seeds = [s for s in mine if s in base]
    delta = math.fsum(mine[s] - base[s] for s in seeds) / len(seeds) if seeds else math.nan
    if mine_predictions is not None and base_predictions is not None:
        mine_p = {s: p for s, p in mine_predictions.items() if s in mine}
        base_p = {s: p for s, p in base_predictions.items() if s in base}
        try:
            test = bootstrap_test(mine_p, base_p, key.split("_", 1)[1], labels)
        except ValueError as err:
            raise ReportError(f"{key}: {err}") from None
    else:
        test = paired_test(mine, base)
    return Comparison(delta, test)


def _correct_across_rows(rows: list[Row], keys: list[str]) -> None:
    """Holm across the rows of each column: one family per metric."""
    for key in keys:
        compared = [r for r in rows if key in r.comparisons]
        adjusted = holm([r.comparisons[key].test.p for r in compared])
        for row, p in zip(compared, adjusted):
            row.comparisons[key].test = dataclasses.replace(row.comparisons[key].test, p_adjusted=p)


def _expectations(sweep: Sweep) -> tuple[str, dict[str, Expectation]]:
    """The parent's `expectations` tag (sweep/ablation_spec.py): (the metric they are about, {variant:
    Expectation}); ("", {}) when the sweep has none (a tune sweep, an older sweep, a spec without them)."""
    try:
        raw = json.loads(sweep.tags.get("expectations") or "{}")
        margin = raw.get("equivalence_margin")
        rows = {v: Expectation(r["must"], r["why"], float(margin) if r["must"] == "equivalent" else math.nan)
                for v, r in (raw.get("rows") or {}).items()}
        return (raw.get("metric", "test_wf1") if rows else ""), rows
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise ReportError(f"sweep '{sweep.name}': the parent run's 'expectations' tag is not what the sweep "
                          f"writes ({type(err).__name__}: {err})") from None


def _check_expectations(rows: list[Row], metric: str, expectations: dict[str, Expectation]) -> None:
    """Each expected row against the baseline on `metric`: `below` is met by a negative Δ with the table's Holm p
    below EXPECT_ALPHA; `equivalent` by two one-sided tests against the margin (the row's own Δ, SE and df),
    Holm-corrected across the equivalent rows: a family of their own."""
    equivalent = []
    for row in rows:
        expected = expectations.get(row.variant)
        comp = row.comparisons.get(metric)
        if expected is None or comp is None:
            continue
        row.expected = dataclasses.replace(expected)
        test = comp.test
        delta = comp.delta if math.isnan(test.delta) else test.delta
        if expected.must == "below":
            row.expected.p = test.p_adjusted
            if test.made and not math.isnan(test.p_adjusted):
                row.expected.met = delta < 0 and test.p_adjusted < EXPECT_ALPHA
        else:
            row.expected.p = equivalence_p(delta, test.se, test.df, expected.margin) if test.made else math.nan
            if not math.isnan(row.expected.p):
                equivalent.append(row)
    for row, p in zip(equivalent, holm([r.expected.p for r in equivalent])):
        row.expected.p, row.expected.met = p, p < EXPECT_ALPHA


def _expectation_caption(metric: str, baseline: str) -> str:
    return (f"Expected: what the sweep's spec says each row must show against {baseline}, written before the run "
            f"(the reasons are in the notes), checked on {metric_label(metric)}: below = Δ < 0 with the row's Holm "
            f"p (the table's family) < {EXPECT_ALPHA}; equivalent ±m = two one-sided tests (Schuirmann 1987) "
            f"against ±m with the row's standard error and degrees of freedom, Holm-corrected across the "
            f"equivalent rows (a family of their own), p < {EXPECT_ALPHA}; no test = the row has no test (n<"
            f"{MIN_PAIRS} seed pairs).")


def _expectations_after_results(sweep: Sweep) -> str:
    """A loud line when the expectations took their present form after results of this plan existed."""
    written = sweep.tags.get("expectations_time", "")
    if not written.isdigit():
        return ""
    done = [t for t in sweep.trials if t.status == "FINISHED" and 0 < t.end_time < int(written)]
    if not done:
        return ""
    when = datetime.datetime.fromtimestamp(int(written) / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"EXPECTATIONS CHANGED AFTER RESULTS: the spec's expectations took their present form at {when}, "
            f"after {len(done)} trial(s) of this plan had finished; they are not a prediction made before the run.")


def _expectation_notes(rows: list[Row], baseline: str, expectations: dict[str, Expectation]) -> list[str]:
    notes = []
    for row in rows:
        e = row.expected
        if e is None:
            continue
        what = (f"below {baseline}" if e.must == "below" else f"equivalent to {baseline} within ±{pct(e.margin)}")
        decided = "" if math.isnan(e.p) else (f" (Holm p={format_p(e.p)})" if e.must == "below"
                                               else f" (TOST, Holm p={format_p(e.p)})")
        verdict = "no test" if e.met is None else "met" if e.met else "NOT met"
        caveat = (f" ({SHARED_STAGE1_MARK}: its p leaves out stage-1 variance, so a 'met' may be optimistic)"
                  if row.understated and e.met else "")
        notes.append(f"Expected, {row.variant}: {what}: {verdict}{decided}{caveat}. Why: {e.why}")
    checked = {r.variant for r in rows if r.expected is not None}
    unchecked = [v for v in expectations if v not in checked]
    if unchecked:
        notes.append(f"Expected but not checked (no compared row in this table): {', '.join(unchecked)}.")
    return notes


def _shared_stage1_changed(sweep: Sweep, variant: str, baseline: str) -> bool:
    """Shared stage 1 and the variant overrides a stage-1 key: its seeds reuse one stage-1 draw that the
    baseline does not share, so seed spread and bootstrap both miss that draw's variance."""
    if sweep.tags.get("stage1_seed_mode", "") != "shared":
        return False

    def stage1_params(v: str) -> dict:
        """The variant's resolved stage-1 settings (MLflow params), the shared seed aside."""
        trial = next((t for t in sweep.trials if t.variant == v and t.params), None)
        return {k: x for k, x in (trial.params if trial else {}).items()
                if k.startswith("stage1.") and k != "stage1.shared_seed"}
    return stage1_params(variant) != stage1_params(baseline)


def _caption(sweep: Sweep, metric: str, baseline: str) -> tuple[list[str], str]:
    tags = sweep.tags
    seeds = ", ".join(sweep.seeds) if sweep.seeds else "none"
    commit = tags.get("git_commit", "unknown")
    child_commits = sorted({t.tags.get("git_commit", "") for t in sweep.trials} - {"", commit})
    commit_text = f"git commit {commit}"
    if child_commits:
        commit_text += f" (some trials ran at {', '.join(child_commits)})"
    caption = [
        f"Sweep {sweep.name} ({sweep.kind}) on dataset {tags.get('dataset', 'unknown')}, {commit_text}.",
    ]
    if baseline or sweep.kind != "tune":  # otherwise the tune table (reports/tune_table.py) has its own caption
        caption.append(f"Scores at the selected epoch as percentages with 2 decimals (the ERC convention): mean ± "
                       f"sample standard deviation over seeds {seeds}; n = finished seeds; best mean per column in "
                       f"bold.")
    rule = tags.get("selection_rule", "").strip()
    on_test, mixed = _select_on_test(sweep)
    splits = sorted({r.strip() for r in rule.split(",") if r.strip()})
    if set(splits) <= {"dev", "test"}:  # the sweep writes cfg.train.select_on (comma-joined); say what it means
        split = " or ".join(splits) if splits else ("test" if on_test else "dev")
        rule = f"the epoch with the best {split} weighted F1, all scores reported at that epoch"
    caption.append(f"Epoch selection: {rule}" + (" (trials disagree on train.select_on)." if mixed else "."))
    warnings = []
    missing = sweep.missing_from_plan()
    if missing:
        warnings.append(f"INCOMPLETE: {len(missing)} of {len(sweep.plan or [])} trials of the current plan have no "
                        f"finished run; their cells are missing (marked {MISSING_MARK}), never filled from "
                        f"earlier runs.")
    if on_test:
        warnings.append("WARNING: epoch picked on test, as in the authors' code; the test scores are optimistic "
                        "and are not a held-out estimate.")
    warning = " ".join(warnings)
    if sweep.superseded:
        caption.append(f"{len(sweep.superseded)} run(s) of earlier plans (another config, dataset, code or stage-1 "
                       f"key) are superseded and left out of every number; list them with "
                       f"`report {sweep.name} --history`.")
    mode = tags.get("stage1_seed_mode", "")
    if mode == "shared":
        shared = sorted({t.params.get("stage1.shared_seed", "") for t in sweep.trials} - {""})
        which = f" (stage-1 seed {', '.join(shared)})" if shared else ""
        caption.append(f"Stage 1 shared: every stage-2 seed reuses one stage-1 model{which}, so the spread is "
                       f"that of stage 2 alone.")
    elif mode == "per-seed":
        caption.append("Stage 1 trained per seed: the spread covers the whole pipeline.")
    else:
        caption.append(f"Stage-1 seed mode: {mode or 'not recorded'}.")
    if tags.get("media_coverage"):  # datasets read with clips: how many utterances had each
        caption.append(f"Media coverage (utterances with a clip): {tags['media_coverage']}.")
    if tags.get("from_tune"):  # `ablate --from-tune NAME`: the round trip from a search back to an ablation
        source = tags.get("from_tune_source") or f"best trial of tune sweep '{tags['from_tune']}'"
        caption.append(f"Every variant starts from the {source.rstrip('.')}.")
    if not baseline:
        caption.append("No baseline was named, so no differences or tests (pass --baseline to compare a tune "
                       "trial's row against the others).")
    else:
        caption.append(
            f"Δ = mean over seeds of the paired difference (variant minus {baseline}, same seed) on "
            f"{metric_label(metric)}, in percentage points, with its {LEVEL:.0%} confidence interval. Test "
            f"({TEST_NAME}): a paired bootstrap over test dialogues ({REPLICATES} resamples, seed {BOOTSTRAP_SEED}; "
            f"the same resample for both sides of every seed pair; Efron & Tibshirani 1993, Koehn 2004) gives "
            f"the test-set variance of Δ, the spread of the per-seed differences its seed variance; Δ over the "
            f"combined standard error is referred to a t distribution with Welch-Satterthwaite degrees of "
            f"freedom; p two-sided, with Holm's correction (Holm 1979) across the table's rows; no test when "
            f"n<{MIN_PAIRS}. Rows whose trials left no per-utterance predictions fall back to a {TTEST_NAME} "
            f"over seeds (test-set sampling not counted); the test column names the test.")
        if mode == "shared":
            caption.append(f"{SHARED_STAGE1_MARK} Stage 1 shared while the row changes stage 1: the comparison "
                           f"rests on one stage-1 draw per side, so its p-value and CI understate the uncertainty.")
    caption.append(_encoder_caption(sweep))
    stage1 = _stage1_caption(sweep)
    if stage1:
        caption.append(stage1)
    masked: dict[str, list[str]] = {}  # variant -> modalities, in table order
    for trial in sweep.trials:
        for m in trial.masked_modalities:
            if m not in masked.setdefault(trial.variant, []):
                masked[trial.variant].append(m)
    masked = {v: ms for v, ms in masked.items() if ms}
    if masked:
        parts = [f"{v}: {', '.join(sorted(ms))}" for v, ms in masked.items()]
        caption.append(f"Masked modalities (asked for but absent from the data, so left out of the model): "
                       f"{'; '.join(parts)}.")
    return caption, warning


def _encoder_caption(sweep: Sweep) -> str:
    """The encoders behind the table (trial tags encoder.text/audio/video: checkpoint and weights hash, or
    'tiny (random-initialised)'); several settings are listed with the variants that used them."""
    parts = []
    absent = set.intersection(*(set(t.masked_modalities) for t in sweep.trials)) if sweep.trials else set()
    for modality in ("text", "audio", "video"):
        if modality in absent:
            parts.append(f"{modality} none (absent from the data)")
            continue
        used: dict[str, list[str]] = {}
        for trial in sweep.trials:
            text = trial.tags.get(f"encoder.{modality}", "not recorded")
            if trial.variant not in used.setdefault(text, []):
                used[text].append(trial.variant)
        if len(used) == 1:
            parts.append(f"{modality} {next(iter(used))}")
        elif used:
            parts.append(f"{modality} " + "; ".join(f"{text} ({', '.join(vs)})" for text, vs in used.items()))
    random = any("random-initialised" in p for p in parts)
    return ("Encoders: " + ", ".join(parts) + "."
            + (" Random-initialised encoders were not pretrained: these rows do not measure MAGTKD's encoders."
               if random and sweep.tags.get("dataset", "synthetic") != "synthetic" else ""))


def _stage1_caption(sweep: Sweep) -> str:
    """The stage-1 scores behind each row: dev (and, where logged, test) wF1 of the text teacher and the
    audio/video students at their kept epoch (mean over the row's stage-1 runs when seeds train their own),
    and the stage-1 time. Rows that use the same stage-1 runs share one entry (an ablation of stage 2 alone
    would otherwise repeat the same figures for every row)."""
    groups: dict[tuple[str, ...], list[str]] = {}     # stage-1 run ids -> the rows that use them, table order
    for variant in sweep.variants:
        ids = tuple(sorted({t.tags.get("stage1_run_id", "") for t in sweep.trials if t.variant == variant} - {""}))
        if any(i in sweep.stage1_runs for i in ids):
            groups.setdefault(ids, []).append(variant)
    parts = []
    for ids, variants in groups.items():
        runs = [sweep.stage1_runs[i] for i in ids if i in sweep.stage1_runs]
        scores = []
        for modality in ("text", "audio", "video"):
            values = [r.metrics[f"selected_{modality}_dev_wf1"] for r in runs if f"selected_{modality}_dev_wf1" in r.metrics]
            tests = [r.metrics[f"selected_{modality}_test_wf1"] for r in runs if f"selected_{modality}_test_wf1" in r.metrics]
            if values:
                test_text = f" / {pct(sum(tests) / len(tests))}" if len(tests) == len(values) else ""
                scores.append(f"{modality} {pct(sum(values) / len(values))}{test_text}")
        failed = sum(r.status == "FAILED" for r in runs)
        seconds = sum(r.metrics.get("stage1_seconds", 0.0) for r in runs)
        runs_text = ", ".join(r.run_id[:8] for r in runs)
        parts.append(f"{', '.join(variants)}: {', '.join(scores) or 'no dev scores'}"
                     f"{f' ({failed} failed)' if failed else ''} (run {runs_text}, {seconds:.0f} s)")
    if not parts:
        return ""
    return ("Stage 1 behind each row (dev / test wF1 in percent at the epoch kept on dev; test omitted for runs "
            "that did not log it; MLflow stage-1 runs): " + "; ".join(parts) + ".")


def _footnotes(sweep: Sweep, rows: list[Row], duplicates: list[Trial]) -> list[str]:
    notes = []
    # Runs the sweep itself closed as duplicates (KILLED, tag duplicate_of) are not lost trials.
    closed = [t for t in sweep.trials if t.status != "FINISHED" and t.tags.get("duplicate_of")]
    left_out = [t for t in sweep.trials if t.status != "FINISHED" and not t.tags.get("duplicate_of")]
    if left_out:
        counts: dict[str, int] = {}
        for t in left_out:
            counts[t.status] = counts.get(t.status, 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        details = "; ".join(
            f"{t.variant}/seed {t.seed} {t.status}"
            + (f" ({_short(t.tags.get('failure_reason') or t.tags['killed_reason'])})"
               if t.tags.get("failure_reason") or t.tags.get("killed_reason") else "")
            + f" [run {t.run_id}]" for t in left_out)
        notes.append(f"Left out of every number: {summary} trial(s): {details}.")
    else:
        notes.append("No failed, killed or unfinished trials.")
    for row in rows:
        if row.missing:
            expected = len(row.missing) + row.n
            miss = ", ".join(f"{seed} ({why})" for seed, why in row.missing)
            notes.append(f"{MISSING_MARK} {row.variant}: {row.n} of {expected} seeds finished; missing seed(s) {miss}.")
    unlisted = [r.variant for r in rows if r.unlisted]
    if unlisted:
        notes.append(f"{UNLISTED_MARK} not in the sweep's variant list (found in child runs): {', '.join(unlisted)}.")
    if duplicates:
        notes.append("Duplicate finished runs of the same variant and seed (the first to start is used): ignored "
                     + ", ".join(f"{t.variant}/seed {t.seed} [run {t.run_id}]" for t in duplicates) + ".")
    if closed:
        notes.append("Runs closed by the sweep as duplicates of a finished run (tag duplicate_of), ignored: "
                     + ", ".join(f"{t.variant}/seed {t.seed} [run {t.run_id}]" for t in closed) + ".")
    return notes


def history_listing(sweep: Sweep) -> str:
    """`report NAME --history`: the superseded runs (earlier plans), oldest first, with what differs
    from the current plan's run of the same variant and seed."""
    if not sweep.superseded:
        return f"sweep {sweep.name}: no superseded runs (every run belongs to the current plan)"
    current = {(t.variant, t.seed): t for t in sweep.trials}
    lines = [f"sweep {sweep.name}: {len(sweep.superseded)} superseded run(s), left out of the table:"]
    for t in sorted(sweep.superseded, key=lambda t: (t.start_time, t.run_id)):
        now = current.get((t.variant, t.seed))
        changed = [name for name, key in (("config", "config_hash"), ("data", "dataset_fingerprint"),
                                          ("code", "code_fingerprint"), ("stage 1", "stage1_key"))
                   if now is not None and t.tags.get(key) != now.tags.get(key)]
        why = f"changed since: {', '.join(changed)}" if changed else "not in the current plan"
        lines.append(f"  {t.variant}/seed {t.seed} {t.status} [run {t.run_id}] identity "
                     f"{t.tags.get('trial_identity', '?')} ({why})")
    return "\n".join(lines)
