"""Sweep overhead: the same ablation trials through `run_sweep.py ablate` and through a plain process pool.

    .venv/bin/python benchmarks/sweep_overhead.py [--spec ablations/demo.yaml] [--variants 6] [--output /tmp/overhead]

Both ways train the same trials (the spec's first --variants variants x its seeds; 0 = all) with a warm
stage-1 cache and the same parallelism (the spec's max_concurrent, one thread per trial):
  plain = `pipeline.trial.run_trial` for every trial in a `ProcessPoolExecutor` (no Ray, no MLflow, no
          checkpoints; each worker imports torch once, like a reused Ray actor);
  sweep = `sweep.engine.run_sweep("ablate", ...)` into a fresh output directory (its own Ray, MLflow,
          Tune, checkpoints, the report), timed from the call to its return.
The cache is warmed first by a sweep run that is not timed. Then the two alternate --repeats times,
and the script prints both wall times, the ratio, and where the sweep's extra time goes (from
MLflow's run times, one clock):
  before first trial = call -> first trial run starts (validation, Ray start, stage-1 check, Tune and
                       its first actors);
  trial phase        = first trial start -> last trial end, against the plain pool's whole wall;
  per-trial          = mean of (trial run end - start) against the plain trials' own mean;
  after last trial   = last trial end -> return (recording from Ray's storage, dedup, the report).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.environment import apply_defaults  # noqa: E402

apply_defaults()   # offline, loopback-only Ray, no telemetry (before Ray or MLflow is imported)


def subset_spec(spec: Path, variants: int, output: Path) -> Path:
    """The spec with only its first `variants` variants (0 = all), written beside the outputs."""
    import yaml

    data = yaml.safe_load(spec.read_text())
    if variants:
        data["variants"] = dict(list(data["variants"].items())[:variants])
    path = output / f"{spec.stem}-overhead.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _plain_trial(settings: dict) -> tuple[float, float]:
    from pipeline.trial import run_trial
    from sweep.trainable import trial_config

    start = time.time()
    run_trial(trial_config({"trial": settings}), settings["cache_dir"], log=lambda message: None)
    return start, time.time()


def run_plain(trial_settings: list[dict], workers: int) -> dict:
    start = time.time()
    with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread) as pool:
        spans = list(pool.map(_plain_trial, trial_settings))
    wall = time.time() - start
    return {"wall_s": wall, "per_trial_s": statistics.mean(e - s for s, e in spans), "trials": len(spans)}


def run_swept(spec: Path, output: Path, cache_dir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from sweep.engine import SweepOptions, run_sweep
    from sweep.tracking import child_runs

    start = time.time()
    outcome = run_sweep("ablate", spec, [], SweepOptions(output=output, cache_dir=cache_dir))
    wall = time.time() - start
    if outcome.status != "finished":
        sys.exit(f"the sweep did not finish: {outcome.status}")
    client = MlflowClient(outcome.tracking_uri)
    runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    starts = [r.info.start_time / 1000 for r in runs]
    ends = [r.info.end_time / 1000 for r in runs]
    return {"wall_s": wall, "before_first_trial_s": min(starts) - start, "trial_phase_s": max(ends) - min(starts),
            "per_trial_s": statistics.mean(e - s for s, e in zip(starts, ends)),
            "after_last_trial_s": start + wall - max(ends), "trials": len(runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "ablations" / "demo.yaml")
    parser.add_argument("--variants", type=int, default=6, help="the spec's first N variants (0 = all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("/tmp/sweep-overhead"))
    args = parser.parse_args(argv)

    from sweep.engine import SweepOptions, prepare

    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cache_dir = (args.output / f"cache-{stamp}").resolve()
    spec = subset_spec(args.spec, args.variants, args.output)
    print(f"warming the stage-1 cache ({cache_dir}) with an untimed sweep ...", flush=True)
    warm = run_swept(spec, args.output / f"warm-{stamp}", cache_dir)
    print(f"the cold sweep (stage 1 included, what `make demo` does for the whole demo): {warm['wall_s']:.1f} s",
          flush=True)
    plan = prepare("ablate", spec, [], SweepOptions(output=args.output / f"plan-{stamp}", cache_dir=cache_dir))
    workers = plan.max_concurrent or os.cpu_count() or 1
    rows = []
    for repeat in range(args.repeats):
        plain = run_plain(plan.trial_settings, workers)
        swept = run_swept(spec, args.output / f"sweep-{stamp}-{repeat}", cache_dir)
        rows.append((plain, swept))
        print(f"repeat {repeat + 1}: plain {plain['wall_s']:.1f} s, sweep {swept['wall_s']:.1f} s, "
              f"ratio {swept['wall_s'] / plain['wall_s']:.2f}", flush=True)
    print(f"\n{len(plan.trial_settings)} trials of {spec.name}, {workers} at once, one thread each; "
          f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| repeat | plain wall s | sweep wall s | sweep / plain | before first trial s | trial phase s "
          "| after last trial s | per-trial s plain | per-trial s sweep |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, (plain, swept) in enumerate(rows, 1):
        print(f"| {i} | {plain['wall_s']:.1f} | {swept['wall_s']:.1f} | **{swept['wall_s'] / plain['wall_s']:.2f}** | "
              f"{swept['before_first_trial_s']:.1f} | {swept['trial_phase_s']:.1f} | {swept['after_last_trial_s']:.1f} | "
              f"{plain['per_trial_s']:.2f} | {swept['per_trial_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
