"""How long `run_sweep.py report` takes, end to end as a user runs it, on a large search store and the demo's.

    .venv/bin/python benchmarks/report_scale.py [--trials 1000] [--store /tmp/report_scale] [--demo DIR]
                                                [--before CHECKOUT] [--repeats 2] [--profile] [--no-search]

1. Writes (once; reused when it is already there) a tune sweep of --trials Optuna-style trials through the
   real MLflow client into a SQLite store under --store (tests/sample_store.py's `sample_tune`: the schema
   the sweeps write, 4 epochs of per-epoch metrics each, config/confusion/per-class artifacts).
2. Times `python run_sweep.py report NAME --output DIR` (all four formats, HTML with its plots) as a child
   process, --repeats times, on that store and, with --demo DIR, on a demo's output (`ablate
   ablations/demo.yaml --output DIR`). It prints each wall time and the progress lines the command printed.
   With --before CHECKOUT (an older clone, e.g. `git archive COMMIT | tar -x -C /tmp/before`), the same
   command from that checkout runs alternately with this one, same store, same moment: before and after.
3. With --profile, runs the report once more in this process under cProfile and prints the 25 most
   expensive functions (cumulative), which is where the fixes in reports/ came from.

The machine is shared: run the store and the demo in one go and compare ratios, not single numbers.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from core.environment import apply_defaults  # noqa: E402

apply_defaults()


def make_store(store: Path, trials: int) -> float:
    """The search store; seconds spent writing it (0 when it was already there)."""
    if (store / "mlflow.db").exists():
        return 0.0
    from sample_store import sample_tune

    started = time.perf_counter()
    # Every tenth trial stopped early by the scheduler, as ASHA stops a share of a real search.
    sample_tune(store, name="search", trials=trials, stopped=tuple(range(3, trials, 10)))
    return time.perf_counter() - started


def time_report(name: str, output: Path, code: Path, label: str) -> tuple[float, float]:
    """One `run_sweep.py report NAME` from the checkout `code`, as a child process: (wall, CPU) seconds.

    The report runs on one core, so its CPU time (user + system) is close to its wall time on an idle machine:
    on a shared, loaded one, read the CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "run_sweep.py", "report", name, "--output", str(output.resolve())],
                          cwd=code, capture_output=True, text=True, env={**os.environ})
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"report {name} ({label}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    progress = [line for line in proc.stderr.splitlines() if line.startswith("report:")]
    print(f"  {name:7s} {label:6s} wall {seconds:6.1f} s  CPU {cpu:6.1f} s"
          + (f"   ({len(progress)} progress lines)" if progress else ""), flush=True)
    return seconds, cpu


def profile_report(name: str, output: Path) -> None:
    from reports.cli import report_dir
    from reports.report import make_report
    from reports.store import tracking_uri_for

    profiler = cProfile.Profile()
    profiler.enable()
    make_report(name, tracking_uri_for(output), report_dir(output, name), output=output)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    print(text.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/report_scale"))
    parser.add_argument("--demo", type=Path, default=None, help="a demo's --output DIR to time too")
    parser.add_argument("--before", type=Path, default=None, help="an older checkout to time side by side")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-search", action="store_true", help="time only the --demo store")
    args = parser.parse_args()

    store = args.store / f"t{args.trials}"
    if not args.no_search:
        written = make_store(store, args.trials)
        print(f"search store: {args.trials} trials in {store}" + (f" (written in {written:.0f} s)" if written else
                                                                  " (already there)"))
    print(f"report timings, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start:")
    stores = ([] if args.no_search else [("search", store)]) + ([("demo", args.demo)] if args.demo else [])
    codes = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before is not None else [])
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):   # alternate, so that a change in the machine's load hits both alike
        for name, output in stores:
            for label, code in codes:
                results.setdefault((name, label), []).append(time_report(name, output, code, label))
    for (name, label), times in results.items():
        print(f"{name:7s} {label:6s} best wall {min(w for w, _ in times):6.1f} s, best CPU "
              f"{min(c for _, c in times):6.1f} s over {len(times)} runs")
    if args.before is not None:
        for name, _ in stores:
            wall = min(w for w, _ in results[(name, "before")]) / min(w for w, _ in results[(name, "after")])
            cpu = min(c for _, c in results[(name, "before")]) / min(c for _, c in results[(name, "after")])
            print(f"{name}: before / after (best of each): wall {wall:.1f}x, CPU {cpu:.1f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.profile and not args.no_search:
        profile_report("search", store)
        if args.demo is not None:
            profile_report("demo", args.demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
