"""benchmarks/demo_footprint.py: the ideal reader's bound on each planted effect, computed from the generator's trace."""
import sys
from pathlib import Path

import pytest

from core.config import DataConfig
from dialogue_data import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import demo_footprint as footprint  # noqa: E402

SMALL = dict(synthetic_dialogues=40, synthetic_test_dialogues=40, text_signal=0.7, audio_signal=1.0,
             noise_modality="video")


def traced(**knobs) -> list[synthetic.PlantedTurn]:
    trace: list[synthetic.PlantedTurn] = []
    synthetic.generate(DataConfig(**SMALL, **knobs), trace=trace)
    return trace


def turn(**fields) -> synthetic.PlantedTurn:
    anger = synthetic.LABELS.index("anger")
    base = dict(split="test", dialogue_id="d", utterance_id="u", label=anger, origin="fresh", role_emotion=anger,
                role_drawn=False, reply=False, corrupt=False, text_cue="none", audio_true=False, video_true=False)
    return synthetic.PlantedTurn(**{**base, **fields})


def test_the_ideal_reader_reads_a_turn_by_the_channels_it_keeps():
    every = footprint.ALL
    assert footprint.ideal_score(turn(text_cue="strong"), every) == 1.0
    assert footprint.ideal_score(turn(text_cue="strong"), every - {"text"}) == pytest.approx(1.0)   # role: anger
    joy = synthetic.LABELS.index("joy")
    assert footprint.ideal_score(turn(text_cue="strong", role_emotion=joy), every - {"text"}) == 0.0
    assert footprint.ideal_score(turn(text_cue="strong", role_emotion=joy), every - {"text", "role"}) == \
        pytest.approx(1 / 6)
    assert footprint.ideal_score(turn(reply=True, role_emotion=joy), every - {"prompt"}) == 0.0
    assert footprint.ideal_score(turn(text_cue="weak", role_emotion=joy), every) == 0.5    # joy is not anger's partner
    assert footprint.ideal_score(turn(text_cue="weak"), every - {"role"}) == 0.5


def test_a_mechanism_that_is_off_leaves_its_row_no_planted_effect_and_one_that_is_on_does():
    off = footprint.bounds(traced())
    replies = footprint.bounds(traced(context_share=0.6))
    roles = footprint.bounds(traced(speaker_prior=1.0, corrupt_share=0.5))   # clean audio would name every label
    assert off["w/o prompt"] == 0.0 and replies["w/o prompt"] > 5.0            # no replies, then replies
    assert roles["w/o speaker embeddings"] > off["w/o speaker embeddings"] + 5.0
    assert off["T+A"] == replies["T+A"] == roles["T+A"] == 0.0                 # video carries nothing: a null
    assert roles["V"] > 0 and replies["A"] > off["A"]                          # a reply's question is text


def test_mechanisms_that_name_the_same_label_share_their_effect():
    """A reply's emotion is fresh, and so is a role-drawn one: with every fresh emotion the speaker's habit, the
    role names every reply too, and the prompt has nothing left to add (the demo's 0.5 leaves it half)."""
    both = footprint.bounds(traced(context_share=0.6, speaker_prior=1.0))
    assert both["w/o prompt"] == 0.0
    assert 0 < footprint.bounds(traced(context_share=0.6, speaker_prior=0.5))["w/o prompt"] < \
        footprint.bounds(traced(context_share=0.6))["w/o prompt"]


def test_the_minimum_detectable_effect_is_holm_and_power_on_the_standard_error():
    assert footprint.mde(2.0, 12) == pytest.approx((2.8653 + 0.8416) * 2.0, abs=1e-3)      # normal quantiles
    assert footprint.mde(2.0, 3) < footprint.mde(2.0, 12) < footprint.mde(2.0, 12, df=10)


def test_the_script_prints_every_variant_of_the_demo(capsys):
    assert footprint.main([]) == 0
    out = capsys.readouterr().out
    assert "SHARE replies (prompt)" in out
    for variant in footprint.REMOVES:
        assert f"\n{variant} " in out
