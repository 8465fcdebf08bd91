"""Command line of the sweep engine: `ablate`, `tune`, `sync` (registered into run_sweep.py's parser).

    python run_sweep.py ablate ablations/demo.yaml
    python run_sweep.py ablate ablations/magtkd.yaml data.path=/data/MELD.Raw stage1.text_encoder=/models/roberta-large \
        stage1.audio_encoder=/models/data2vec-audio-base stage1.video_encoder=/models/timesformer-base --dry-run
    python run_sweep.py ablate ablations/meld_text.yaml data.path=/data/MELD.Raw --from-tune fusion
    python run_sweep.py tune search_spaces/fusion.yaml data.path=/data/MELD.Raw --num-samples 20 --time-budget 3600
    python run_sweep.py tune search_spaces/fusion.yaml ... --address auto       # join a running Ray cluster
    python run_sweep.py sync demo                                              # Ray storage -> MLflow

Rerunning the same command resumes an interrupted sweep and trains nothing for a finished one.
"""
from __future__ import annotations

import argparse
import functools
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from sweep.engine import SweepOptions, check_output_dir, run_sweep
from sweep.ray_start import RayStartError
from sweep.sync import sync_sweep
from sweep.tracking import SweepError, default_tracking_uri

_EPILOG_ABLATE = """examples:
  python run_sweep.py ablate ablations/demo.yaml
  python run_sweep.py ablate ablations/magtkd.yaml data.path=/data/MELD.Raw stage1.text_encoder=/models/roberta-large \
      stage1.audio_encoder=/models/data2vec-audio-base stage1.video_encoder=/models/timesformer-base --dry-run
  python run_sweep.py ablate ablations/meld_text.yaml data.path=../shared/data/meld train.epochs=5
  python run_sweep.py ablate ablations/demo.yaml --output /scratch/runs --max-concurrent 4 --cpus-per-trial 0.5

On a real dataset, 'tiny' (random) encoders are refused: name checkpoints with stage1.text_encoder=... (and
audio/video), or pass stage1.allow_random_encoders=true for a smoke test. --dry-run prints the plan first.

Overrides are dotted config keys (see core/config.py); they apply to every variant and win over the
variants' own overrides. Rerun the same command to resume an interrupted sweep; trials whose identity
(config, data, code, stage-1 key) already ended in MLflow are skipped.

exit codes: 0 every trial FINISHED; 3 finished with FAILED trials; 130 interrupted (rerun to resume);
2 bad input, nothing started; 1 tracking store, lock or MLflow problems."""

_EPILOG_TUNE = """examples:
  python run_sweep.py tune search_spaces/fusion.yaml data.path=/data/MELD.Raw --num-samples 20
  python run_sweep.py tune search_spaces/fusion.yaml data.name=synthetic stage1.tiny_hidden=32 stage1.width=32 \\
      stage1.epochs=2 train.epochs=6 train.device=cpu --num-samples 8 --gpus-per-trial 0 --cpus-per-trial 1
  python run_sweep.py tune search_spaces/stage1.yaml data.path=/data/MELD.Raw --address auto --time-budget 7200

Optuna (TPE) proposes the trials, ASHA stops weak ones early on dev weighted F1 each epoch. The study is
kept in OUTPUT/optuna/NAME.db. Rerun the same command to resume."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.yaml", help="the sweep's YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides for every trial, e.g. data.path=/data/MELD train.epochs=5")
    _store(parser)
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="join a running Ray cluster ('auto' or host:port) instead of starting a local Ray; "
                             "the output directory must then be on storage every node sees")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="at most N trials at once (default: the spec's max_concurrent; 0 = as many as fit)")
    parser.add_argument("--cpus-per-trial", type=float, default=None, metavar="C",
                        help="CPUs per trial (default: the spec's resources.cpu); fractions are fine")
    parser.add_argument("--gpus-per-trial", type=float, default=None, metavar="G",
                        help="GPUs per trial (default: the spec's resources.gpu); fractions such as 0.25 share a GPU")
    parser.add_argument("--max-failures", type=int, default=None, metavar="N",
                        help="retries of a crashed trial from its last checkpoint (default: the spec's max_failures)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="stage-1 feature cache (default OUTPUT/cache); share it between sweeps and nodes")
    parser.add_argument("--num-gpus", type=float, default=None, metavar="N",
                        help="GPUs of the local Ray (default: those torch sees). Ray schedules by this count; on a "
                             "machine without GPUs (tests) they are logical and trials must use train.device=cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything that needs no training and print the plan (trials, stage-1 entries, "
                             "encoders, data, resources, outputs); every problem at once, exit 2; starts and "
                             "writes nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and the trials' output")
    parser.add_argument("--strict", action="store_true",
                        help="refuse data in which a label has no training examples (otherwise a warning)")


def _store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="./runs", metavar="DIR",
                        help="everything a sweep writes: DIR/mlflow.db, DIR/mlartifacts, DIR/ray, DIR/cache, "
                             "DIR/optuna, DIR/reports (default ./runs)")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="an MLflow tracking URI (e.g. http://127.0.0.1:5000) instead of sqlite:///DIR/mlflow.db")


def _options(args: argparse.Namespace):
    return SweepOptions(output=Path(args.output), tracking_uri=args.tracking_uri, address=args.address,
                        max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                        gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
                        num_samples=getattr(args, "num_samples", None), time_budget=getattr(args, "time_budget", None),
                        seeds=getattr(args, "seeds", None), seed_objective=getattr(args, "seed_objective", None),
                        from_tune=getattr(args, "from_tune", None),
                        cache_dir=Path(args.cache_dir) if args.cache_dir else None, verbose=args.verbose,
                        strict=args.strict, num_gpus=args.num_gpus, dry_run=args.dry_run)


def _guard(func):
    """SweepError (tracking server, a sweep already running, storage) -> one line on stderr, exit 1;
    Ray that cannot be started or reached -> exit 2.
    ConfigError and DataError are reported by run_sweep.py's main (exit 2)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except RayStartError as err:  # nothing was trained; the message says what was tried and the fix
            if getattr(args, "verbose", False):
                traceback.print_exc()
            print(f"error: {err}", file=sys.stderr)
            return 2
        except SweepError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return run


def cmd_ablate(args: argparse.Namespace, after_ablate: Optional[Callable] = None) -> int:
    """after_ablate(outcome) runs after a finished ablation: run_sweep.py passes the reports package's table
    printer here, so that sweep/ never imports reports/ (which sits above it)."""
    outcome = run_sweep("ablate", args.spec, args.overrides, _options(args))
    if outcome.status in ("finished", "failures") and after_ablate is not None:  # the table shows failures too
        after_ablate(outcome)
    return outcome.exit_code


def cmd_tune(args: argparse.Namespace) -> int:
    return run_sweep("tune", args.spec, args.overrides, _options(args)).exit_code


def cmd_sync(args: argparse.Namespace) -> int:
    output = check_output_dir(Path(args.output))
    report = sync_sweep(args.name, output, args.tracking_uri or default_tracking_uri(output))
    print(f"sync {args.name}: {report.summary()}")
    return 0


def add_commands(subparsers, after_ablate: Optional[Callable] = None) -> None:
    p = subparsers.add_parser("ablate", help="run every variant x seed of an ablation YAML on Ray Tune, into MLflow",
                              description="Run an ablation study: every variant x seed of SPEC.yaml as a Ray Tune "
                                          "trial, each logged to MLflow; ends with the ablation table.",
                              epilog=_EPILOG_ABLATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--from-tune", default=None, metavar="NAME",
                   help="start every variant from the best config found by tune sweep NAME (its searched keys)")
    p.set_defaults(func=_guard(functools.partial(cmd_ablate, after_ablate=after_ablate)))

    p = subparsers.add_parser("tune", help="Optuna search with ASHA early stopping on Ray Tune, into MLflow",
                              description="Run an Optuna search over SPEC.yaml's parameters on Ray Tune, with ASHA "
                                          "early stopping on dev weighted F1; every trial logged to MLflow.",
                              epilog=_EPILOG_TUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--num-samples", type=int, default=None, metavar="N", help="trials in all (default: the spec's)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no new trial after this many seconds (default: the spec's time_budget_s)")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="train every trial's config with K seeds (the spec's seed and the next K-1) as one seed "
                        "bundle; Optuna and ASHA see the mean over the seeds, each seed is its own MLflow run "
                        "(default: the spec's seeds, 1)")
    p.add_argument("--seed-objective", choices=("mean", "mean-std"), default=None,
                   help="with --seeds: optimise the mean over seeds (default) or the mean minus one sample std "
                        "(plus, for a minimised metric): a config that scores well only on some seeds ranks lower")
    p.set_defaults(func=_guard(cmd_tune))

    p = subparsers.add_parser("sync", help="write into MLflow what Ray's storage holds for a sweep and MLflow lacks",
                              description="After the tracking server was unreachable during a sweep (or a driver "
                                          "died), write the missing trials from OUTPUT/ray/NAME into MLflow.")
    p.add_argument("name", metavar="NAME", help="the sweep name")
    _store(p)
    p.set_defaults(func=_guard(cmd_sync))
