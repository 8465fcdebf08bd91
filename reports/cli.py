"""Command line for reports: `report`, `runs`, `ui` (registered into run_sweep.py's parser).

    python run_sweep.py report demo --format md,tex,csv,html --metric test_wf1 --baseline full --per-class
    python run_sweep.py report fusion --top 5       # a tune sweep: its 5 best trials with their values
    python run_sweep.py report iemocap meld --layout paper --metrics test_acc,test_wf1   # the paper's table
    python run_sweep.py runs                 # every sweep in the store
    python run_sweep.py runs demo --best 3   # the best trials of one sweep, with their overrides
    python run_sweep.py ui --port 5000       # MLflow UI on 127.0.0.1

`python -m reports.cli ...` gives the same three commands without the rest of the project's CLI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import ConfigError
from core.environment import apply_defaults
from reports import runs
from reports.html import DEFAULT_MLFLOW_UI
from reports.paper import DEFAULT_METRICS, parse_metrics
from reports.report import make_paper_report, make_report, parse_formats
from reports.store import ReportError, tracking_uri_for
from reports.ui import serve
from sweep.tracking import SweepError


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="./runs", metavar="DIR",
                        help="where sweeps write (default ./runs); the store is DIR/mlflow.db")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="an MLflow tracking URI instead of sqlite:///<DIR>/mlflow.db (e.g. a server)")


def _uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or tracking_uri_for(args.output)


def _guard(func):
    """ReportError and ConfigError (a bad option, e.g. --tracking-uri 'not a uri') -> one line on stderr and
    exit status 2, like the other commands' config errors; SweepError (a store that does not answer or is
    damaged) -> exit 1, as the README's exit-code table says."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except (ReportError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except SweepError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return run


def report_dir(output: str | Path, sweep: str) -> Path:
    return Path(output).resolve() / "reports" / sweep


def _paths_text(paths: dict) -> str:
    return "\n".join(f"  {fmt:4s} {path}" for fmt, path in paths.items())


def _safe_dir_name(names: list[str]) -> str:
    return "+".join("".join(c if c.isalnum() or c in "._-" else "_" for c in n) for n in names)


def cmd_report(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    if args.layout == "paper":
        metrics = parse_metrics(args.metrics)
        out_dir = report_dir(args.output, _safe_dir_name(args.names))
        markdown, paths = make_paper_report(args.names, _uri(args), out_dir, formats, metrics=metrics,
                                            baseline=args.baseline, output=args.output, progress=True)
        print(markdown)
        print(f"paper table of sweeps {', '.join(args.names)}:\n{_paths_text(paths)}")
        return 0
    if len(args.names) > 1:
        raise ReportError(f"{len(args.names)} sweeps named ({', '.join(args.names)}): several sweeps side by side "
                          f"need --layout paper")
    name = args.names[0]
    out_dir = report_dir(args.output, name)
    result = make_report(name, _uri(args), out_dir, formats, metric=args.metric, baseline=args.baseline,
                         per_class=args.per_class, output=args.output, top=args.top, mlflow_ui=args.mlflow_ui,
                         progress=True)
    print(result.markdown)
    if args.history:
        from reports.table import history_listing

        print(history_listing(result.sweep))
    print(f"report files for sweep {name}:\n{_paths_text(result.paths)}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    uri = _uri(args)
    if args.name is None:
        if args.best is not None:
            raise ReportError("--best K needs a sweep NAME")
        print(runs.sweeps_listing(uri, key=args.metric))
    elif args.best is not None:
        print(runs.best_listing(args.name, uri, args.best, key=args.metric))
    else:
        print(runs.trials_listing(args.name, uri))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    artifacts = None if args.tracking_uri else Path(args.output).resolve() / "mlartifacts"
    return serve(_uri(args), args.host, args.port, artifacts, dry_run=args.dry_run)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("report", help="regenerate an ablation table (md, tex, csv, html) from MLflow",
                              description="Tables and plots of one sweep from what MLflow holds; no retraining.")
    p.add_argument("names", metavar="NAME", nargs="+",
                   help="sweep name (= MLflow experiment); several with --layout paper")
    p.add_argument("--layout", choices=("table", "paper"), default="table",
                   help="table: one sweep's ablation table (default); paper: several sweeps side by side, rows "
                        "matched by variant name, a column group per sweep (files under reports/A+B/)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="--layout paper: the metrics of each column group (default test_acc,test_wf1)")
    p.add_argument("--mlflow-ui", default=DEFAULT_MLFLOW_UI, metavar="URL",
                   help="base address of the MLflow UI that the HTML report's run ids link to "
                        f"(default {DEFAULT_MLFLOW_UI}, where `run_sweep.py ui` serves)")
    p.add_argument("--format", default="md,tex,csv,html", help="comma list of md, tex, csv, html (default all)")
    p.add_argument("--metric", default="test_wf1",
                   help="compared metric for the difference and paired test: "
                        "dev|test _wf1|_acc|_mf1 or test_f1_<label>")
    p.add_argument("--baseline", default=None, help="variant to compare against (default: the sweep's baseline tag)")
    p.add_argument("--per-class", action="store_true", help="add per-class test F1 columns")
    p.add_argument("--history", action="store_true",
                   help="also list the superseded runs: runs of earlier plans (another config, data or code), "
                        "which never enter the table")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="tune sweeps: the K best trials in the Markdown/LaTeX table (0 = all; CSV/HTML hold all)")
    _store_options(p)
    p.set_defaults(func=_guard(cmd_report))

    p = subparsers.add_parser("runs", help="list sweeps, or the trials of one sweep, from MLflow",
                              description="What the MLflow store holds: sweeps, trials, best configs.")
    p.add_argument("name", metavar="NAME", nargs="?", default=None, help="a sweep; omit to list every sweep")
    p.add_argument("--best", type=int, default=None, metavar="K", help="the K best finished trials with their configs")
    p.add_argument("--metric", default="dev_wf1", help="ranking metric for --best and the sweep list (default dev_wf1)")
    _store_options(p)
    p.set_defaults(func=_guard(cmd_runs))

    p = subparsers.add_parser("ui", help="serve the MLflow UI on 127.0.0.1 against the project's store",
                              description="Starts `mlflow server` (1 worker, no job execution) and prints the address.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others get a warning)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the server command instead of running it")
    _store_options(p)
    p.set_defaults(func=_guard(cmd_ui))


def print_table_after_sweep(sweep_name: str, output_dir: str | Path, tracking_uri: str | None = None) -> None:
    """Called by the sweep engine when an ablation finishes: the Markdown table on stdout, files on disk.

    A report problem is printed, never raised: the sweep's results are safe in MLflow either way and the
    report can be made again with `run_sweep.py report NAME`.
    """
    uri = tracking_uri or tracking_uri_for(output_dir)
    out_dir = report_dir(output_dir, sweep_name)
    try:
        result = make_report(sweep_name, uri, out_dir, output=output_dir)
    except ReportError as err:
        print(f"warning: no report for sweep {sweep_name}: {err}", file=sys.stderr)
        return
    print(result.markdown)
    again = f"python run_sweep.py report {sweep_name} --output {output_dir}"
    if uri != tracking_uri_for(output_dir):
        again += f" --tracking-uri {uri}"
    print(f"report files (regenerate with: {again}):\n{_paths_text(result.paths)}")
    where = "" if str(output_dir) in ("runs", "./runs") else f" --output {output_dir}"
    print(f"MLflow store: {uri}\nbrowse every run: python run_sweep.py ui{where}   (MLflow UI on 127.0.0.1)\n"
          f"list its trials: python run_sweep.py runs {sweep_name}{where}", flush=True)


def main(argv: list[str] | None = None) -> int:
    apply_defaults()   # an entry point of its own: MLflow is imported later, inside the commands
    parser = argparse.ArgumentParser(prog="python -m reports.cli", description=__doc__.split("\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
