#!/usr/bin/env python
"""MAGTKD sweeps: ablations and Optuna searches on Ray Tune, every trial in MLflow, tables from MLflow.

Examples:
  python run_sweep.py ablate ablations/demo.yaml                 # every variant x seed, ends in a table
  python run_sweep.py ablate ablations/meld_text.yaml data.path=../shared/data/meld --dry-run   # the plan, no run
  python run_sweep.py ablate ablations/magtkd.yaml data.path=/data/meld stage1.text_encoder=/models/roberta-large \
      stage1.audio_encoder=/models/data2vec-audio-base stage1.video_encoder=/models/timesformer-base
  python run_sweep.py tune search_spaces/fusion.yaml --num-samples 20
  python run_sweep.py ablate ablations/magtkd.yaml --from-tune fusion
  python run_sweep.py report demo --format md,tex,csv,html       # regenerate tables from MLflow only
  python run_sweep.py runs [demo] [--best 5]                     # what MLflow holds
  python run_sweep.py ui                                         # MLflow UI on 127.0.0.1
  python run_sweep.py data meld --path ../shared/data/meld       # look at a dataset before a sweep
  python run_sweep.py cache list | clear                         # the stage-1 feature cache

Rerunning the same sweep command resumes it; finished (config, seed) pairs are never trained twice.
Everything a sweep writes lives under --output (default ./runs).
"""
from __future__ import annotations

import argparse
import sys

from core.environment import apply_defaults

# Offline, quiet, loopback-only defaults, set before any import below can pull in Ray, MLflow or
# transformers (some of them read these variables when imported).
apply_defaults()

from core.config import ConfigError  # noqa: E402
from core.schema import DataError  # noqa: E402
from dialogue_data import cli as data_cli  # noqa: E402
from reports import cli as report_cli  # noqa: E402
from sweep import cli as sweep_cli  # noqa: E402


def print_ablation_table(outcome) -> None:
    """After a finished ablation: its table, made by the reports package from MLflow (the sweep engine
    knows nothing of reports). A table problem must not turn a finished sweep into a failure."""
    try:
        report_cli.print_table_after_sweep(outcome.name, outcome.output, tracking_uri=outcome.tracking_uri)
    except Exception as err:
        print(f"warning: the table could not be made ({type(err).__name__}: {err}); "
              f"try: python run_sweep.py report {outcome.name} --output {outcome.output}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_sweep.py", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep_cli.add_commands(sub, after_ablate=print_ablation_table)    # ablate, tune, sync
    report_cli.add_commands(sub)   # report, runs, ui
    data_cli.add_commands(sub)     # data, cache
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
