"""The embedded synthetic default: deterministic, well-formed, cheap, and with its planted effects."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from dialogue_data import synthetic
from dialogue_data.registry import load_dataset
from core.config import DataConfig, load_config


@pytest.fixture(scope="module")
def default():
    return synthetic.generate(DataConfig())


def test_default_is_shaped_as_documented(default):  # its generation time: benchmarks, not tests
    dataset = default
    assert dataset.labels == synthetic.LABELS and len(dataset.labels) == 6
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [120, 30, 30]
    cfg = DataConfig()
    for split in ("train", "dev", "test"):
        for dialogue in dataset.splits[split]:
            assert 4 <= len(dialogue.utterances) <= 12
            speakers = [u.speaker for u in dialogue.utterances]
            assert 2 <= len(set(speakers)) <= 4
            assert all(a != b for a, b in zip(speakers, speakers[1:]))  # nobody speaks twice in a row
        cov = dataset.coverage(split)
        assert cov["text"] == cov["audio"] == cov["video"] == cov["utterances"]
    u = dataset.splits["train"][0].utterances[0]
    assert u.waveform.dtype == np.float32 and u.waveform.shape == (cfg.sample_rate,)
    assert u.frames.dtype == np.float32 and u.frames.shape == (cfg.frames, 3, cfg.frame_size, cfg.frame_size)
    assert 0.0 <= u.frames.min() and u.frames.max() <= 1.0 and np.abs(u.waveform).max() <= 1.0
    labels = np.bincount([u.label for u in dataset.utterances("train")], minlength=6)
    assert labels.min() > 0.5 * labels.mean()  # roughly balanced


def test_deterministic_by_synthetic_seed_only():
    small = DataConfig(synthetic_dialogues=8)
    a, b = synthetic.generate(small), synthetic.generate(small)
    assert a.fingerprint() == b.fingerprint()
    assert synthetic.generate(DataConfig(synthetic_dialogues=8, synthetic_seed=1)).fingerprint() != a.fingerprint()
    # dev/test do not move when only the training set grows
    bigger = synthetic.generate(DataConfig(synthetic_dialogues=9))
    assert [d.utterances[0].text for d in bigger.splits["dev"][:2]] == [d.utterances[0].text for d in a.splits["dev"][:2]]


def test_a_larger_test_split_adds_dialogues_and_leaves_train_and_dev_alone():
    small = DataConfig(synthetic_dialogues=8, audio_seconds=0.25, sample_rate=4000, frames=2, frame_size=8)
    a = synthetic.generate(small)
    b = synthetic.generate(DataConfig(**{**small.__dict__, "synthetic_test_dialogues": 7}))
    assert [len(b.splits[s]) for s in ("train", "dev", "test")] == [8, 2, 7]
    text = lambda ds, split: [[u.text for u in d.utterances] for d in ds.splits[split]]
    labels = lambda ds, split: [[u.label for u in d.utterances] for d in ds.splits[split]]
    for split in ("train", "dev"):
        assert text(a, split) == text(b, split) and labels(a, split) == labels(b, split)
    assert text(b, "test")[:2] == text(a, "test") and labels(b, "test")[:2] == labels(a, "test")
    assert "test dialogues=7" in b.source and "test dialogues" not in a.source
    with pytest.raises(ValueError, match="data.synthetic_test_dialogues"):
        load_config(None, ["data.synthetic_test_dialogues=-1"])


def test_registry_applies_max_dialogues_and_overrides():
    cfg = load_config(None, ["data.max_dialogues=3", "data.synthetic_dialogues=8", "data.frames=2",
                             "data.audio_seconds=0.25"])
    dataset = load_dataset(cfg.data)
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [3, 2, 2]
    assert dataset.splits["train"][0].utterances[0].waveform.shape == (4000,)
    assert dataset.splits["train"][0].utterances[0].frames.shape[0] == 2
    assert any("max_dialogues" in n for n in dataset.notes)
    again = load_dataset(cfg.data)          # memoised: same content, separate containers
    assert again.fingerprint() == dataset.fingerprint() and again.notes is not dataset.notes


# ---- planted effects, checked with logistic regression on simple hand features ----------------

def _features(dataset, split):
    utts = list(dataset.utterances(split))
    y = np.array([u.label for u in utts])
    waves = np.stack([u.waveform for u in utts])                          # (N, samples)
    mag = np.abs(np.fft.rfft(waves, axis=1))
    freqs = np.fft.rfftfreq(waves.shape[1], 1.0 / dataset.sample_rate)
    edges = np.geomspace(100, 500, 25)                                     # FFT magnitude in pitch bins
    audio = np.log1p(np.stack([mag[:, (freqs >= lo) & (freqs < hi)].mean(1) for lo, hi in zip(edges[:-1], edges[1:])], 1))
    frames = np.stack([u.frames.mean(0) for u in utts])                   # (N, 3, S, S), time-pooled
    s = frames.shape[-1]
    video = frames.reshape(len(utts), 3, 4, s // 4, 4, s // 4).mean((3, 5)).reshape(len(utts), -1)
    return [u.text for u in utts], audio, video, y


def _dev_scores(dataset):
    text_tr, audio_tr, video_tr, y_tr = _features(dataset, "train")
    text_dv, audio_dv, video_dv, y_dv = _features(dataset, "dev")
    bow = CountVectorizer(token_pattern=r"[a-z']+").fit(text_tr)
    sa, sv = StandardScaler().fit(audio_tr), StandardScaler().fit(video_tr)
    mods = {"text": (bow.transform(text_tr).toarray(), bow.transform(text_dv).toarray()),
            "audio": (sa.transform(audio_tr), sa.transform(audio_dv)),
            "video": (sv.transform(video_tr), sv.transform(video_dv))}
    mods["all"] = tuple(np.concatenate([mods[m][i] for m in ("text", "audio", "video")], 1) for i in (0, 1))
    scores = {}
    with threadpool_limits(1):  # tiny problems: threaded BLAS only fights over the 2 shared cores (50x slower)
        for name, (train, dev) in mods.items():
            pred = LogisticRegression(max_iter=3000).fit(train, y_tr).predict(dev)
            scores[name] = (accuracy_score(y_dv, pred), f1_score(y_dv, pred, average="weighted"))
    return scores


def test_planted_order_all_over_text_over_audio_over_video(default):
    dataset = default
    scores = _dev_scores(dataset)
    chance = 1.0 / len(dataset.labels)
    for i, metric in enumerate(("accuracy", "weighted F1")):
        got = {m: round(s[i], 3) for m, s in scores.items()}
        assert got["all"] > got["text"] > got["audio"] > got["video"] > chance + 0.08, f"{metric}: {got}"
    assert scores["all"][0] - scores["text"][0] > 0.03       # combining genuinely helps (0.05 here)
    assert scores["text"][0] - scores["audio"][0] > 0.08     # audio clearly worse than text (0.16 here)
    assert scores["audio"][0] - scores["video"][0] > 0.08     # (0.17 here)


def test_noise_modality_carries_no_label_information():
    dataset = synthetic.generate(DataConfig(noise_modality="audio"))
    scores = _dev_scores(dataset)
    assert scores["audio"][0] < 1.0 / 6 + 0.1, scores         # chance level
    assert scores["text"][0] > 0.55 and scores["video"][0] > 0.28
    assert any("audio" in n for n in dataset.notes)


def test_each_planted_mechanism_is_off_by_default_and_does_what_its_knob_says():
    """One data.* knob per MAGTKD part; at 0 the data are byte-identical to the default."""
    small = dict(synthetic_dialogues=40)
    base = synthetic.generate(DataConfig(**small))
    assert synthetic.generate(DataConfig(**small, context_share=0.0, train_label_noise=0.0, corrupt_share=0.0,
                                         speaker_prior=0.0)).fingerprint() == base.fingerprint()

    # Context: replies that name no emotion; the turn before (and only that one) asks about an event of exactly
    # the reply's emotion.
    ctx = synthetic.generate(DataConfig(**small, context_share=1.0))
    event_emotion = {e: lbl for lbl, events in synthetic.EVENTS.items() for e in events}
    n_replies = 0
    for dialogue in ctx.splits["test"]:
        for before, u in zip(dialogue.utterances, dialogue.utterances[1:]):
            asked = [e for e in event_emotion if e in before.text]
            if synthetic.is_reply(u.text):
                n_replies += 1
                assert asked and event_emotion[asked[-1]] == synthetic.LABELS[u.label], (before.text, u.text)
            else:
                assert not asked, (before.text, u.text)     # an event is only ever asked about before a reply
    assert n_replies > 0.15 * sum(1 for _ in ctx.utterances("test"))

    # Label noise: train only; dev and test identical to the clean data.
    noisy = synthetic.generate(DataConfig(**small, train_label_noise=0.5))
    flips = [a.label != b.label for a, b in zip(noisy.utterances("train"), base.utterances("train"))]
    assert 0.3 < np.mean(flips) < 0.55   # half re-drawn, 5 of 6 of those change
    assert [u.label for u in noisy.utterances("test")] == [u.label for u in base.utterances("test")]

    # Corruption: some dialogues' audio is a loud bad line, the others are as usual.
    bad = synthetic.generate(DataConfig(**small, corrupt_share=0.5))
    floor = [np.median(np.abs(d.utterances[0].waveform)) for d in bad.splits["train"]]
    assert 0.25 < np.mean(np.asarray(floor) > 0.15) < 0.75

    # Speaker roles: the first speaker of a dialogue is angry far more often than 1/6.
    prior = synthetic.generate(DataConfig(**small, speaker_prior=1.0))
    first = [d.utterances[0].label for split in ("train", "dev", "test") for d in prior.splits[split]]
    assert np.mean([lbl == synthetic.LABELS.index("anger") for lbl in first]) > 0.9


def test_the_trace_records_what_was_planted_without_changing_the_data():
    """`generate(trace=...)` says which channels carry each label (benchmarks/demo_footprint.py) from the same draws."""
    cfg = DataConfig(synthetic_dialogues=60, context_share=0.6, train_label_noise=0.3, corrupt_share=0.4,
                     speaker_prior=0.5, audio_signal=0.6, video_signal=0.5)
    trace: list[synthetic.PlantedTurn] = []
    dataset = synthetic.generate(cfg, trace=trace)
    assert dataset.fingerprint() == synthetic.generate(cfg).fingerprint()
    turns = [u for split in ("train", "dev", "test") for u in dataset.utterances(split)]
    assert [t.utterance_id for t in trace] == [u.utterance_id for u in turns]
    planted = {t.utterance_id: t for t in trace}
    speaker = {u.utterance_id: u.speaker for u in turns}
    weak = {w for words in synthetic.WEAK.values() for w in words}
    for before, (turn, utt) in zip([None] + trace, zip(trace, turns)):
        assert turn.reply == synthetic.is_reply(utt.text)
        assert (utt.label == turn.label) or turn.label_noised                 # only train labels are redrawn
        text = utt.text.lower()
        if turn.text_cue == "strong":
            assert any(w in text for w in synthetic.STRONG[synthetic.LABELS[turn.label]])
        elif turn.text_cue == "weak":
            assert any(w in text for w in weak) and not any(w in text for ws in synthetic.STRONG.values() for w in ws)
        elif turn.text_cue == "continuation":
            assert turn.origin == "persisted" and any(text.startswith(c.lower()) for c in synthetic.CONTINUATIONS)
        assert not (turn.audio_true and (turn.corrupt or turn.reply))        # bad lines and replies tell nothing
        assert not (turn.video_true and turn.reply)
        assert not turn.role_drawn or (turn.origin == "fresh" and turn.label == turn.role_emotion)
        if turn.origin == "persisted":                                        # the same speaker's earlier emotion
            source = planted[turn.source]
            assert speaker[turn.source] == utt.speaker and source.label == turn.label
        elif turn.origin == "caught":                                         # the turn just before
            assert turn.source == before.utterance_id and before.label == turn.label
        else:
            assert turn.source == ""
        if before is not None and before.dialogue_id == turn.dialogue_id:
            assert before.corrupt == turn.corrupt                             # a bad line lasts the dialogue
    clean = [t for t in trace if not t.corrupt and not t.reply]
    assert 0.55 < np.mean([t.audio_true for t in clean]) < 0.65               # audio_signal 0.6
    assert 0.45 < np.mean([t.video_true for t in trace if not t.reply]) < 0.55  # video_signal 0.5
    assert {t.origin for t in trace} == {"persisted", "caught", "fresh"}
    assert {t.text_cue for t in trace} == {"strong", "weak", "continuation", "none"}
    assert 0.3 < np.mean([t.corrupt for t in trace]) < 0.5
    noised = [t.label_noised for t in trace if t.split == "train"]
    assert 0.2 < np.mean(noised) < 0.4 and not any(t.label_noised for t in trace if t.split != "train")
