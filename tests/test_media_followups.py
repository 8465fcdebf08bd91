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
    # 32 frames of 56 x 56 (cheap for the tiny encoder: 49 patches a frame): the cap (32 frames of 224 x 224)
    # admits 16 such clips per batch, although the evaluation batch size (8 x stage1.batch_size = 128) would
    # take every row of a split at once.
    dataset = make_dataset(train=4, dev=1, test=1, frames=32, size=56, audio=False)   # 18 training clips
    cfg = tiny_cfg(**{"stage1.epochs": 0, "stage1.kd": False, "stage1.tiny_hidden": 8, "stage1.width": 8})
    RecordingReader.batch_sizes = []
    features = run_stage1(cfg, dataset, log=lambda m: None, media_reader=RecordingReader)
    per_clip = 32 * 56 * 56
    limit = stage1_module.MAX_EVAL_VIDEO_FRAME_PIXELS // per_clip
    assert limit == 16
    sizes = RecordingReader.batch_sizes
    assert sum(sizes) == sum(len(s.labels) for s in features.splits.values())   # every clip read once
    assert max(sizes) == limit and all(size * per_clip <= stage1_module.MAX_EVAL_VIDEO_FRAME_PIXELS for size in sizes)
    assert features.splits["train"].present["video"].all()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")} if root.exists() else {}


def test_dry_run_over_meld_clips_decodes_and_writes_nothing_and_reports_coverage(tmp_path, capsys):
    import yaml

    import run_sweep
    from core.config import load_config
    from dialogue_data.registry import load_dataset
    from tests.test_media import meld_layout

    data, media = meld_layout(tmp_path, utterances=2, seconds=1.0, noise=3, size=(64, 48))
    spec = tmp_path / "meld_dry.yaml"
    base = {"stage1.tiny_hidden": 8, "stage1.width": 8, "stage1.allow_random_encoders": True, "data.frames": 2,
            "data.frame_size": 16, "data.sample_rate": 8000}
    spec.write_text(f"# python run_sweep.py ablate {spec} --dry-run\n" + yaml.safe_dump(
        {"name": "melddry", "dataset": {"name": "meld", "path": str(data), "media_dir": str(media)},
         "base": base, "variants": {"full": {}}, "seeds": [0], "resources": {"cpu": 1}}, sort_keys=False))
    output, store = tmp_path / "runs", tmp_path / "store"
    media_before = _snapshot(media)

    # Nothing decoded yet: every clip is to decode; neither the output (with its cache) nor the store appears.
    assert run_sweep.main(["ablate", str(spec), f"data.media_store={store}", "--output", str(output),
                           "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not output.exists() and not store.exists() and _snapshot(media) == media_before
    assert f"media store (scanned read-only) {store}: 0 of 12 clip(s) held; 12 to decode from 6 file(s)" in printed
    train = next(line for line in printed.splitlines() if line.strip().startswith("train "))
    assert "audio 2/2, video 2/2" in train, printed
    assert "(provisional: clips still to decode" in printed

    # After a real load the dry run finds every clip in the store, changes nothing there, and gives the
    # fingerprint the launch will use.
    cfg = load_config(None, {"data.name": "meld", "data.path": str(data), "data.media_dir": str(media),
                             "data.media_store": str(store), "data.media_workers": 1, **base})
    fingerprint = load_dataset(cfg.data).fingerprint()
    store_before = _snapshot(store)
    assert run_sweep.main(["ablate", str(spec), f"data.media_store={store}", "--output", str(output),
                           "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not output.exists() and _snapshot(store) == store_before
    assert f"{store}: 12 of 12 clip(s) held; 0 to decode from 0 file(s)" in printed
    assert f"fingerprint {fingerprint}\n" in printed        # the launch's own, not marked provisional


def test_a_relative_media_store_is_made_absolute_when_the_spec_is_loaded(tmp_path, monkeypatch):
    from sweep.ablation_spec import load_ablation

    spec = tmp_path / "rel.yaml"
    spec.write_text("# python run_sweep.py ablate rel.yaml\nname: rel\ndataset: synthetic\n"
                    "base: {data.media_store: stores/media}\n"
                    "variants: {full: {}, other_store: {data.media_store: ../elsewhere}}\nseeds: [0]\n")
    monkeypatch.chdir(tmp_path)
    stores = {p.variant: p.cfg.data.media_store for p in load_ablation(spec).trials()}
    assert stores == {"full": str(tmp_path / "stores" / "media"), "other_store": str(tmp_path.parent / "elsewhere")}
    from_cli = load_ablation(spec, ["data.media_store=cli_store"]).trials()[0].cfg.data.media_store
    assert from_cli == str(tmp_path / "cli_store")
    assert not (tmp_path / "stores").exists()            # made absolute, not created (the first load creates it)


def _media_workers_in_task(wanted: int):
    from pipeline.media_loader import store_reader
    from sweep.trainable import place_on_ray_worker
    from core.config import default_config

    cfg, _, _ = place_on_ray_worker(default_config().replace({"data.media_workers": wanted}))
    return cfg.data.media_workers, store_reader(cfg).keywords["workers"]


def test_stage1_dataloader_workers_stay_within_the_cpus_ray_gave_the_task(ray_local):
    import sys

    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this test module
    try:
        in_task = ray.remote(num_cpus=1)(_media_workers_in_task)
        assert ray.get(in_task.remote(8), timeout=300) == (1, 1)          # 8 asked, 1 CPU given
        assert ray.get(in_task.remote(0), timeout=300) == (1, 1)          # 0 = one per CPU: the task's one
        if ray.cluster_resources().get("CPU", 0) >= 2:
            two = ray.remote(num_cpus=2)(_media_workers_in_task)
            assert ray.get(two.remote(8), timeout=300) == (2, 2)
            assert ray.get(two.remote(1), timeout=300) == (1, 1)          # fewer asked than given: as asked
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_scan_finds_a_clip_without_audio_track_from_its_header_and_writes_nothing(tmp_path):
    import pytest

    from core.schema import DataError
    from dialogue_data.clipgen import write_clip
    from dialogue_data.meld import read_meld
    from tests.test_media import meld_layout

    data, media = meld_layout(tmp_path, utterances=1, seconds=1.0)
    write_clip(media / "dev_splits_complete" / "dia0_utt0.mp4", seconds=1.0, audio=False)
    store = tmp_path / "store"
    with pytest.raises(DataError) as err:
        read_meld(data, media_dir=media, frames=2, frame_size=16, media_store=store, scan_only=True)
    assert "dev_sent_emo.csv: line 2" in str(err.value) and "dev_splits_complete/dia0_utt0.mp4" in str(err.value)
    assert "no audio track" in str(err.value) and not store.exists()


def test_audio_read_after_frames_on_one_clip_is_the_whole_track(tmp_path):
    """One open clip serves several requests (an IEMOCAP session: every utterance's audio and frames). Audio read
    after the frames, from the start of the file, came back as the last 40 ms of the track (2,048 of 57,600
    samples at 16 kHz for a 3.6 s clip): the demuxer was left where frames() stopped. Audio must not depend on
    what was read before it."""
    import numpy as np

    from dialogue_data.clipgen import write_clip
    from dialogue_data.decode import open_clip

    path = write_clip(tmp_path / "clip.mp4", seconds=2.0)
    with open_clip(path) as clip:
        alone = clip.audio(16000)
    with open_clip(path) as clip:
        clip.frames(4, 32)
        after_frames = clip.audio(16000)
        clip.frames(4, 32, start=1.0, end=2.0)
        ranged_after = clip.audio(16000, start=0.0, end=1.0)
    assert len(alone) == 32000 and np.array_equal(after_frames, alone)
    # After a seek back to 0 the AAC decoder restarts without the packets before it: its first ~15 ms differ a
    # little (as for any range not at the start); the rest of the range is the same samples.
    assert len(ranged_after) == 16000 and np.allclose(ranged_after[320:], alone[320:16000], rtol=0, atol=1e-6)


def test_every_process_we_start_gets_a_fixed_mmap_threshold():
    """glibc's dynamic mmap threshold let clip-sized buffers fragment the heap (a stage-1 task's peak RSS grew by
    0.3 MB per clip: benchmarks/RESULTS.md, issue 26). Ray's workers get the fixed threshold in their environment,
    and stage 1 sets it in a process that started without it."""
    import os
    import subprocess
    import sys

    from core.environment import DEFAULTS, fix_mmap_threshold, worker_env

    assert worker_env()["MALLOC_MMAP_THRESHOLD_"] == DEFAULTS["MALLOC_MMAP_THRESHOLD_"] == "131072"
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert fix_mmap_threshold()
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", "from core.environment import apply_defaults; import os; "
                          "apply_defaults(); print(os.environ['MALLOC_MMAP_THRESHOLD_'])"],
                         capture_output=True, text=True, env=env, cwd=str(Path(__file__).resolve().parent.parent))
    assert out.stdout.strip() == "131072", out.stderr



def test_ray_workers_run_at_the_sweeps_own_priority(ray_local):
    """Ray's default worker niceness (15) starved trials behind any other user's CPU-bound job; the project's
    environment (core/environment.py, forced by tests/conftest.py) adds nothing to the priority the sweep was
    started with (`nice -n 10 make test`: its workers at 10, not 25 or 19)."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert os.environ["RAY_worker_niceness"] == "0"
    assert ray.get(niceness.remote(), timeout=600) == os.nice(0)
