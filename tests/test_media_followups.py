"""Issue 26's follow-ups: stage 1's video evaluation batches are capped by size, a dry run writes nothing,
stage 1's DataLoader workers stay within the task's CPUs, and a relative media store is made absolute."""
from __future__ import annotations

from pathlib import Path

from model import stage1 as stage1_module
from model.stage1 import DirectReader, run_stage1
from tests.test_stage1 import make_dataset, tiny_cfg


class RecordingReader(DirectReader):
    """Reads in-process like DirectReader and remembers how many clips each batch asked for."""
    batch_sizes: list[int] = []

    def batches(self, chunks):
        RecordingReader.batch_sizes.extend(len(chunk) for chunk in chunks)
        return super().batches(chunks)


def test_video_evaluation_batches_hold_at_most_the_frame_pixel_cap():
    # 8 frames of 112 x 112: the cap (32 frames of 224 x 224) admits 16 such clips per batch, although the
    # evaluation batch size (8 x stage1.batch_size = 128) would take every row of a split at once.
    dataset = make_dataset(train=8, dev=2, test=2, frames=8, size=112, audio=False)
    cfg = tiny_cfg(**{"stage1.epochs": 0, "stage1.kd": False, "stage1.tiny_hidden": 8, "stage1.width": 8})
    RecordingReader.batch_sizes = []
    features = run_stage1(cfg, dataset, log=lambda m: None, media_reader=RecordingReader)
    per_clip = 8 * 112 * 112
    limit = stage1_module.MAX_EVAL_VIDEO_FRAME_PIXELS // per_clip
    assert limit == 16
    sizes = RecordingReader.batch_sizes
    assert sum(sizes) == sum(len(s.labels) for s in features.splits.values())   # every clip read once
    assert max(sizes) == limit and all(size * per_clip <= stage1_module.MAX_EVAL_VIDEO_FRAME_PIXELS for size in sizes)
    assert features.splits["train"].present["video"].all()

