"""Reports from a real MLflow SQLite store written in the schema the sweeps write (README, "What MLflow holds") (tests/sample_store.py).

The store holds: `demo` (5 variants x 3 seeds; no_gate seed 2 FAILED, no_speaker seed 1 KILLED;
text_only with masked audio and video), `authors` (epoch picked on test, stage 1 shared), `fusion`
(a tune sweep of 10 trials, one FAILED) and `dups` (a variant/seed finished twice, as after a resume).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
import shutil
from pathlib import Path

import pytest

from reports.cli import main as cli_main, print_table_after_sweep
from reports.report import make_report
from tests.sample_store import (ABLATION, BASE_TIME, MELD_LABELS, _flat, _log_trial, compile_with_pdflatex,
                                log_predictions, sample_ablation, sample_tune)
from reports.store import ReportError, load_sweep

METRICS = ["dev_wf1", "dev_acc", "dev_mf1", "test_wf1", "test_acc", "test_mf1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    uri = sample_ablation(out, "demo", masked={"text_only": "audio,video"})
    sample_ablation(out, "authors", variants={k: ABLATION[k] for k in ("full", "no_gate", "no_kd")},
                    select_on="test", stage1_seed_mode="shared", failed=(), killed=())
    sample_tune(out, "fusion")
    # A sweep where full/seed 0 finished twice (a trial re-run after a resume): the first one stands for it,
    # by the rule the sweep's own dedup uses (sweep.identity.representative).
    sample_ablation(out, "dups", variants={k: ABLATION[k] for k in ("full", "no_kd")}, failed=(), killed=())
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dups")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    dup_id = _log_trial(client, exp.experiment_id, parent.info.run_id, sweep="dups-rerun", variant="full", seed=0,
                        params=_flat({"seed": 0}), level=0.70, epochs=4, status="FINISHED", start=BASE_TIME + 10**8,
                        labels=MELD_LABELS, trial_id="rerun", extra_tags={"sweep": "dups"})
    # ... and no_kd/seed 1 ran twice, the second closed by the sweep's own deduplication (KILLED, duplicate_of).
    closed_id = _log_trial(client, exp.experiment_id, parent.info.run_id, sweep="dups-closed", variant="no_kd", seed=1,
                           params=_flat({"seed": 1, "stage1.kd": False}), level=0.1, epochs=4, status="KILLED",
                           start=BASE_TIME + 2 * 10**8, labels=MELD_LABELS, trial_id="closed",
                           extra_tags={"sweep": "dups", "duplicate_of": "some-run"})
    return {"out": out, "uri": uri, "dup_id": dup_id, "closed_id": closed_id}


def _report(store, name, tmp_path, **kwargs):
    return make_report(name, store["uri"], tmp_path / name, **kwargs)


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _finished_children(uri: str, name: str):
    """Independent of reports/: MLflow's own search_runs DataFrame, filtered with pandas."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[name], max_results=10000)
    children = df[df["tags.mlflow.parentRunId"].notna()]
    return children[children["status"] == "FINISHED"]


def test_regeneration_is_byte_identical(store, tmp_path):
    first = _report(store, "demo", tmp_path / "a", per_class=True)
    second = _report(store, "demo", tmp_path / "b", per_class=True)
    again = _report(store, "demo", tmp_path / "a", per_class=True)  # over the old files, in place
    for fmt in ("md", "tex", "csv"):
        a, b, c = (r.paths[fmt].read_bytes() for r in (first, second, again))
        assert a == b == c, fmt
    assert sorted(p.name for p in (tmp_path / "a" / "demo").iterdir()) == [
        "report.html", "table.csv", "table.md", "table.tex"]  # no temporary files left behind


def test_numbers_match_an_independent_pandas_recomputation(store, tmp_path):
    rows = _csv(_report(store, "demo", tmp_path).paths["csv"])
    df = _finished_children(store["uri"], "demo")
    grouped = df.groupby("tags.variant")
    checked = 0
    for row in rows:
        col = f"metrics.selected_{row['metric']}"
        group = grouped.get_group(row["variant"])
        values = group[col].dropna()
        assert int(row["n"]) == len(values)
        assert float(row["mean"]) == pytest.approx(values.mean(), rel=0, abs=1e-12)
        if len(values) > 1:
            assert float(row["std"]) == pytest.approx(values.std(ddof=1), rel=0, abs=1e-12)
            assert row["std_pct"] == f"{100 * values.std(ddof=1):.2f}"
        assert row["mean_pct"] == f"{100 * values.mean():.2f}"
        # Every cell names the runs behind it, and their values, in seed order.
        ids = row["run_ids"].split(";")
        assert set(ids) == set(group["run_id"])
        by_id = dict(zip(group["run_id"], group[col]))
        assert [float(v) for v in row["values"].split(";")] == [by_id[i] for i in ids]
        assert row["seeds"].split(";") == [group.set_index("run_id").loc[i, "tags.seed"] for i in ids]
        checked += 1
    assert checked == 5 * len(METRICS)
    # Rows follow the sweep's variant order (the parent tag), not alphabetical order.
    assert list(dict.fromkeys(r["variant"] for r in rows)) == list(ABLATION)


def test_paired_test_matches_scipy_on_the_same_pairs(store, tmp_path):
    from scipy import stats

    result = _report(store, "demo", tmp_path)
    rows = {(r["variant"], r["metric"]): r for r in _csv(result.paths["csv"])}
    df = _finished_children(store["uri"], "demo")
    base = df[df["tags.variant"] == "full"].set_index("tags.seed")
    made = 0
    for variant in ("no_gate", "no_kd", "text_only", "no_speaker"):
        mine = df[df["tags.variant"] == variant].set_index("tags.seed")
        seeds = sorted(set(mine.index) & set(base.index), key=int)
        for metric in METRICS:
            row = rows[(variant, metric)]
            assert int(row["n_pairs"]) == len(seeds)
            col = f"metrics.selected_{metric}"
            # Δ over the same paired seeds as the test, even where one side has a seed the other lacks.
            paired = [mine.loc[s, col] - base.loc[s, col] for s in seeds]
            assert float(row["delta_pct"]) == pytest.approx(100 * sum(paired) / len(paired), abs=1e-6)
            if len(seeds) < 3:
                assert row["test"] == "no test (n<3)" and row["p_value"] == ""
                continue
            expected = stats.ttest_rel([mine.loc[s, col] for s in seeds], [base.loc[s, col] for s in seeds])
            assert row["test"] == "paired t-test"
            assert float(row["p_value"]) == pytest.approx(expected.pvalue, rel=1e-12)
            assert float(row["t_statistic"]) == pytest.approx(expected.statistic, rel=1e-12)
            made += 1
    assert made == 2 * len(METRICS)  # no_kd and text_only have 3 pairs; the others 2
    # Holm across the rows of a column: here the two rows with a test.
    from reports.stats import holm
    for metric in METRICS:
        raw = [float(rows[(v, metric)]["p_value"]) for v in ("no_kd", "text_only")]
        assert [float(rows[(v, metric)]["p_holm"]) for v in ("no_kd", "text_only")] == pytest.approx(holm(raw))
    md = result.markdown
    assert "test vs full" in md and "paired t-test over seeds" in md   # the caption names the fallback
    p = float(rows[("text_only", "test_wf1")]["p_value"])
    assert re.search(r"\| text_only \|.*\| p=[0-9.e-]+, Holm p=[0-9.e-]+, n=3 \|", md)
    assert p < 0.05  # the planted 4-point drop is found
    assert re.search(r"\| no_gate † \|.*\| no test \(n<3\) \|", md)


def test_failed_and_killed_are_left_out_counted_and_flagged(store, tmp_path):
    result = _report(store, "demo", tmp_path)
    md = result.markdown
    sweep = load_sweep("demo", store["uri"])
    failed = [t for t in sweep.trials if t.status != "FINISHED"]
    assert sorted(t.status for t in failed) == ["FAILED", "KILLED"]
    assert "Left out of every number: 1 FAILED, 1 KILLED trial(s)" in md
    assert "DivergedError: loss is nan at epoch 2" in md
    assert "† no_gate: 2 of 3 seeds finished; missing seed(s) 2 (FAILED)." in md
    assert "† no_speaker: 2 of 3 seeds finished; missing seed(s) 1 (KILLED)." in md
    rows = _csv(result.paths["csv"])
    for row in rows:
        assert not set(row["run_ids"].split(";")) & {t.run_id for t in failed}
        assert ("missing_seeds" in row["flags"]) == (row["variant"] in ("no_gate", "no_speaker"))
    assert {r["missing_seeds"] for r in rows if r["variant"] == "no_gate"} == {"2:FAILED"}


def test_caption_bold_and_difference(store, tmp_path):
    result = _report(store, "demo", tmp_path)
    md = result.markdown
    for text in ("Sweep demo (ablate) on dataset synthetic, git commit 0123456789ab", "seeds 0, 1, 2",
                 "percentages with 2 decimals (the ERC convention)",
                 "Epoch selection: the epoch with the best dev weighted F1",
                 "Stage 1 trained per seed", "Masked modalities", "text_only: audio, video",
                 "paired bootstrap over test dialogues", "Holm's correction", "95% confidence interval",
                 "paired t-test over seeds"):
        assert text in md, text
    assert "WARNING" not in md
    rows = _csv(result.paths["csv"])
    for metric in METRICS:
        col = [r for r in rows if r["metric"] == metric]
        best = max(float(r["mean_pct"]) for r in col)
        assert {r["variant"] for r in col if r["bold"] == "1"} == {r["variant"] for r in col
                                                                   if float(r["mean_pct"]) == best}
    by = {(r["variant"], r["metric"]): r for r in rows}
    delta = float(by[("no_kd", "test_wf1")]["delta_pct"])
    assert delta == pytest.approx(100 * (float(by[("no_kd", "test_wf1")]["mean"])
                                         - float(by[("full", "test_wf1")]["mean"])))
    assert f"| {delta:+.2f} [" in md   # then its CI


def test_select_on_test_and_shared_stage1_are_said_loudly(store, tmp_path):
    result = _report(store, "authors", tmp_path)
    warning = "epoch picked on test, as in the authors' code"
    assert warning in result.markdown and "> **WARNING" in result.markdown
    assert warning in result.paths["tex"].read_text() and r"\textbf{WARNING" in result.paths["tex"].read_text()
    assert 'class="warning"' in result.paths["html"].read_text()
    assert "Stage 1 shared: every stage-2 seed reuses one stage-1 model (stage-1 seed 0)" in result.markdown
    # no_kd changes stage 1 while stage 1 is shared: its p understates the uncertainty, and says so.
    assert "| no_kd § |" in result.markdown and "| no_gate |" in result.markdown
    assert "§ Stage 1 shared while the row changes stage 1" in result.markdown
    flags = {r["variant"]: r["flags"] for r in _csv(result.paths["csv"])}
    assert flags["no_kd"] == "shared_stage1_understates" and flags["no_gate"] == ""
    assert "No failed, killed or unfinished trials." in result.markdown


def _strip_tex_escapes(text: str) -> str:
    return re.sub(r"\\[{}$&%#_]", "", text)


def test_latex_has_booktabs_rules_balanced_environments_and_compiles(store, tmp_path):
    tex = _report(store, "demo", tmp_path, per_class=True).paths["tex"].read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule"):
        assert rule in tex
    begins = re.findall(r"\\begin\{(\w+)\}", tex)
    ends = re.findall(r"\\end\{(\w+)\}", tex)
    assert sorted(begins) == sorted(ends) and begins.count("table") == 2  # main + per-class
    stripped = _strip_tex_escapes(tex)
    assert stripped.count("{") == stripped.count("}")
    # Every row of each tabular has as many cells as its column spec.
    for spec, body in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, flags=re.S):
        for line in body.strip().splitlines():
            if line.endswith(r"\\") and "multicolumn" not in line:
                assert _strip_tex_escapes(line).count("&") == len(spec) - 1, line
    assert r"no\_gate$^\dagger$" in tex and r"\textbf{" in tex and r"$\pm$" in tex
    compile_with_pdflatex(tmp_path / "demo" / "table.tex", tmp_path)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_html_is_self_contained_with_plots(store, tmp_path):
    html = _report(store, "demo", tmp_path).paths["html"].read_text(encoding="utf-8")
    # Nothing is loaded from elsewhere; the only links are to runs in the MLflow UI (README: Reading a report).
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    assert not re.findall(r"""src\s*=\s*["'](?!data:)""", html)
    links = re.findall(r"""href\s*=\s*["']([^"']*)["']""", html)
    sweep = load_sweep("demo", store["uri"])
    assert sorted(links) == sorted(f"http://127.0.0.1:5000/#/experiments/{sweep.experiment_id}/runs/{t.run_id}"
                                   for t in sweep.trials)   # every trial, failed ones too, links to its run
    images = _images(html)
    assert len(images) == 3  # forest plot + variant bars + dev curves
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert "Dev weighted F1 per epoch" in html and "Variants: test wF1" in html and 'id="forest"' in html
    # The table comes before the folded caption and the figures.
    assert html.index('<table class="main">') < html.index("<details>") < html.index('id="forest"')


def test_tune_report_has_history_and_importances(store, tmp_path):
    result = _report(store, "fusion", tmp_path, top=5)
    html = result.paths["html"].read_text(encoding="utf-8")
    images = _images(html)
    assert len(images) == 7 and all(img.startswith(b"\x89PNG") for img in images)
    for title in ("Optimisation history", "Parameter importances", "Parallel coordinates", "Slices",
                  "Contour: train.lr and"):
        assert title in html
    importances = re.findall(r'<td class="text mono">([\w.]+)</td><td>([0-9.]+)</td>', html)
    assert importances[0][0] == "train.lr"  # the planted effect: lr matters most
    # fANOVA (like Optuna) assesses what every complete trial chose: the conditional fusion.layers is left out.
    assert {name for name, _ in importances} == {"train.lr", "fusion.dropout", "fusion.mode"}
    assert "Δ" not in result.markdown and "pass --baseline" not in result.markdown


def test_tune_table_is_sorted_with_one_column_per_searched_parameter(store, tmp_path):
    result = _report(store, "fusion", tmp_path, top=5)
    sweep = load_sweep("fusion", store["uri"])
    by_trial = {t.tags["trial_id"]: t for t in sweep.trials}
    rows = _csv(result.paths["csv"])  # every trial, best first, then the failed one
    assert len(rows) == 10 and [r["rank"] for r in rows] == [str(i) for i in range(1, 10)] + [""]
    scores = [float(r["selected_dev_wf1"]) for r in rows[:9]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == max(t.metrics["selected_dev_wf1"] for t in sweep.trials if t.status == "FINISHED")
    assert rows[-1]["status"] == "FAILED" and rows[-1]["selected_dev_wf1"] == ""
    for row in rows:  # the values each trial chose; blank where fusion.layers was not active
        chosen = json.loads(by_trial[row["trial_id"]].tags["overrides"])
        assert {k: row[k] for k in ("train.lr", "fusion.dropout", "fusion.mode", "fusion.layers")} == {
            k: str(chosen[k]) if k in chosen else "" for k in ("train.lr", "fusion.dropout", "fusion.mode",
                                                              "fusion.layers")}
    stopped = [r for r in rows if r["state"].startswith("stopped")]
    assert {r["trial_id"] for r in stopped} == {"fusion_00003", "fusion_00008"}
    assert all(r["stopped_at_epoch"] == "2" and r["planned_epochs"] == "4" for r in stopped)

    # Markdown: the top 5 rows in the same order, one column per searched parameter, stopped ones marked.
    lines = [ln for ln in result.markdown.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:3] == ["#", "trial", "dev wF1 (objective)"]
    assert head[3:7] == ["train.lr", "fusion.dropout", "fusion.layers", "fusion.mode"]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:] if not ln.startswith("| --")]
    assert [b[1] for b in body] == [r["trial_id"] for r in rows[:5]]
    for cells, row in zip(body, rows):
        assert cells[5] == ("" if row["fusion.layers"] == "" else row["fusion.layers"])
        assert cells[-1] == ("◦ 2/4" if row["state"].startswith("stopped") else "all")
    assert "The top 5 of 10 trials" in result.markdown
    tex = result.paths["tex"].read_text(encoding="utf-8")
    assert tex.count(r" \\") == 6 and r"fusion.dropout" in tex  # header + 5 rows
    # The HTML lists all ten, best first.
    order = re.findall(r'<td class="text mono">(fusion_\d+)</td>', html := result.paths["html"].read_text())
    assert order == [r["trial_id"] for r in rows] and html


def test_duplicate_finished_runs_use_the_first_and_are_footnoted(store, tmp_path):
    result = _report(store, "dups", tmp_path)
    cell = [r for r in _csv(result.paths["csv"]) if r["variant"] == "full" and r["metric"] == "test_wf1"][0]
    assert store["dup_id"] not in cell["run_ids"].split(";") and cell["n"] == "3"
    assert "Duplicate finished runs" in result.markdown and store["dup_id"] in result.markdown
    # A run the sweep closed as a duplicate is neither a lost trial nor a missing seed.
    assert "Runs closed by the sweep as duplicates" in result.markdown and store["closed_id"] in result.markdown
    assert "No failed, killed or unfinished trials." in result.markdown and "†" not in result.markdown


def test_per_class_metric_and_baseline_options(store, tmp_path):
    result = _report(store, "demo", tmp_path, metric="test_f1_joy", baseline="no_kd", per_class=True)
    md = result.markdown
    assert "Δ test F1 joy [95% CI]" in md and "test vs no_kd" in md
    assert "Per-class test F1" in md and all(label in md for label in MELD_LABELS)
    # Label columns in the dataset's order (from per_class_report.json), not alphabetical.
    per_class_head = [line for line in md.splitlines() if line.startswith("| Variant") and "neutral" in line][0]
    assert [h.strip().split()[-1] for h in per_class_head.strip("|").split("|")[2:]] == MELD_LABELS
    with pytest.raises(ReportError, match="baseline 'nope' is not a variant"):
        _report(store, "demo", tmp_path, baseline="nope")
    with pytest.raises(ReportError, match="--metric 'wf1' is not one of"):
        _report(store, "demo", tmp_path, metric="wf1")


def test_cli_report_and_unknown_sweep(store, tmp_path, capsys):
    out = str(store["out"])
    assert cli_main(["report", "demo", "--output", out, "--format", "md,csv"]) == 0
    printed = capsys.readouterr().out
    assert "| full |" in printed and str(store["out"] / "reports" / "demo" / "table.csv") in printed
    assert cli_main(["report", "nope", "--output", out]) == 2
    err = capsys.readouterr().err
    assert "unknown sweep 'nope'" in err and "known sweeps: authors, demo, dups, fusion" in err
    assert cli_main(["report", "demo", "--output", str(tmp_path / "empty")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # looking does not create a store
    assert cli_main(["report", "demo", "--output", out, "--format", "pdf"]) == 2


def test_print_table_after_sweep(store, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(store["out"], out, ignore=shutil.ignore_patterns("reports"))
    print_table_after_sweep("demo", out, None)
    printed = capsys.readouterr().out
    assert "| no_kd |" in printed and "regenerate with: python run_sweep.py report demo" in printed
    assert f"python run_sweep.py ui --output {out}" in printed and "MLflow store: sqlite:///" in printed
    assert sorted(p.name for p in (out / "reports" / "demo").iterdir()) == [
        "report.html", "table.csv", "table.md", "table.tex"]
    print_table_after_sweep("nope", out, f"sqlite:///{out / 'mlflow.db'}")  # warns, never raises
    assert "warning: no report for sweep nope" in capsys.readouterr().err


def _store_with_predictions(tmp_path):
    """A 3-variant sweep whose trials carry predictions.csv: full 75% right, no_kd 74%, text_only 55%."""
    variants = {k: ABLATION[k] for k in ("full", "no_kd", "text_only")}
    uri = sample_ablation(tmp_path / "runs", "boot", variants=variants, failed=(), killed=())
    files = log_predictions(uri, "boot", {"full": 0.75, "no_kd": 0.74, "text_only": 0.55}, seed=3)
    return uri, files


def test_with_predictions_the_report_uses_the_bootstrap_test_with_ci_and_holm(tmp_path):
    """Child runs that carry predictions.csv (as every trial now logs) get the bootstrap test; its p is the
    one reports.stats computes from the same files, and the caption names the method."""
    from core.predictions import read_predictions
    from reports.stats import Predictions, bootstrap_test

    uri, files = _store_with_predictions(tmp_path)
    result = make_report("boot", uri, tmp_path / "out")
    rows = {(r["variant"], r["metric"]): r for r in _csv(result.paths["csv"])}

    def preds(variant):
        out = {}
        for seed in ("0", "1", "2"):
            r = read_predictions(files[(variant, seed)])
            out[seed] = Predictions.from_rows(r["dialogue_ids"], r["utterance_ids"], r["gold"], r["predicted"],
                                              MELD_LABELS)
        return out
    expected = {v: bootstrap_test(preds(v), preds("full"), "wf1", MELD_LABELS) for v in ("no_kd", "text_only")}
    for variant, test in expected.items():
        row = rows[(variant, "test_wf1")]
        assert row["test"] == "paired bootstrap + seeds"
        assert float(row["p_value"]) == pytest.approx(test.p, rel=1e-9)
        assert float(row["ci_low_pct"]) < float(row["ci_high_pct"]) and float(row["df"]) >= 2
    assert float(rows[("text_only", "test_wf1")]["p_holm"]) < 0.05   # a 20-point drop in accuracy is found
    assert float(rows[("text_only", "test_wf1")]["p_holm"]) == pytest.approx(min(1.0, 2 * min(
        t.p for t in expected.values())), rel=1e-9)                  # Holm over two rows: the smaller p doubled
    assert "paired bootstrap over test dialogues" in result.markdown and "Holm" in result.markdown


def test_the_table_states_each_rows_written_expectation_and_whether_it_was_met(tmp_path):
    """A spec's `expectations` (the parent's tag) become a column, a caption sentence and one note per row; the
    verdicts are the row's own Holm p (below) and TOST against the margin, Holm across the equivalent rows."""
    import json

    from mlflow.tracking import MlflowClient

    from reports.stats import equivalence_p

    uri, _ = _store_with_predictions(tmp_path)
    client = MlflowClient(uri)
    parent = [r for r in client.search_runs([client.get_experiment_by_name("boot").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags][0]
    client.set_tag(parent.info.run_id, "expectations", json.dumps({"equivalence_margin": 0.05, "rows": {
        "text_only": {"must": "below", "why": "loses audio and video"},
        "no_kd": {"must": "equivalent", "why": "one point of skill apart"}}}))
    result = make_report("boot", uri, tmp_path / "out")
    rows = {(r["variant"], r["metric"]): r for r in _csv(result.paths["csv"])}

    text_only = rows[("text_only", "test_wf1")]
    assert text_only["expected"] == "below" and text_only["expected_met"] == "1"
    assert float(text_only["expected_p"]) == float(text_only["p_holm"]) < 0.05
    no_kd = rows[("no_kd", "test_wf1")]
    # The test's own Δ (the centre of its CI: in this sample store the logged metrics are not computed from the
    # predictions, so it differs from delta_pct; in a real sweep the two agree).
    centre = (float(no_kd["ci_low_pct"]) + float(no_kd["ci_high_pct"])) / 200
    tost = equivalence_p(centre, float(no_kd["se_pct"]) / 100, float(no_kd["df"]), 0.05)
    assert no_kd["expected"] == "equivalent 0.05" and float(no_kd["expected_p"]) == pytest.approx(tost, rel=1e-5)  # CSV: 6 decimals
    assert no_kd["expected_met"] == str(int(tost < 0.05))                 # Holm over one row: the p itself
    assert rows[("text_only", "test_acc")]["expected"] == "" and rows[("full", "test_wf1")]["expected"] == ""

    header = next(line for line in result.markdown.splitlines() if line.startswith("| Variant"))
    assert header.rstrip(" |").endswith("expected")
    line = next(line for line in result.markdown.splitlines() if line.startswith("| text_only"))
    assert line.rstrip(" |").endswith("below: met")
    assert "Expected, text_only: below full: met (Holm p=" in result.markdown and "loses audio and video" in result.markdown
    assert "Schuirmann 1987" in result.markdown
    assert "expected</th>" in result.paths["html"].read_text(encoding="utf-8")
    # Against another baseline, or on another metric, the spec's expectations are not checked, and a note says so.
    other = make_report("boot", uri, tmp_path / "other", baseline="no_kd")
    assert "Expected," not in other.markdown and "| expected" not in other.markdown
    assert "this table's baseline is no_kd, so they are not checked here" in other.markdown
    acc = make_report("boot", uri, tmp_path / "acc", metric="test_acc")
    assert "| expected" not in acc.markdown and "this table compares test Acc, so they are not checked" in acc.markdown
    assert "EXPECTATIONS CHANGED AFTER RESULTS" not in result.markdown            # no time recorded: no claim

    # Expectations that took their form after trials had finished are said loudly.
    client.set_tag(parent.info.run_id, "expectations_time", str(int(time.time() * 1000) + 1000))
    late = make_report("boot", uri, tmp_path / "late")
    assert "EXPECTATIONS CHANGED AFTER RESULTS" in late.markdown and "after 9 trial(s)" in late.markdown
    client.set_tag(parent.info.run_id, "expectations_time", "1")
    assert "EXPECTATIONS CHANGED" not in make_report("boot", uri, tmp_path / "early").markdown


def test_expectations_keep_the_time_they_were_first_written_across_reruns(tmp_path):
    """sweep.tracking.ensure_parent: the same expectations on a rerun keep their time; changed ones get a new one."""
    import json

    from mlflow.tracking import MlflowClient

    from sweep.tracking import ensure_parent

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    first = {"expectations": json.dumps({"rows": {"T": {"must": "below", "why": "a"}}})}
    run_id = ensure_parent(client, experiment, "x", "ablate", first, "name: x", "x.yaml", str(tmp_path))
    written = client.get_run(run_id).data.tags["expectations_time"]
    assert ensure_parent(client, experiment, "x", "ablate", first, "name: x", "x.yaml", str(tmp_path)) == run_id
    assert client.get_run(run_id).data.tags["expectations_time"] == written
    time.sleep(0.01)
    changed = {"expectations": json.dumps({"rows": {"T": {"must": "equivalent", "why": "a"}}})}
    ensure_parent(client, experiment, "x", "ablate", changed, "name: x", "x.yaml", str(tmp_path))
    assert int(client.get_run(run_id).data.tags["expectations_time"]) > int(written)
