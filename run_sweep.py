#!/usr/bin/env python
"""MAGTKD sweeps: ablations and Optuna searches on Ray Tune, every trial in MLflow, tables from MLflow.

Examples:
  python run_sweep.py ablate ablations/demo.yaml                 # every variant x seed, ends in a table
  python run_sweep.py ablate ablations/magtkd.yaml data.path=/data/meld train.epochs=5
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
import os
import sys

from core.environment import DEFAULTS  # noqa: E402  (plain constants: nothing heavy is imported)

# Offline, quiet, loopback-only defaults; set before Ray, MLflow or transformers are imported.
for _key, _value in DEFAULTS.items():
    os.environ.setdefault(_key, _value)


def build_parser() -> argparse.ArgumentParser:
    from dialogue_data import cli as data_cli
    from reports import cli as report_cli
    from sweep import cli as sweep_cli

    parser = argparse.ArgumentParser(prog="run_sweep.py", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep_cli.add_commands(sub)    # ablate, tune, sync
    report_cli.add_commands(sub)   # report, runs, ui
    data_cli.add_commands(sub)     # data, cache
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.config import ConfigError
    from core.schema import DataError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
