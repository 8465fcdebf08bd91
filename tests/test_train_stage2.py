"""The stage-2 loop on generated stage-1 vectors: learning, report keys, seeds, resume, divergence."""
import io
import json
import math

import pytest
import torch

from core.config import ConfigError, load_config
from core.features import SplitFeatures, Stage1Features
from model.train import DivergedError, PaddedSplit, linear_warmup_decay, train_stage2

LABELS = ["neutral", "joy", "sadness", "anger"]
DIM = 12


def make_features(n_train=32, seed=0, signal=(1.5, 0.8, 0.4)) -> Stage1Features:
    """Label-dependent Gaussian vectors: a class centre times a per-modality signal strength plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(LABELS), DIM, generator=g)
    splits = {}
    for split, n in (("train", n_train), ("dev", n_train // 2), ("test", n_train // 2)):
        lengths = torch.randint(1, 9, (n,), generator=g).tolist()
        rows = sum(lengths)
        y = torch.randint(0, len(LABELS), (rows,), generator=g)
        vectors = {m: s * centres[y] + torch.randn(rows, DIM, generator=g)
                   for m, s in zip(("text", "audio", "video"), signal)}
        present = {m: torch.ones(rows, dtype=torch.bool) for m in vectors}
        splits[split] = SplitFeatures(vectors, present, y, torch.randint(0, 3, (rows,), generator=g), lengths)
    return Stage1Features(list(LABELS), splits, {"source": "test generator"})


def tiny_cfg(*overrides):
    return load_config(None, ["fusion.width=16", "fusion.heads=2", "fusion.dropout=0.1", "train.epochs=3",
                              "train.batch_size=4", "train.lr=3e-3", "train.device=cpu", *overrides])


def contract_keys(labels):
    keys = ["epoch", "train_loss", "dev_loss", "dev_wf1", "dev_acc", "dev_mf1",
            "test_loss", "test_wf1", "test_acc", "test_mf1", "selected_epoch",
            "selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1",
            "selected_test_wf1", "selected_test_acc", "selected_test_mf1"]
    keys += [f"selected_dev_f1_{l}" for l in labels] + [f"selected_test_f1_{l}" for l in labels]
    return set(keys + ["selected_test_confusion"])


def test_tiny_run_beats_chance_and_reports_the_contract_keys():
    features = make_features(n_train=48)
    reports = []
    result = train_stage2(tiny_cfg("train.epochs=6"), features, on_epoch=lambda m, s: reports.append(m))
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4, 5, 6]
    for r in reports:
        assert set(r) == contract_keys(LABELS)
        assert all(isinstance(v, float) for k, v in r.items() if k != "selected_test_confusion")
        assert all(0.0 <= r[k] <= 1.0 for k in r if k.endswith(("wf1", "acc", "mf1")) or "_f1_" in k)
    last = result.metrics
    assert last == reports[-1] and result.history == reports
    assert max(r["dev_acc"] for r in reports) > 0.6  # chance is 0.25
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    confusion = json.loads(last["selected_test_confusion"])
    assert len(confusion) == len(LABELS) and all(len(row) == len(LABELS) for row in confusion)
    n_test = len(features.splits["test"])
    assert sum(map(sum, confusion)) == n_test


def test_selection_follows_select_on():
    features = make_features()
    for rule in ("dev", "test"):
        result = train_stage2(tiny_cfg("train.epochs=4", f"train.select_on={rule}"), features)
        best = max(result.history, key=lambda r: (r[f"{rule}_wf1"], -r["epoch"]))
        assert result.metrics["selected_epoch"] == best["epoch"]
        assert result.metrics["selected_test_wf1"] == best["test_wf1"]
        assert result.metrics["selected_dev_wf1"] == best["dev_wf1"]


def test_same_seed_same_metrics_other_seed_differs():
    features = make_features()
    a = train_stage2(tiny_cfg("seed=5"), features).history
    b = train_stage2(tiny_cfg("seed=5"), features).history
    c = train_stage2(tiny_cfg("seed=6"), features).history
    assert a == b
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in c]


def test_resume_from_state_gives_identical_results():
    features = make_features()
    cfg = tiny_cfg("train.epochs=4", "seed=3")
    straight = train_stage2(cfg, features)
    states = {}
    train_stage2(cfg, features, on_epoch=lambda m, s: states.update({int(m["epoch"]): s}))
    # a checkpoint goes through disk: the state must load with weights_only=True (no arbitrary pickle)
    buffer = io.BytesIO()
    torch.save(states[2], buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # noqa: TID251  (weights_only=True: the check itself)
    resumed_reports = []
    resumed = train_stage2(cfg, features, on_epoch=lambda m, s: resumed_reports.append(m), resume_state=state)
    assert [r["epoch"] for r in resumed_reports] == [3, 4]
    assert resumed.metrics == straight.metrics
    assert resumed.history == straight.history


def test_nan_loss_raises_diverged_error_naming_the_epoch():
    # Finiteness is checked once per epoch (a per-step check would make the GPU wait every step).
    features = make_features()
    features.splits["train"].vectors["text"][:] = float("inf")
    with pytest.raises(DivergedError, match=r"in epoch 1 "):
        train_stage2(tiny_cfg(), features)
    assert issubclass(DivergedError, RuntimeError)


def test_huge_learning_rate_diverges():
    with pytest.raises(DivergedError, match=r"in epoch \d+ "):
        train_stage2(tiny_cfg("train.lr=1e30", "train.warmup_ratio=0", "train.grad_clip=1e30", "train.epochs=3"),
                     make_features())


def test_absent_rows_are_zeroed_and_masked():
    features = make_features()
    train = features.splits["train"]
    train.present["audio"][::3] = False
    train.vectors["audio"][::3] = float("inf")  # what is stored at an absent row must never be read
    padded = PaddedSplit.build(train, ["text", "audio", "video"], 9, torch.device("cpu"))
    assert torch.isfinite(padded.inputs["audio"]).all()
    assert int(padded.present["audio"].sum()) == int(train.present["audio"].sum())
    assert int(padded.mask.sum()) == len(train)
    result = train_stage2(tiny_cfg("train.epochs=1"), features)
    assert math.isfinite(result.metrics["train_loss"])


def test_padded_split_layout():
    features = make_features()
    sf = features.splits["dev"]
    padded = PaddedSplit.build(sf, ["text"], 9, torch.device("cpu"))
    start = 0
    for d, length in enumerate(sf.dialogue_lengths):
        assert torch.equal(padded.inputs["text"][d, :length], sf.vectors["text"][start:start + length])
        assert torch.equal(padded.labels[d, :length], sf.labels[start:start + length])
        assert (padded.speakers[d, length:] == 9).all() and not padded.mask[d, length:].any()
        start += length
    b = padded.batch(torch.tensor([0, 1]))
    assert b["mask"].shape[1] == max(sf.dialogue_lengths[:2])


def test_speaker_index_beyond_max_speakers_is_refused():
    features = make_features()
    features.splits["dev"].speakers[0] = 12
    with pytest.raises(ConfigError, match="fusion.max_speakers"):
        train_stage2(tiny_cfg(), features)


def test_warmup_then_linear_decay():
    f = linear_warmup_decay(2, 10)
    assert [f(s) for s in (0, 1, 2, 6, 10, 11)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("overrides", [["fusion.mode=concat"], ["fusion.modalities=text,audio", "fusion.kd_terms=ce,logit,feature"],
                                       ["fusion.modalities=audio,video", "fusion.shared_anchor_layers=false"]])
def test_variants_train(overrides):
    result = train_stage2(tiny_cfg("train.epochs=1", *overrides), make_features(n_train=16))
    assert math.isfinite(result.metrics["dev_loss"])
