"""The framework finds the order planted in the synthetic data, through the real stage 1 and stage 2.

dialogue_data/synthetic.py plants text > audio > video > chance, and all three > text alone.
Stage 1 (tiny random BERT / Data2VecAudio / TimeSformer, KD students) is trained once and shared by
every stage-2 seed (stage1.shared_seed), then stage 2 is trained per modality subset and seed.
"""
import statistics

import pytest
import torch

from core.config import load_config
from pipeline.trial import run_trial

SEEDS = (0, 1, 2)
SUBSETS = {"all": "text,audio,video", "T": "text", "A": "audio", "V": "video"}
BASE = [
    "data.synthetic_dialogues=120", "data.text_signal=0.7",  # 30% of the text ambiguous: room for audio/video
    "data.audio_seconds=0.5", "data.frames=4", "data.frame_size=16",  # the same cues at half the media cost
    "stage1.tiny_hidden=32", "stage1.tiny_layers=1", "stage1.width=32", "stage1.max_tokens=64",
    "stage1.epochs=12", "stage1.batch_size=8", "stage1.lr=1e-3", "stage1.shared_seed=0",
    "fusion.width=64", "fusion.heads=4", "fusion.dropout=0.1",
    "train.epochs=12", "train.batch_size=8", "train.lr=2e-3", "train.device=cpu",
]


@pytest.fixture(scope="module")
def dev_wf1(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on a shared 2-core machine
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, BASE)
    scores = {}
    try:
        for name, modalities in SUBSETS.items():
            scores[name] = [run_trial(cfg.replace([f"fusion.modalities={modalities}", f"seed={seed}"]), cache,
                                      log=lambda _: None).metrics["selected_dev_wf1"] for seed in SEEDS]
    finally:
        torch.set_num_threads(threads)
    return scores


def test_planted_order_all_gt_text_gt_audio_gt_video(dev_wf1):
    mean = {name: statistics.mean(values) for name, values in dev_wf1.items()}
    assert mean["all"] > mean["T"] > mean["A"] > mean["V"] > 1 / 6, mean
    # the order holds seed by seed for the single modalities, not only on average
    for t, a, v in zip(dev_wf1["T"], dev_wf1["A"], dev_wf1["V"]):
        assert t > a > v, dev_wf1
