"""Stage-1 scheduling: a cold-cache sweep's wall time against the ideal schedule, and slot time spent waiting.

    .venv/bin/python benchmarks/stage1_schedule.py [--output /tmp/stage1-bench] [--cpus 2] [--repeats 2]
    .venv/bin/python benchmarks/stage1_schedule.py --analyse meld_text --output /tmp/meld-cold --wall 583

Without --analyse it writes a synthetic ablation with three distinct stage-1 entries (prompt on,
prompt off, KD off) and five variants x two seeds (10 trials, two of the variants share the
prompt-on entry with `full`), runs it from an empty cache with one CPU per trial on --cpus CPUs,
and then reads the schedule back from MLflow. It does so in both of the engine's modes, alternating,
in one invocation: `overlap` (the default: each trial starts once its own entry is ready, stage 1 goes
on beside the trials) and `barrier` (`SweepOptions.stage1_barrier`: every entry before any trial).
With --analyse it reads a sweep already run (e.g.
`run_sweep.py ablate ablations/meld_text.yaml ...` from a cold cache) and --wall is its wall time.

Figures (all from MLflow's run start and end times, one clock):
  ideal     = LPT makespan of the stage-1 tasks on the slots + LPT makespan of the trials on the slots
              (distinct stage-1 work spread over the slots, then the stage-2 trials);
  span      = first stage-1 start to last trial end (the scheduled work, without Ray/MLflow start-up);
  waiting   = slot time trials spent waiting for their stage-1 entry: sum of max(0, entry ready - trial
              start) over trials (a trial holding a slot while its entry is computed elsewhere);
  idle      = slot time left idle in the span (slots x span - stage-1 work - trial work);
  gap       = last entry ready to first trial start (Tune's start-up and its trial workers'; negative
              when trials started before the last entry was ready).
"""
from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.environment import apply_defaults  # noqa: E402

apply_defaults()   # offline, loopback-only Ray, no telemetry (before Ray or MLflow is imported)

DATASET = {"name": "synthetic", "synthetic_dialogues": 24, "audio_seconds": 0.25, "sample_rate": 4000,
           "frames": 2, "frame_size": 8}
BASE = {"stage1.tiny_hidden": 16, "stage1.tiny_layers": 1, "stage1.width": 16, "stage1.max_tokens": 48,
        "stage1.epochs": 6, "stage1.batch_size": 8, "fusion.width": 8, "fusion.heads": 2,
        "train.epochs": 3, "train.batch_size": 4, "train.device": "cpu"}
VARIANTS = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False},
            "w/o speaker embeddings": {"fusion.speaker_embeddings": False},
            "w/o prompt": {"stage1.prompt": False}, "w/o KD": {"stage1.kd": False}}


def lpt_makespan(durations: list[float], slots: int) -> float:
    """Longest-processing-time-first on `slots` identical slots (within 4/3 of the optimum)."""
    loads = [0.0] * max(1, slots)
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def analyse(tracking_uri: str, sweep: str, slots: int, wall: float) -> dict:
    from mlflow.tracking import MlflowClient

    from sweep.stage1_plan import stage1_runs
    from sweep.tracking import child_runs

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    stage1 = {i: r for i, r in stage1_runs(client, experiment.experiment_id).items()
              if r.data.tags.get("stage1_source") == "computed"}
    trials = child_runs(client, experiment.experiment_id)
    s1 = [((r.info.start_time or 0) / 1000, (r.info.end_time or 0) / 1000) for r in stage1.values()]
    tr = [((r.info.start_time or 0) / 1000, (r.info.end_time or 0) / 1000) for r in trials]
    ready = {i: (r.info.end_time or 0) / 1000 for i, r in stage1.items()}
    waiting = sum(max(0.0, ready[t.data.tags["stage1_run_id"]] - (t.info.start_time or 0) / 1000)
                  for t in trials if t.data.tags.get("stage1_run_id") in ready)
    ideal = lpt_makespan([e - s for s, e in s1], slots) + lpt_makespan([e - s for s, e in tr], slots)
    first = min(s for s, _ in s1 + tr)
    span = max(e for _, e in tr) - first
    phase = (max(e for _, e in s1) - min(s for s, _ in s1)) if s1 else 0.0
    gap = (min(s for s, _ in tr) - max(e for _, e in s1)) if s1 else 0.0
    return {"sweep": sweep, "slots": slots, "stage1_entries": len(s1), "trials": len(tr),
            "stage1_work_s": sum(e - s for s, e in s1), "trial_work_s": sum(e - s for s, e in tr),
            "ideal_s": ideal, "span_s": span, "span_over_ideal": span / ideal if ideal else float("nan"),
            "wall_s": wall, "wall_over_ideal": wall / ideal if ideal and wall else float("nan"),
            "stage1_phase_s": phase, "gap_to_first_trial_s": gap, "waiting_slot_s": waiting,
            "idle_slot_s": max(0.0, slots * span - sum(e - s for s, e in s1 + tr))}


def run_synthetic(output: Path, cpus: int, barrier: bool, stage1_epochs: int, train_epochs: int) -> tuple[str, float]:
    import yaml

    from sweep.engine import SweepOptions, run_sweep

    output.mkdir(parents=True, exist_ok=True)
    base = {**BASE, "stage1.epochs": stage1_epochs, "train.epochs": train_epochs}
    spec = {"name": "stage1-bench", "dataset": DATASET, "base": base, "variants": VARIANTS, "seeds": [0, 1],
            "stage1_seed": "shared", "resources": {"cpu": 1, "stage1": {"cpu": 1}}, "max_concurrent": cpus,
            "max_failures": 1}
    path = output / "stage1-bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    # a fresh store and an empty cache each time
    run_dir = output / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{'barrier' if barrier else 'overlap'}"
    start = time.time()
    outcome = run_sweep("ablate", path, [], SweepOptions(output=run_dir, num_cpus=cpus, stage1_barrier=barrier))
    wall = time.time() - start
    if outcome.status != "finished":
        sys.exit(f"the benchmark sweep did not finish: {outcome.status}")
    return f"sqlite:///{run_dir.resolve() / 'mlflow.db'}", wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("/tmp/stage1-bench"))
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray = slots (1 CPU per trial)")
    parser.add_argument("--analyse", metavar="SWEEP", help="read this finished sweep from --output's store instead")
    parser.add_argument("--wall", type=float, default=0.0, help="with --analyse: the sweep's wall time in seconds")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternating")
    parser.add_argument("--modes", default="barrier,overlap", help="which of barrier,overlap to run")
    parser.add_argument("--stage1-epochs", type=int, default=BASE["stage1.epochs"])
    parser.add_argument("--train-epochs", type=int, default=BASE["train.epochs"],
                        help="stage-2 epochs per trial (the default 3 is ~1 s a trial: fixed costs dominate)")
    args = parser.parse_args(argv)
    if args.analyse:
        uri = f"sqlite:///{args.output.resolve() / 'mlflow.db'}"
        results = {args.analyse: analyse(uri, args.analyse, args.cpus, args.wall)}
    else:
        results = {}
        for repeat in range(args.repeats):
            for mode in args.modes.split(","):
                uri, wall = run_synthetic(args.output, args.cpus, mode == "barrier", args.stage1_epochs,
                                          args.train_epochs)
                results[f"{mode} {repeat + 1}"] = analyse(uri, "stage1-bench", args.cpus, wall)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    names = list(results)
    print(f"{'':>22}  " + "  ".join(f"{n:>11}" for n in names))
    for key in results[names[0]]:
        cells = [results[n][key] for n in names]
        print(f"{key:>22}  " + "  ".join(f"{v:>11.2f}" if isinstance(v, float) else f"{v!s:>11}" for v in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
