"""Ablation and search-space specs: bad input fails at load time with file, line, key and a suggestion."""
from __future__ import annotations

from pathlib import Path
import pickle
import textwrap

import optuna
import pytest

from core.config import ConfigError
from sweep.ablation_spec import load_ablation
from sweep.search_space import define_by_run, load_search_space
from sweep.spec_common import parse_cli_overrides, slugify, within

ABLATION = """\
# python run_sweep.py ablate x.yaml
name: study
dataset: synthetic
base:
  train.epochs: 2
  fusion.width: 32
  fusion.heads: 4
variants:
  full: {}
  w/o prompt: {stage1.prompt: false}
  T: {fusion.modalities: [text]}
seeds: [0, 1]
"""

SPACE = """\
# python run_sweep.py tune x.yaml
name: space
dataset: synthetic
base: {train.epochs: 4}
num_samples: 5
params:
  train.lr: {type: float, low: 1e-5, high: 1.0e-3, log: true}
  fusion.anchor_gating: {type: categorical, choices: [true, false]}
  fusion.layers: {type: int, low: 1, high: 3, when: {fusion.anchor_gating: true}}
  width_heads:
    type: categorical
    choices:
      - {fusion.width: 32, fusion.heads: 4}
      - {fusion.width: 48, fusion.heads: 6}
"""


def _write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_ablation_loads_in_table_order(tmp_path):
    spec = load_ablation(_write(tmp_path, ABLATION), ["train.epochs=3"])
    assert [v.name for v in spec.variants] == ["full", "w/o prompt", "T"] and spec.baseline == "full"
    trials = spec.trials()
    assert [(t.variant, t.seed) for t in trials][:3] == [("full", 0), ("full", 1), ("w/o prompt", 0)]
    assert all(t.cfg.train.epochs == 3 for t in trials)            # the command line applies to every variant
    assert trials[2].cfg.stage1.prompt is False and trials[4].cfg.fusion.modalities == ["text"]
    assert spec.plan_key() == load_ablation(_write(tmp_path, ABLATION), ["train.epochs=3"]).plan_key()
    assert spec.plan_key() != load_ablation(_write(tmp_path, ABLATION), ["train.epochs=4"]).plan_key()


def test_unknown_key_in_a_variant_names_file_line_variant_and_suggests(tmp_path):
    path = _write(tmp_path, ABLATION.replace("{stage1.prompt: false}", "{stage1.promt: false}"))
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    msg = str(err.value)
    assert f"{path}:10" in msg and "variant 'w/o prompt'" in msg and "stage1.promt" in msg
    assert "Did you mean 'stage1.prompt'" in msg


EXPECTATIONS = """\
expectations:
  equivalence_margin: 0.05
  rows:
    w/o prompt: {must: below, why: "replies need the turn before"}
    T: {must: equivalent, why: "video and audio are noise here"}
"""


def test_expectations_load_and_leave_the_plan_alone(tmp_path):
    spec = load_ablation(_write(tmp_path, ABLATION + EXPECTATIONS))
    assert spec.expectations == {"metric": "test_wf1", "equivalence_margin": 0.05, "rows": {
        "w/o prompt": {"must": "below", "why": "replies need the turn before"},
        "T": {"must": "equivalent", "why": "video and audio are noise here"}}}
    assert load_ablation(_write(tmp_path, ABLATION)).expectations == {}
    assert spec.plan_key() == load_ablation(_write(tmp_path, ABLATION)).plan_key()   # no part of what is trained


@pytest.mark.parametrize("bad, line, message", [
    ("    typo: {must: below, why: x}", 5, "names 'typo', which is not a variant"),
    ("    full: {must: below, why: x}", 5, "'full' is the baseline"),
    ("    T: {must: above, why: x}", 5, "must be one of below, equivalent, got 'above'"),
    ("    T: {must: below}", 5, "needs 'why'"),
    ("    T: {must: below, why: x, how: y}", 5, "unknown key 'how'"),
])
def test_a_bad_expectation_names_the_file_line_and_key(tmp_path, bad, line, message):
    text = ABLATION + "expectations:\n  equivalence_margin: 0.05\n  rows:\n" + bad + "\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    first = len(ABLATION.splitlines())
    assert f"{path}:{first + line - 1}" in str(err.value) and message in str(err.value), str(err.value)


@pytest.mark.parametrize("change, message", [
    (("  equivalence_margin: 0.05\n", ""), "need expectations.equivalence_margin"),
    (("0.05", "0.5"), "a number in (0, 0.2]"),
    (("0.05", "abc"), "got 'abc'"),
    (("    T: {must: equivalent", "    T: {must: below"), "is given but no row is 'equivalent'"),
    (("  equivalence_margin: 0.05\n", "  equivalence_margin: 0.05\n  metric: test_loss\n"),
     "expectations.metric must be one of"),
])
def test_a_bad_margin_or_metric_names_the_file_and_line(tmp_path, change, message):
    path = _write(tmp_path, ABLATION + EXPECTATIONS.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    assert message in str(err.value) and f"{path}:" in str(err.value), str(err.value)


def test_unknown_key_in_base_and_on_the_command_line(tmp_path):
    path = _write(tmp_path, ABLATION.replace("fusion.width: 32", "fusion.widht: 32"))
    with pytest.raises(ConfigError, match=r"x.yaml:6: unknown key 'fusion.widht'.*Did you mean 'fusion.width'"):
        load_ablation(path)
    with pytest.raises(ConfigError, match=r"<command line>: unknown key 'train.epoch'.*Did you mean 'train.epochs'"):
        load_ablation(_write(tmp_path, ABLATION), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="must be key=value"):
        parse_cli_overrides(["train.epochs"])


def test_wrong_type_and_out_of_range_values_name_the_variant(tmp_path):
    path = _write(tmp_path, ABLATION.replace("{fusion.modalities: [text]}", "{fusion.dropout: 1.5}"))
    with pytest.raises(ConfigError, match=r"variant 'T'.*fusion.dropout.*\[0, 1\)"):
        load_ablation(path)
    path = _write(tmp_path, ABLATION.replace("{stage1.prompt: false}", "{stage1.prompt: maybe}"))
    with pytest.raises(ConfigError, match=r"variant 'w/o prompt'.*stage1.prompt.*must be bool"):
        load_ablation(path)
    path = _write(tmp_path, ABLATION.replace("fusion.heads: 4", "fusion.heads: 5"))
    with pytest.raises(ConfigError, match="fusion.heads.*must divide fusion.width"):
        load_ablation(path)


def test_yaml_errors_name_file_and_line(tmp_path):
    path = _write(tmp_path, ABLATION.replace("  T: {fusion.modalities: [text]}", "  T: {fusion.modalities: [text}"))
    with pytest.raises(ConfigError, match=r"x.yaml: line 11, column \d+: YAML syntax error"):
        load_ablation(path)
    path = _write(tmp_path, ABLATION.replace("  T: {fusion.modalities: [text]}\n",
                                             "  T: {fusion.modalities: [text]}\n  full: {fusion.width: 64}\n"))
    with pytest.raises(ConfigError, match=r"x.yaml:12: duplicate key 'full' \(first at line 9\) under variants"):
        load_ablation(path)
    with pytest.raises(ConfigError, match="unknown key 'variant'.*Did you mean 'variants'"):
        load_ablation(_write(tmp_path, ABLATION.replace("variants:", "variant:")))
    with pytest.raises(ConfigError, match="file not found"):
        load_ablation(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["../../x", "/etc", "a/b", "..", "x..y", ""])
def test_sweep_names_cannot_leave_the_output_directory(tmp_path, name):
    with pytest.raises(ConfigError, match="sweep name"):
        load_ablation(_write(tmp_path, ABLATION.replace("name: study", f"name: '{name}'")))


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/../b", "~root", "tab\there", "./x"])
def test_path_like_variant_names_are_refused(tmp_path, name):
    text = ABLATION.replace("  T: {fusion", f"  {name!r}: {{fusion".replace("'", '"'))
    with pytest.raises(ConfigError, match="variant name"):
        load_ablation(_write(tmp_path, text))


def test_display_names_become_slugs_and_paths_stay_inside(tmp_path):
    assert slugify("w/o prompt") == "w-o-prompt" and slugify("T+A") == "T-A" and slugify("../../x") == "x"
    assert within(tmp_path, "ray", "demo") == (tmp_path / "ray" / "demo").resolve()
    with pytest.raises(ConfigError, match="outside the output directory"):
        within(tmp_path, "ray", "../../../x")
    text = ABLATION.replace("  T: {fusion.modalities: [text]}", "  w-o prompt: {}")
    with pytest.raises(ConfigError, match="same file-safe name"):
        load_ablation(_write(tmp_path, text))


def test_seeds_resources_and_stage1_seed_mode(tmp_path):
    with pytest.raises(ConfigError, match="seeds.*lists a seed twice"):
        load_ablation(_write(tmp_path, ABLATION.replace("seeds: [0, 1]", "seeds: [0, 0]")))
    with pytest.raises(ConfigError, match="resources.gpu above 1 must be a whole number"):
        load_ablation(_write(tmp_path, ABLATION + "resources: {cpu: 1, gpu: 1.5}\n"))
    with pytest.raises(ConfigError, match="resources.cpu must be > 0"):
        load_ablation(_write(tmp_path, ABLATION + "resources: {cpu: 0}\n"))
    spec = load_ablation(_write(tmp_path, ABLATION + "resources: {cpu: 2, gpu: 0.25}\nstage1_seed: shared\n"))
    assert spec.resources.gpu == 0.25 and spec.stage1_seed_mode == "shared"
    assert {t.cfg.stage1_seed for t in spec.trials()} == {0}       # every seed reuses stage 1 of seed 0
    per_seed = load_ablation(_write(tmp_path, ABLATION))
    assert {t.cfg.stage1_seed for t in per_seed.trials()} == {0, 1}


def test_a_missing_dataset_path_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="data.path' is required for data.name=meld"):
        load_ablation(_write(tmp_path, ABLATION.replace("dataset: synthetic", "dataset: meld")))


# ---- search spaces -----------------------------------------------------------------------------

def test_search_space_compiles_to_a_picklable_define_by_run(tmp_path):
    spec = load_search_space(_write(tmp_path, SPACE))
    assert spec.searched_keys == ["train.lr", "fusion.anchor_gating", "fusion.layers", "fusion.width", "fusion.heads"]
    space = pickle.loads(pickle.dumps(spec.define_by_run({"sweep": "space"})))  # noqa: S301 (our own object)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen_layers = set()
    for _ in range(30):
        trial = study.ask()
        settings = space(trial)["trial"]
        over = settings["overrides"]
        assert settings["sweep"] == "space"
        assert 1e-5 <= over["train.lr"] <= 1e-3
        assert (over["fusion.width"], over["fusion.heads"]) in ((32, 4), (48, 6))   # grouped: always a valid pair
        # conditional: layers only when gating is on
        assert ("fusion.layers" in over) == over["fusion.anchor_gating"]
        seen_layers.add(over.get("fusion.layers"))
        spec.config_for(over)                                          # every sample is a valid config
        study.tell(trial, 0.5)
    assert None in seen_layers and len(seen_layers) > 2


def test_a_space_that_can_break_the_config_is_refused_with_the_values(tmp_path):
    text = SPACE.replace("""  width_heads:
    type: categorical
    choices:
      - {fusion.width: 32, fusion.heads: 4}
      - {fusion.width: 48, fusion.heads: 6}
""", """  fusion.width: {type: categorical, choices: [32, 48]}
  fusion.heads: {type: categorical, choices: [4, 6]}
""")
    with pytest.raises(ConfigError, match=r"x.yaml:1[01]: the search space can produce an invalid config "
                                          r"\(.*fusion.width=32.*fusion.heads=6.*must divide"):
        load_search_space(_write(tmp_path, text))


@pytest.mark.parametrize("bad, message", [
    ("train.lr: {type: float, low: 1e-5, high: 1.0e-3, log: true}",
     None),
    ("train.lr: {type: float, low: 0, high: 1.0e-3, log: true}", "log scale needs low > 0"),
    ("train.lr: {type: float, low: 1.0e-3, high: 1.0e-5}", "needs low < high"),
    ("train.lr: {type: normal, low: 1, high: 2}", "type must be float, int or categorical"),
    ("train.lrr: {type: float, low: 1.0e-5, high: 1.0e-3}", "unknown key 'train.lrr'.*Did you mean 'train.lr'"),
    ("train.lr: {type: float, low: 1.0e-5, hgh: 1.0e-3}", "unknown key 'hgh'"),
    ("train.lr: {type: categorical, choices: []}", "non-empty list 'choices'"),
    ("fusion.max_speakers: {type: int, low: 1.5, high: 3}", "int bounds must be whole numbers"),
])
def test_parameter_errors(tmp_path, bad, message):
    text = SPACE.replace("  train.lr: {type: float, low: 1e-5, high: 1.0e-3, log: true}", "  " + bad)
    if message is None:
        load_search_space(_write(tmp_path, text))
        return
    with pytest.raises(ConfigError, match=message):
        load_search_space(_write(tmp_path, text))


def test_metric_must_be_a_reported_dev_metric(tmp_path):
    with pytest.raises(ConfigError, match="tuning on the test split would leak"):
        load_search_space(_write(tmp_path, SPACE + "metric: selected_test_wf1\n"))
    with pytest.raises(ConfigError, match="Did you mean 'dev_wf1'"):
        load_search_space(_write(tmp_path, SPACE + "asha: {metric: dev_wf}\n"))
    with pytest.raises(ConfigError, match="asha.max_t' \\(9\\) exceeds train.epochs \\(4\\)"):
        load_search_space(_write(tmp_path, SPACE + "asha: {max_t: 9}\n"))


def test_define_by_run_is_module_level():
    assert define_by_run.__module__ == "sweep.search_space" and "<locals>" not in define_by_run.__qualname__


def test_launch_order_starts_every_distinct_stage1_first():
    from sweep.plan import stage1_first_order
    spec = load_ablation(Path(__file__).resolve().parent.parent / "ablations" / "demo.yaml")
    plans = spec.trials()
    order = stage1_first_order(plans)
    assert sorted((p.variant, p.seed) for p in order) == sorted((p.variant, p.seed) for p in plans)
    distinct = {p.cfg.stage1_hash() for p in plans}
    # 3 stage-1 configs (prompt on/off x stage-1 KD on/off, minus prompt-off without KD: not a variant);
    # the demo shares one stage 1 across seeds (stage1_seed: shared).
    assert len(distinct) == 3
    assert {p.cfg.stage1_hash() for p in order[:len(distinct)]} == distinct
