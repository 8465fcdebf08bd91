"""GPU scheduling without a GPU: a local Ray told it has one (logical) GPU (`--num-gpus 1`) runs 0.25-GPU
trials four at once beside whole-GPU stage-1 tasks, without deadlock; every trial and stage-1 task sees
the GPU id Ray gave it. Trials use train.device=cpu (there is no CUDA here); how many ran at once is
measured from the start and end times the trials themselves record (MAGTKD_SPAN_LOG), not from sleeps."""
from __future__ import annotations

import json
import time

from conftest import child_runs, write_ablation
from sweep.engine import SweepOptions, run_sweep
from sweep.stage1_plan import stage1_runs
from sweep import tracking


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_most_at_once_counts_overlaps():
    assert most_at_once([(0, 2), (1, 3), (2.5, 4), (5, 6)]) == 2
    assert most_at_once([(0, 10), (1, 9), (2, 8), (3, 7), (4, 6)]) == 5


def test_quarter_gpu_trials_share_one_logical_gpu_four_at_once(tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():   # this test needs a Ray with one GPU: its own
        ray.shutdown()
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("MAGTKD_SPAN_LOG", str(spans_file))
    spec = write_ablation(tmp_path, "gpus", {"full": {}, "w/o prompt": {"stage1.prompt": False}}, seeds=[0, 1, 2, 3],
                          epochs=5,
                          resources={"cpu": 0.5, "gpu": 0.25, "stage1": {"cpu": 0.5, "gpu": 1}}, max_concurrent=0)
    started = time.perf_counter()
    outcome = run_sweep("ablate", spec, [], SweepOptions(output=tmp_path / "out", num_cpus=4, num_gpus=1,
                                                         cache_dir=tmp_path / "cache"))
    seconds = time.perf_counter() - started
    assert outcome.status == "finished", outcome.messages

    lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
    starts = {r["trial"]: r for r in lines if r["event"] == "start"}
    ends = {r["trial"]: r for r in lines if r["event"] == "end"}
    assert len(starts) == len(ends) == 8
    spans = [(starts[t]["time"], ends[t]["time"]) for t in starts]
    at_once = most_at_once(spans)
    print(f"\nlogical-GPU scheduling: {len(spans)} trials of 0.25 GPU on 1 GPU, at most {at_once} at once; "
          f"sweep {seconds:.0f} s")
    assert 2 <= at_once <= 4          # shared (more than one per GPU), and never beyond Ray's 4 x 0.25
    assert all([str(g) for g in r["gpu_ids"]] == ["0"] for r in lines)   # each trial saw the GPU Ray gave it

    client = tracking.make_client(outcome.tracking_uri)
    stage1 = list(stage1_runs(client, outcome.experiment_id).values())
    assert len(stage1) == 2 and all(r.data.tags["gpu_ids"] == "0" and r.data.tags["gpu_share"] == "1" for r in stage1)
    trials = child_runs(tmp_path / "out", "gpus")
    assert {r.data.tags["device_type"] for r in trials} == {"cpu"}   # train.device=cpu: the identity says so
    assert all(r.info.status == "FINISHED" for r in trials) and len(trials) == 8
