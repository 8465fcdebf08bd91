"""Stage 1 end to end on a small hand-built dataset: shapes, speakers, masking, learning, KD, seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.schema import DataError, Dialogue, DialogueDataset, Utterance
from core.config import default_config
from model.encoders import build_audio_encoder, build_text_encoder
from model.metrics import weighted_f1
from model.runtime import resolve_device, seed_everything
from model.stage1 import predict, run_stage1, split_tables, student_loss, teacher_targets

LABELS = ["neutral", "joy", "anger"]
CUE_WORDS = {0: ["okay", "fine", "sure"], 1: ["great", "happy", "wonderful"], 2: ["furious", "hate", "awful"]}
FILLER = ["the", "we", "went", "to", "a", "house", "it", "was", "then", "you", "said", "that", "today"]
PITCH = {0: 220.0, 1: 440.0, 2: 880.0}


def make_utterance(rng: np.random.Generator, label: int, speaker: str, uid: str, sample_rate: int,
                   seconds: float, frames: int, size: int, audio: bool = True, video: bool = True) -> Utterance:
    words = list(rng.choice(FILLER, size=4)) + [str(rng.choice(CUE_WORDS[label]))]
    rng.shuffle(words)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    wave = (np.sin(2 * np.pi * PITCH[label] * t) + 0.3 * rng.standard_normal(t.shape)).astype(np.float32)
    clip = (0.1 * rng.random((frames, 3, size, size))).astype(np.float32)
    clip[:, label % 3, : size // 2] += 0.8          # a label-dependent bright band in one colour channel
    return Utterance(speaker=speaker, text=" ".join(words), label=label, utterance_id=uid,
                     waveform=wave if audio else None, frames=clip if video else None)


def make_dataset(train: int = 12, dev: int = 4, test: int = 4, per_dialogue: int = 5, seconds: float = 0.25,
                 frames: int = 4, size: int = 16, seed: int = 0, audio: bool = True, video: bool = True,
                 sample_rate: int = 16000) -> DialogueDataset:
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", train), ("dev", dev), ("test", test)):
        dialogues = []
        for d in range(count):
            people = [f"{split}-p{d}-{k}" for k in range(3)]
            utts = [make_utterance(rng, int(rng.integers(3)), str(rng.choice(people)), f"{split}-{d}-{i}",
                                   sample_rate, seconds, frames, size, audio, video)
                    for i in range(per_dialogue - (d % 2))]   # dialogues of different lengths
            dialogues.append(Dialogue(f"{split}-{d}", utts))
        splits[split] = dialogues
    return DialogueDataset("handmade", list(LABELS), splits, sample_rate=sample_rate, source="tests/test_stage1.py")


def tiny_cfg(**overrides):
    base = {"stage1.width": 32, "stage1.tiny_hidden": 32, "stage1.tiny_layers": 1, "stage1.epochs": 2,
            "stage1.batch_size": 16, "stage1.lr": 3e-3, "stage1.max_tokens": 64, "train.device": "cpu",
            "fusion.max_speakers": 4}
    base.update(overrides)
    return default_config().replace(base)


def test_weighted_f1_matches_definition():
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    gold = torch.tensor([0, 1, 1, 1, 2, 0])
    # per class F1: c0 = 2*1/(2+2) = .5, c1 = 2*2/(2+3) = .8, c2 = 2*1/(2+1) = .667; supports 2, 3, 1
    expected = (0.5 * 2 + 0.8 * 3 + (2 / 3) * 1) / 6
    assert weighted_f1(gold, pred) == pytest.approx(expected)


def test_one_seed_gives_the_same_draws_everywhere():
    # Stage 1 and stage 2 seed through model.runtime: Python, numpy, torch and the returned generator.
    import random

    draws = []
    for _ in range(2):
        generator = seed_everything(7)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1)),
                      float(torch.rand(1, generator=generator))))
    assert draws[0] == draws[1]
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_predict_returns_rows_in_order_whatever_the_batching():
    model = torch.nn.Linear(3, 2)
    data = torch.randn(10, 3)

    def pair(x):
        return model(x), model(x)[:, :1]

    wrapped = type("Pair", (torch.nn.Module,), {"forward": lambda self, x: pair(x)})()
    batcher = lambda rows: (data[list(rows)],)
    rows = [7, 2, 9, 0, 4]
    plain, _ = predict(wrapped, batcher, rows, 2, torch.device("cpu"))
    sorted_, _ = predict(wrapped, batcher, rows, 2, torch.device("cpu"), order_key=lambda i: -i)
    torch.testing.assert_close(plain, model(data[rows]).detach())
    torch.testing.assert_close(sorted_, plain)
    assert not plain.is_inference()



def test_predict_keeps_no_view_of_an_encoders_whole_output():
    """Issue 26: with hidden size == width the video head's projection is the identity, so the encoder's vector is
    a view of its whole last hidden state (B, 1 + T*patches, H). predict kept every batch's view until the end: a
    stage-1 task's memory grew by that state per clip (0.19 MB at 224 px). Each batch's rows must be copied out."""
    import dataclasses
    import weakref

    from model.encoders import build_video_encoder

    s1 = dataclasses.replace(default_config().stage1, video_encoder="tiny", tiny_hidden=8, tiny_layers=1, width=8)
    encoder = build_video_encoder(s1, 3, frames=2, size=32, channels=3)
    clips = torch.rand(12, 2, 3, 32, 32)
    returned = []   # (weak reference to the vector the encoder returned, bytes of its storage)

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            vector, logits = self.encoder(x)
            returned.append((weakref.ref(vector), vector.untyped_storage().nbytes()))
            return vector, logits

    alive = []   # how many returned vectors are still alive when the next batch is read

    class Batcher:
        def __call__(self, rows):
            return (clips[list(rows)],)

        def batches(self, chunks):
            for chunk in chunks:
                alive.append(sum(ref() is not None for ref, _ in returned))
                yield chunk, self(chunk)

    rows = list(range(len(clips)))
    vectors, _ = predict(Recording(), Batcher(), rows, 2, torch.device("cpu"))
    # the case at hand: the vector (2 rows x 8) shares the storage of the whole hidden state (2 x (1 + 2 x 16) x 8)
    assert returned[0][1] == 2 * 33 * 8 * 4
    assert len(alive) == 6 and max(alive) <= 1, alive   # the previous batch's loop variable at most
    torch.testing.assert_close(vectors, Recording()(clips)[0].detach())

def test_stage1_shapes_speakers_and_learning():
    data = make_dataset(train=24, dev=8, test=6)
    cfg = tiny_cfg(**{"stage1.epochs": 12})
    lines = []
    feats = run_stage1(cfg, data, log=lines.append)
    assert set(feats.splits) == {"train", "dev", "test"}
    assert feats.labels == LABELS
    for split, dialogues in data.splits.items():
        sf = feats.splits[split]
        n = sum(len(d.utterances) for d in dialogues)
        assert sf.dialogue_lengths == [len(d.utterances) for d in dialogues]
        assert len(sf) == n
        for m in ("text", "audio", "video"):
            assert sf.vectors[m].shape == (n, 32) and sf.vectors[m].dtype == torch.float32
            assert bool(sf.present[m].all())
            assert torch.isfinite(sf.vectors[m]).all()
            assert not sf.vectors[m].is_inference()   # stage 2 must be able to train on them
        speakers = [s for d in dialogues for s in d.speaker_indices(cfg.fusion.max_speakers)]
        assert sf.speakers.tolist() == speakers
        assert sf.labels.tolist() == [u.label for d in dialogues for u in d.utterances]
    assert feats.info["text_encoder"] == "tiny" and feats.info["prompt"] == "true" and feats.info["kd"] == "true"
    assert feats.info["audio_kd"] == "true" and feats.info["video_kd"] == "true"
    # The text cue words make text easy: the kept epoch is far above chance (1/3) on dev.
    assert float(feats.info["text_dev_acc"]) > 0.55 and float(feats.info["text_dev_wf1"]) > 0.5, lines
    assert int(feats.info["text_best_epoch"]) >= 1
    assert any("stage1 text: epoch 1/12" in line and "dev wF1" in line for line in lines)
    assert any("audio student (KD from text)" in line for line in lines)


def test_stage1_seed_determinism_and_seed_sensitivity():
    data = make_dataset(train=6, dev=2, test=2, per_dialogue=4)
    cfg = tiny_cfg(**{"stage1.epochs": 1})
    a = run_stage1(cfg, data, log=lambda _: None)
    b = run_stage1(cfg, data, log=lambda _: None)
    c = run_stage1(cfg.replace({"seed": 1}), data, log=lambda _: None)
    for split in a.splits:
        for m in ("text", "audio", "video"):
            assert torch.equal(a.splits[split].vectors[m], b.splits[split].vectors[m]), (split, m)
    assert not torch.equal(a.splits["test"].vectors["text"], c.splits["test"].vectors["text"])


def test_missing_modalities_are_masked_not_trained_and_survive_the_cache(tmp_path):
    from dialogue_data.cache import Stage1Cache

    data = make_dataset(train=6, dev=2, test=2, per_dialogue=4, video=False)
    data.splits["train"][0].utterances[0].waveform = None   # one clip missing: masked, the rest train
    lines = []
    feats = Stage1Cache(tmp_path).get_or_compute(
        "k", lambda: run_stage1(tiny_cfg(**{"stage1.epochs": 1}), data, log=lines.append), LABELS)
    again = Stage1Cache(tmp_path).get_or_compute("k", lambda: pytest.fail("recomputed"), LABELS)
    assert torch.equal(again.splits["dev"].vectors["audio"], feats.splits["dev"].vectors["audio"])
    assert again.info["video_trained"] == "false" and again.splits["train"].speakers.tolist() == \
        feats.splits["train"].speakers.tolist()
    train = feats.splits["train"]
    assert not bool(train.present["video"].any()) and float(train.vectors["video"].abs().sum()) == 0.0
    assert feats.info["video_trained"] == "false"
    assert train.present["audio"].tolist()[0] is False and bool(train.present["audio"][1:].all())
    assert float(train.vectors["audio"][0].abs().sum()) == 0.0
    assert float(train.vectors["audio"][1].abs().sum()) > 0.0
    assert feats.available() == ["text", "audio"]
    assert sum("video" in line and "absent from every training utterance" in line for line in lines) == 1


def test_stage1_zero_epochs_frozen_text_and_no_kd():
    data = make_dataset(train=4, dev=2, test=2, per_dialogue=3)
    feats = run_stage1(tiny_cfg(**{"stage1.epochs": 0, "stage1.kd": False, "stage1.prompt": False}),
                       data, log=lambda _: None)
    assert feats.splits["dev"].vectors["audio"].shape[1] == 32 and feats.info["audio_kd"] == "false"
    frozen = run_stage1(tiny_cfg(**{"stage1.finetune_text": False, "stage1.epochs": 2}), data, log=lambda _: None)
    assert frozen.info["finetune_text"] == "false"
    assert frozen.splits["test"].vectors["text"].shape == (len(frozen.splits["test"]), 32)


def test_features_encoder_for_pre_extracted_vectors():
    data = make_dataset(train=4, dev=2, test=2, per_dialogue=3, audio=False, video=False)
    rng = np.random.default_rng(1)
    for split in data.splits.values():
        for d in split:
            for u in d.utterances:
                u.audio_features = rng.standard_normal(10).astype(np.float32) + u.label
    cfg = tiny_cfg(**{"stage1.audio_encoder": "features", "stage1.epochs": 1})
    feats = run_stage1(cfg, data, log=lambda _: None)
    assert bool(feats.splits["train"].present["audio"].all())
    assert feats.splits["train"].vectors["audio"].shape[1] == 32
    assert not bool(feats.splits["train"].present["video"].any())
    data.splits["test"][0].utterances[1].audio_features = np.zeros(7, dtype=np.float32)
    with pytest.raises(DataError, match="test-0-1.*length 7"):
        run_stage1(cfg, data, log=lambda _: None)


def test_frozen_teacher_gets_no_gradient_and_every_student_parameter_does():
    data = make_dataset(train=2, dev=1, test=1, per_dialogue=4)
    cfg = tiny_cfg()
    tables = split_tables(data, cfg.fusion.max_speakers)
    teacher = build_text_encoder(cfg.stage1, [u.text for u in tables["train"].utterances], 3, 4)
    ids = teacher.inputs(tables["train"].dialogues)
    rows = list(range(len(ids)))
    targets = teacher_targets(teacher, lambda r: teacher.collate([ids[i] for i in r]), rows, 8, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    student = build_audio_encoder(cfg.stage1, 3)
    student.train()
    from model.encoders import normalise_waveform, stack_waveforms
    waves = stack_waveforms([normalise_waveform(tables["train"].utterances[i].waveform) for i in rows])
    vec, logits = student(*waves)
    t_vec, t_logits = targets.take(rows)
    loss = student_loss(vec, logits, tables["train"].labels[rows], t_vec, t_logits, cfg.stage1)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for name, p in student.named_parameters():
        assert p.requires_grad and p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # The KD terms really act: the same student loss without a teacher differs.
    plain = student_loss(vec, logits, tables["train"].labels[rows], None, None, cfg.stage1)
    assert not torch.allclose(plain, loss)
