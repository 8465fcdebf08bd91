"""`report A B --layout paper`: two real sweeps side by side (the paper's ablation table, a column group per
dataset). Two tiny ablations run through the real engine (Ray, MLflow, stage 1 and stage 2, tests/conftest.py's
tiny synthetic config) on two different synthetic datasets, with partly different variants; the paper table's
numbers must be each sweep's own (its Δ and Holm correction computed within that sweep), its LaTeX must have
booktabs \\multicolumn groups and compile where pdflatex is installed.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from conftest import ensure_local_ray, write_ablation

from reports.cli import main as cli_main
from reports.report import make_paper_report, make_report
from reports.store import tracking_uri_for
from sweep.engine import SweepOptions, run_sweep as sweep_run
from tests.sample_store import compile_with_pdflatex

pytestmark = pytest.mark.slow

FIRST = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False}, "T": {"fusion.modalities": ["text"]}}
SECOND = {"full": {}, "T": {"fusion.modalities": ["text"]}, "V": {"fusion.modalities": ["video"]}}


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, stage1_cache):
    """Sweeps 'iemo' and 'meld' in one store: 3 seeds each (a test needs 3 pairs), two synthetic datasets."""
    ensure_local_ray()
    tmp = tmp_path_factory.mktemp("paper")
    output = tmp / "runs"
    for name, variants, data_seed in (("iemo", FIRST, 0), ("meld", SECOND, 1)):
        spec = write_ablation(tmp, name, variants, seeds=(0, 1, 2), epochs=2)
        outcome = sweep_run("ablate", spec, [f"data.synthetic_seed={data_seed}"],
                            SweepOptions(output=output, cache_dir=stage1_cache))
        assert outcome.status == "finished" and outcome.exit_code == 0, outcome
    return output


def _rows(text: str) -> dict:
    return {(r.get("sweep", ""), r["variant"], r["metric"]): r for r in csv.DictReader(io.StringIO(text))}


def test_two_sweeps_side_by_side_with_each_groups_own_delta_and_holm(two_sweeps, tmp_path):
    uri = tracking_uri_for(two_sweeps)
    markdown, paths = make_paper_report(["iemo", "meld"], uri, tmp_path / "paper", metrics=["test_acc", "test_wf1"])
    assert sorted(p.name for p in paths.values()) == ["paper.csv", "paper.html", "paper.md", "paper.tex"]

    # Rows: the variants matched by name, in the first sweep's order, then what the second adds.
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| Variant | iemo (synthetic): test Acc | iemo (synthetic): Δ | iemo (synthetic): test wF1")
    assert "meld (synthetic): test wF1 | meld (synthetic): Δ |" in lines[0]
    assert [ln.split(" | ")[0][2:] for ln in lines[2:]] == ["full", "w/o anchor gating", "T", "V"]
    gating = next(ln for ln in lines if ln.startswith("| w/o anchor gating"))
    assert gating.rstrip(" |").split(" | ")[-4:] == ["—"] * 4          # the second sweep has no such row
    full = next(ln for ln in lines if ln.startswith("| full"))
    assert full.count("| base ") == 4                                     # each sweep's baseline, each metric

    # Each group is exactly that sweep's own report: same means, same Δ, same Holm-corrected p.
    paper = _rows(paths["csv"].read_text(encoding="utf-8"))
    for name, variants in (("iemo", FIRST), ("meld", SECOND)):
        own = make_report(name, uri, tmp_path / name, formats=("csv",))
        alone = _rows(own.paths["csv"].read_text(encoding="utf-8"))
        for variant in variants:
            for metric in ("test_acc", "test_wf1"):
                mine, theirs = paper[(name, variant, metric)], alone[(name, variant, metric)]
                assert float(mine["mean_pct"]) == pytest.approx(100 * float(theirs["mean"]), abs=1e-6)
                assert mine["delta_pct"] == theirs["delta_pct"] and mine["p_holm"] == theirs["p_holm"]
                assert mine["run_ids"] == theirs["run_ids"] and len(mine["run_ids"].split(";")) == 3
    # Holm within each sweep: two compared rows in each, so its own family of two (not four across sweeps).
    holm = [float(paper[("meld", v, "test_wf1")]["p_holm"]) for v in ("T", "V")]
    raw = [float(paper[("meld", v, "test_wf1")]["p_value"]) for v in ("T", "V")]
    assert max(holm) == pytest.approx(min(1.0, max(2 * min(raw), max(raw))), rel=1e-9)


def test_the_paper_latex_has_a_multicolumn_group_per_sweep_and_compiles(two_sweeps, tmp_path):
    uri = tracking_uri_for(two_sweeps)
    _, paths = make_paper_report(["iemo", "meld"], uri, tmp_path / "paper", formats=("tex",),
                                 metrics=["test_acc", "test_wf1"])
    tex = paths["tex"].read_text(encoding="utf-8")
    assert r"\multicolumn{4}{c}{iemo (synthetic)} & \multicolumn{4}{c}{meld (synthetic)} \\" in tex
    assert r"\cmidrule(lr){2-5}\cmidrule(lr){6-9}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\begin{tabular}{lrrrrrrrr}" in tex and r"w/o anchor gating & " in tex
    compile_with_pdflatex(paths["tex"], tmp_path, packages="booktabs,graphicx")


def test_the_command_line_writes_the_paper_table_and_refuses_two_sweeps_without_it(two_sweeps, capsys):
    out = str(two_sweeps)
    assert cli_main(["report", "iemo", "meld", "--layout", "paper", "--metrics", "test_wf1", "--output", out]) == 0
    captured = capsys.readouterr()
    assert "| Variant | iemo (synthetic): test wF1 | iemo (synthetic): Δ | meld (synthetic): test wF1 |" in captured.out
    assert (Path(out) / "reports" / "iemo+meld" / "paper.tex").exists()
    assert "report: reading sweep 'meld'" in captured.err                # it says what it is doing
    assert cli_main(["report", "iemo", "meld", "--output", out]) == 2
    assert "need --layout paper" in capsys.readouterr().err
    assert cli_main(["report", "iemo", "meld", "--layout", "paper", "--metrics", "test_auc", "--output", out]) == 2
    assert "--metrics 'test_auc'" in capsys.readouterr().err
