"""benchmarks/demo_footprint.py: the ideal reader's planted effects, computed from the generator's trace."""
import sys
from pathlib import Path

import pytest

from core.config import DataConfig
from dialogue_data import synthetic
from sweep.ablation_spec import load_ablation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import demo_footprint as footprint  # noqa: E402

SMALL = dict(synthetic_dialogues=40, synthetic_test_dialogues=40, text_signal=0.7, audio_signal=1.0,
             noise_modality="video")
EVERY = footprint.CHANNELS
NO_ROLE = EVERY - {"speaker_embeddings", "prompt"}     # no variant of the demo has this: a check of the reader


def traced(**knobs) -> list[synthetic.PlantedTurn]:
    trace: list[synthetic.PlantedTurn] = []
    synthetic.generate(DataConfig(**SMALL, **knobs), trace=trace)
    return trace


def turn(**fields) -> synthetic.PlantedTurn:
    anger = synthetic.LABELS.index("anger")
    base = dict(split="test", dialogue_id="d", utterance_id="u", label=anger, origin="fresh", source="",
                role_emotion=anger, role_drawn=False, reply=False, corrupt=False, text_cue="none", audio_true=False,
                video_true=False)
    return synthetic.PlantedTurn(**{**base, **fields})


def test_each_variant_has_the_channels_its_config_leaves():
    """The channels come from the variant's own config: the prompt names the speaker's role like the embeddings."""
    demo = {t.variant: footprint.channels(t.cfg) for t in load_ablation(ROOT / "ablations" / "demo.yaml").trials()}
    assert demo["full"] == EVERY
    assert demo["w/o prompt"] == EVERY - {"prompt"}
    assert demo["w/o speaker embeddings"] == EVERY - {"speaker_embeddings"}
    assert demo["T"] == {"text", "prompt", "speaker_embeddings"}
    assert demo["A+V"] == {"audio", "video", "speaker_embeddings"}               # no text: no prompt either
    assert demo["w/o any KD"] == demo["w/o anchor gating"] == EVERY


def test_the_ideal_reader_reads_a_turn_by_the_channels_it_keeps():
    joy = synthetic.LABELS.index("joy")
    assert footprint.ideal_score(turn(text_cue="strong"), EVERY) == 1.0
    assert footprint.ideal_score(turn(text_cue="strong"), {"audio", "speaker_embeddings"}) == 1.0    # role: anger
    assert footprint.ideal_score(turn(text_cue="strong", role_emotion=joy), {"audio", "speaker_embeddings"}) == 0.0
    assert footprint.ideal_score(turn(text_cue="strong", role_emotion=joy), {"audio"}) == pytest.approx(1 / 6)
    assert footprint.ideal_score(turn(reply=True, role_emotion=joy), EVERY - {"prompt"}) == 0.0
    assert footprint.ideal_score(turn(reply=True), EVERY - {"prompt"}) == 1.0   # the role names the reply too
    assert footprint.ideal_score(turn(text_cue="weak", role_emotion=joy), EVERY) == 0.5   # joy is not anger's partner
    assert footprint.ideal_score(turn(text_cue="weak"), NO_ROLE) == 0.5
    assert footprint.ideal_score(turn(), EVERY - {"speaker_embeddings"}) == 1.0   # the prompt's <sK> is the role


def test_the_history_reader_passes_a_sure_read_to_the_turns_that_copy_it():
    first = turn(utterance_id="u0", text_cue="strong", role_emotion=synthetic.LABELS.index("joy"))
    kept = turn(utterance_id="u1", origin="persisted", source="u0", role_emotion=synthetic.LABELS.index("joy"))
    assert footprint.accuracy([first, kept], EVERY, history=False) == 50.0
    assert footprint.accuracy([first, kept], EVERY, history=True) == 100.0
    assert footprint.accuracy([first, kept], {"audio"}, history=True) == pytest.approx(100 / 6)   # nothing sure


def test_a_mechanism_that_is_off_leaves_no_planted_effect_and_one_that_is_on_does():
    rows = {"w/o prompt": EVERY - {"prompt"}, "no role": NO_ROLE, "T+A": EVERY - {"video"}}
    off = footprint.effects(traced(), rows)
    replies = footprint.effects(traced(context_share=0.6), rows)
    roles = footprint.effects(traced(speaker_prior=1.0, corrupt_share=0.5), rows)  # clean audio names every label
    assert off["w/o prompt"]["bound"] == 0.0 and replies["w/o prompt"]["bound"] > 5.0
    assert roles["no role"]["bound"] > off["no role"]["bound"] + 5.0
    assert off["T+A"]["bound"] == replies["T+A"]["bound"] == roles["T+A"]["bound"] == 0.0   # video tells nothing


def test_mechanisms_that_name_the_same_label_share_their_effect():
    """A reply's emotion is fresh, and so is a role-drawn one: with every fresh emotion the speaker's habit, the
    role names every reply too and the prompt has nothing left to add (the demo's 0.5 leaves it part)."""
    rows = {"w/o prompt": EVERY - {"prompt"}, "w/o speaker embeddings": EVERY - {"speaker_embeddings"}}
    both = footprint.effects(traced(context_share=0.6, speaker_prior=1.0, corrupt_share=0.5), rows)
    assert both["w/o prompt"]["bound"] == 0.0
    assert both["w/o speaker embeddings"]["bound"] == 0.0          # the prompt still numbers the speaker
    half = footprint.effects(traced(context_share=0.6, speaker_prior=0.5), rows)["w/o prompt"]["bound"]
    assert 0 < half < footprint.effects(traced(context_share=0.6), rows)["w/o prompt"]["bound"]


def test_the_minimum_detectable_effect_is_holm_and_power_on_the_standard_error():
    assert footprint.mde(2.0, 12) == pytest.approx((2.8653 + 0.8416) * 2.0, abs=1e-3)      # normal quantiles
    assert footprint.mde(2.0, 3) < footprint.mde(2.0, 12) < footprint.mde(2.0, 12, df=10)


def test_the_script_prints_every_variant_of_the_demo(capsys):
    assert footprint.main([]) == 0
    out = capsys.readouterr().out
    assert "SHARE replies (prompt)" in out
    for variant in {t.variant for t in load_ablation(ROOT / "ablations" / "demo.yaml").trials()} - {"full"}:
        assert f"\n{variant} " in out
