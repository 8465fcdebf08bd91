"""Every YAML shipped in ablations/ and search_spaces/ loads, validates, and opens with its command."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from sweep.ablation_spec import load_ablation
from sweep.search_space import load_search_space

ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
# Loading and validating a spec needs no data: paths are checked when a sweep is launched. So the
# opening command's overrides are used exactly as written, paths that do not exist here included.
PATH_OVERRIDE = ["data.path=/data/MELD"]


def _opening_command(path: Path, command: str) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = re.match(rf"^# python run_sweep\.py {command} (\S+)(.*)$", first)
    assert match, f"{path.name} must open with '# python run_sweep.py {command} {path.parent.name}/{path.name} ...'"
    assert match.group(1) == f"{path.parent.name}/{path.name}", f"{path.name}: the opening command runs another file"
    return match.group(2)


def _overrides(rest: str) -> list[str]:
    """The dotted overrides the opening command passes."""
    return [tok for tok in rest.split() if "=" in tok and not tok.startswith("-")]


def test_the_shipped_files_are_there():
    names = {p.name for p in ABLATIONS} | {p.name for p in SPACES}
    assert {"magtkd.yaml", "demo.yaml", "fusion.yaml", "stage1.yaml"} <= names


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_file_validates(path):
    rest = _opening_command(path, "ablate")
    spec = load_ablation(path, _overrides(rest))
    trials = spec.trials()
    assert len(trials) == len(spec.variants) * len(spec.seeds)
    assert len({t.config_hash for t in trials}) == len(trials)  # every variant x seed is a distinct config


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_search_space_file_validates(path):
    rest = _opening_command(path, "tune")
    spec = load_search_space(path, _overrides(rest))
    assert spec.params and spec.num_samples >= 1
    pickle.dumps(spec.define_by_run({"x": 1}))  # OptunaSearch pickles its space with the experiment


def test_the_ablation_study_has_the_papers_rows():
    magtkd = load_ablation(ROOT / "ablations" / "magtkd.yaml", PATH_OVERRIDE)
    rows = ["full", "w/o prompt", "w/o stage-1 KD", "w/o stage-2 KD", "w/o any KD", "w/o anchor gating",
            "T", "A", "V", "T+A", "T+V", "A+V"]
    assert [v.name for v in magtkd.variants] == rows
    assert magtkd.base.data.name == "meld" and magtkd.baseline == "full"
    demo = load_ablation(ROOT / "ablations" / "demo.yaml")
    # The same study, sized for the synthetic default, plus a row for its planted speaker mechanism.
    assert [v.name for v in demo.variants] == rows[:6] + ["w/o speaker embeddings"] + rows[6:]
    assert demo.base.data.name == "synthetic"
    assert min(demo.base.data.context_share, demo.base.data.train_label_noise, demo.base.data.corrupt_share,
               demo.base.data.speaker_prior) > 0     # every planted mechanism is on
    assert demo.stage1_seed_mode == "shared"          # sized for 2 cores: rows that change stage 1 are marked
    by_name = {t.variant: t.cfg for t in demo.trials() if t.seed == demo.seeds[0]}
    assert by_name["w/o prompt"].stage1.prompt is False
    assert by_name["w/o stage-1 KD"].stage1.kd is False
    assert by_name["w/o stage-2 KD"].fusion.kd_audio_weight == 0 == by_name["w/o stage-2 KD"].fusion.kd_video_weight
    assert by_name["w/o anchor gating"].fusion.anchor_gating is False
    assert by_name["T+V"].fusion.modalities == ["text", "video"]


def test_the_iemocap_study_has_the_authors_iemocap_settings():
    iemocap = load_ablation(ROOT / "ablations" / "magtkd_iemocap.yaml", ["data.path=/data/iemocap"])
    base = iemocap.base
    assert base.data.name == "iemocap" and iemocap.baseline == "full"
    assert base.stage1.audio_lr == 5e-6 and base.stage1.lr == 1e-5       # audio alone at 5e-6
    assert base.stage1.kd and base.stage1.kd_modalities == ["audio"]     # video: the plain encoder
    assert (base.fusion.kd_audio_weight, base.fusion.kd_video_weight) == (0.7, 0.8)
    assert "feature" in base.fusion.kd_terms
    by_name = {t.variant: t.cfg for t in iemocap.trials() if t.seed == iemocap.seeds[0]}
    assert by_name["w/o stage-2 KD"].fusion.kd_audio_weight == 0 and by_name["A+V"].fusion.modalities == ["audio", "video"]
