"""A small MLflow store in exactly the schema the sweeps write (README: What MLflow holds), for the report tests and the render check.

It is written through the real MLflow client into a real SQLite store, like the sweep's driver
callback writes it, with numbers drawn from a seeded generator (so the store is the same each time):

    uri = sample_ablation(Path("/tmp/x"), name="demo")      # 5 variants x 3 seeds, 1 FAILED, 1 KILLED
    uri = sample_tune(Path("/tmp/x"), name="fusion")        # 10 Optuna-style trials

Planted effects (in weighted F1): full 62, no_speaker 61.5, no_kd 60.5, no_gate 60, text_only 58.
"""
from __future__ import annotations

import json
import math
import random
import zlib
from pathlib import Path
from typing import Any

MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
ABLATION = {  # variant -> (overrides, planted test wF1)
    "full": ({}, 0.620),
    "no_gate": ({"fusion.anchor_gating": False}, 0.600),
    "no_kd": ({"stage1.kd": False}, 0.605),
    "text_only": ({"fusion.modalities": ["text"]}, 0.580),
    "no_speaker": ({"fusion.speaker_embeddings": False}, 0.615),
}
BASE_TIME = 1_767_225_600_000  # 2026-01-01 00:00 UTC in ms: fixed so that two sample stores are identical


def _client(output: Path):
    from mlflow.tracking import MlflowClient

    output.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{output.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri), uri


def _rng(*parts: Any) -> random.Random:
    return random.Random(zlib.crc32(repr(parts).encode()))


def _experiment(client, output: Path, name: str) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=str((output / "mlartifacts" / name).resolve()))


def _log_trial(client, experiment_id: str, parent_id: str, *, sweep: str, variant: str, seed: int, params: dict,
               level: float, epochs: int, status: str, start: int, labels: list[str], masked: str = "",
               trial_id: str, select_on: str = "dev", failure_reason: str = "", extra_tags: dict | None = None) -> str:
    from mlflow.entities import Metric, Param

    rng = _rng(sweep, variant, seed, trial_id)
    config_hash = f"{zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()):08x}"
    tags = {"mlflow.parentRunId": parent_id, "sweep": sweep, "variant": variant, "seed": str(seed),
            "config_hash": config_hash, "dataset_fingerprint": "synthetic-0123abcd", "git_commit": "0123456789ab",
            "selection_rule": select_on, "masked_modalities": masked, "trial_id": trial_id}
    if failure_reason:
        tags["failure_reason"] = failure_reason
    tags.update(extra_tags or {})
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{variant or trial_id} s{seed}")
    run_id = run.info.run_id

    # Per-epoch curves that rise towards the planted level; dev and test are close but not equal.
    metrics, best = [], None
    done = epochs if status == "FINISHED" else max(1, epochs // 2)
    for epoch in range(1, done + 1):
        ramp = 1.0 - math.exp(-1.2 * epoch)
        row = {"epoch": epoch, "train_loss": 1.6 * math.exp(-0.4 * epoch) + 0.2 + rng.gauss(0, 0.01)}
        for split, shift in (("dev", 0.004), ("test", 0.0)):
            wf1 = level * ramp + shift + rng.gauss(0, 0.008)
            row[f"{split}_wf1"] = wf1
            row[f"{split}_acc"] = wf1 + 0.02 + rng.gauss(0, 0.004)
            row[f"{split}_mf1"] = wf1 - 0.15 + rng.gauss(0, 0.006)
            row[f"{split}_loss"] = 1.2 - wf1 + rng.gauss(0, 0.01)
            for i, label in enumerate(labels):
                row[f"{split}_f1_{label}"] = max(0.0, min(1.0, wf1 + 0.25 - 0.08 * i + rng.gauss(0, 0.02)))
        key = row["dev_wf1"] if select_on == "dev" else row["test_wf1"]
        if best is None or key > best[0]:
            best = (key, dict(row))
        selected = {"selected_epoch": best[1]["epoch"]}
        for split in ("dev", "test"):
            for m in ("wf1", "acc", "mf1"):
                selected[f"selected_{split}_{m}"] = best[1][f"{split}_{m}"]
            for label in labels:
                selected[f"selected_{split}_f1_{label}"] = best[1][f"{split}_f1_{label}"]
        stamp = start + 1000 * epoch
        plain = {k: v for k, v in row.items() if not k.startswith(("dev_f1_", "test_f1_"))}
        metrics += [Metric(k, float(v), stamp, epoch) for k, v in plain.items()]
        metrics += [Metric(k, float(v), stamp, epoch) for k, v in selected.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in sorted(params.items())])
    if status == "FINISHED":
        n = len(labels)
        confusion = [[(7 if i == j else 1) for j in range(n)] for i in range(n)]
        client.log_text(run_id, "true\\pred," + ",".join(labels) + "\n" + "\n".join(
            labels[i] + "," + ",".join(map(str, r)) for i, r in enumerate(confusion)) + "\n", "confusion_matrix.csv")
        report = {"labels": labels, "classes": {lbl: {"dev_f1": best[1][f"dev_f1_{lbl}"],
                                                      "test_f1": best[1][f"test_f1_{lbl}"]} for lbl in labels}}
        client.log_text(run_id, json.dumps(report, indent=1), "per_class_report.json")
    client.log_text(run_id, "\n".join(f"{k}: {v}" for k, v in sorted(params.items())) + "\n", "config.yaml")
    if status != "RUNNING":
        client.set_terminated(run_id, status=status, end_time=start + 1000 * (done + 1))
    return run_id


def _flat(overrides: dict) -> dict:
    from core.config import default_config

    return default_config().replace(overrides).flat()


def sample_ablation(output: Path, name: str = "demo", *, variants: dict | None = None, seeds=(0, 1, 2),
                    epochs: int = 4, failed=(("no_gate", 2),), killed=(("no_speaker", 1),), running=(),
                    select_on: str = "dev", stage1_seed_mode: str = "per-seed", masked: dict | None = None,
                    labels: list[str] | None = None) -> str:
    """Write an ablation sweep; returns the tracking URI. `masked`: variant -> masked_modalities tag."""
    client, uri = _client(output)
    variants = variants or ABLATION
    labels = labels or MELD_LABELS
    experiment_id = _experiment(client, output, name)
    parent_tags = {"sweep": name, "sweep_kind": "ablate", "dataset": "synthetic",
                   "variants": json.dumps(list(variants)),
                   "seeds": json.dumps(list(seeds)), "baseline": next(iter(variants)), "git_commit": "0123456789ab",
                   "selection_rule": select_on, "stage1_seed_mode": stage1_seed_mode,
                   "spec_path": f"ablations/{name}.yaml"}
    parent = client.create_run(experiment_id, start_time=BASE_TIME, tags=parent_tags, run_name=name)
    client.log_text(parent.info.run_id, f"name: {name}\nseeds: {list(seeds)}\n", "sweep.yaml")
    start = BASE_TIME
    for index, (variant, (overrides, level)) in enumerate(variants.items()):
        for seed in seeds:
            start += 10_000
            status = ("FAILED" if (variant, seed) in set(failed) else "KILLED" if (variant, seed) in set(killed)
                      else "RUNNING" if (variant, seed) in set(running) else "FINISHED")
            ov = dict(overrides, seed=seed, **{"train.select_on": select_on})
            if stage1_seed_mode == "shared":
                ov["stage1.shared_seed"] = 0
            _log_trial(client, experiment_id, parent.info.run_id, sweep=name, variant=variant, seed=seed,
                       params=_flat(ov), level=level, epochs=epochs, status=status, start=start, labels=labels,
                       masked=(masked or {}).get(variant, ""), trial_id=f"{index:02d}_{seed}", select_on=select_on,
                       failure_reason="DivergedError: loss is nan at epoch 2" if status == "FAILED" else "")
    client.set_terminated(parent.info.run_id, status="FINISHED", end_time=start + 60_000)
    return uri


def sample_tune(output: Path, name: str = "fusion", *, trials: int = 10, epochs: int = 4, stopped=(3, 8)) -> str:
    """Write an Optuna-style tune sweep over lr, dropout, layers and fusion mode (trial 6 FAILED, the
    trials in `stopped` stopped early by the scheduler); returns the tracking URI."""
    client, uri = _client(output)
    experiment_id = _experiment(client, output, name)
    parent_tags = {"sweep": name, "sweep_kind": "tune", "dataset": "synthetic", "variants": json.dumps([]),
                   "seeds": json.dumps([0]), "baseline": "", "git_commit": "0123456789ab",
                   "selection_rule": "dev", "stage1_seed_mode": "per-seed", "metric": "selected_dev_wf1",
                   "mode": "max", "search_params": json.dumps(["train.lr", "fusion.dropout", "fusion.layers",
                                                               "fusion.mode"]),
                   "spec_path": f"search_spaces/{name}.yaml"}
    parent = client.create_run(experiment_id, start_time=BASE_TIME, tags=parent_tags, run_name=name)
    rng = _rng(name)
    start = BASE_TIME
    for i in range(trials):
        lr = 10 ** rng.uniform(-5, -3)
        dropout = rng.uniform(0.1, 0.6)
        layers = rng.choice([1, 2])
        mode = rng.choice(["anchor", "concat"])
        # Planted: lr matters most (best near 3e-4), mode a little, dropout and layers hardly.
        level = 0.62 - 0.03 * (math.log10(lr) + 3.5) ** 2 - (0.015 if mode == "concat" else 0.0) + 0.002 * layers
        start += 10_000
        status = "FAILED" if i == 6 else "FINISHED"
        ov = {"train.lr": lr, "fusion.dropout": dropout, "fusion.layers": layers, "fusion.mode": mode, "seed": 0}
        # Like the sweep engine: the trial's own choices in tag `overrides`; fusion.layers is conditional
        # (searched only with fusion.mode anchor), so concat trials do not choose it.
        chosen = {k: v for k, v in ov.items() if k != "seed" and (k != "fusion.layers" or mode == "anchor")}
        extra = {"overrides": json.dumps(chosen)}
        if i in stopped:  # stopped by ASHA half-way, as the sweep's MLflow callback tags it
            extra["stopped_early"] = f"after epoch {epochs // 2} of {epochs} (scheduler)"
        # Like the sweep engine: tune trials carry no variant name, only Ray's trial id.
        _log_trial(client, experiment_id, parent.info.run_id, sweep=name, variant="", seed=0,
                   params=_flat(ov), level=level, epochs=epochs // 2 if i in stopped else epochs, status=status,
                   start=start, labels=MELD_LABELS, trial_id=f"{name}_{i:05d}", extra_tags=extra,
                   failure_reason="DivergedError: loss is inf at epoch 1" if status == "FAILED" else "")
    client.set_terminated(parent.info.run_id, status="FINISHED", end_time=start + 60_000)
    return uri


# The demo's rows (ablations/demo.yaml) with planted test wF1 levels like a demo run's: a report shaped like the
# demo's (13 rows, the § marks of a shared stage 1, the `expected` column) without running the demo.
DEMO_LIKE = {
    "full": ({}, 0.556), "w/o prompt": ({"stage1.prompt": False}, 0.571),
    "w/o stage-1 KD": ({"stage1.kd": False}, 0.555),
    "w/o stage-2 KD": ({"fusion.kd_audio_weight": 0.0, "fusion.kd_video_weight": 0.0}, 0.563),
    "w/o any KD": ({"stage1.kd": False, "fusion.kd_audio_weight": 0.0, "fusion.kd_video_weight": 0.0}, 0.549),
    "w/o anchor gating": ({"fusion.anchor_gating": False}, 0.565),
    "w/o speaker embeddings": ({"fusion.speaker_embeddings": False}, 0.545),
    "T": ({"fusion.modalities": ["text"]}, 0.524), "A": ({"fusion.modalities": ["audio"]}, 0.477),
    "V": ({"fusion.modalities": ["video"]}, 0.448), "T+A": ({"fusion.modalities": ["text", "audio"]}, 0.555),
    "T+V": ({"fusion.modalities": ["text", "video"]}, 0.537), "A+V": ({"fusion.modalities": ["audio", "video"]}, 0.472),
}


def log_predictions(uri: str, name: str, skill: dict[str, float], dialogues: int = 30, labels=None,
                    seed: int | None = None) -> dict[tuple[str, str], str]:
    """Give every child run of sweep `name` a predictions.csv (test split) in which a variant gets a share
    `skill[variant]` of the utterances right, so the report runs its paired bootstrap test on them; returns
    {(variant, seed): the file's text}."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    labels = labels or MELD_LABELS
    client = MlflowClient(uri)
    rng = np.random.default_rng(zlib.crc32(name.encode()) if seed is None else seed)
    files = {}
    lengths = rng.integers(4, 10, size=dialogues)
    gold = rng.integers(len(labels), size=int(lengths.sum()))
    for run in client.search_runs([client.get_experiment_by_name(name).experiment_id]):
        variant = run.data.tags.get("variant")
        if variant is None or variant not in skill:
            continue
        right = rng.random(len(gold)) < skill[variant]
        pred = np.where(right, gold, (gold + 1) % len(labels))
        lines = ["split,dialogue_id,utterance_id,gold,predicted"]
        u = 0
        for d, n in enumerate(lengths):
            for i in range(n):
                lines.append(f"test,test{d},test{d}_u{i},{labels[gold[u]]},{labels[pred[u]]}")
                u += 1
        files[(variant, run.data.tags["seed"])] = "\n".join(lines) + "\n"
        client.log_text(run.info.run_id, files[(variant, run.data.tags["seed"])], "predictions.csv")
    return files


def sample_demo_like(output: Path, name: str = "demo", *, expectations: dict | None = None) -> str:
    """An ablation shaped like the demo's: its 13 rows x 3 seeds, stage 1 shared, predictions for the bootstrap
    test, and `expectations` (the spec's block, e.g. ablations/demo.yaml's) on the parent; returns the URI."""
    from mlflow.tracking import MlflowClient

    uri = sample_ablation(output, name, variants=DEMO_LIKE, failed=(), killed=(), stage1_seed_mode="shared",
                          labels=MELD_LABELS[:6])
    log_predictions(uri, name, {v: 0.2 + level for v, (_, level) in DEMO_LIKE.items()}, labels=MELD_LABELS[:6])
    if expectations:
        client = MlflowClient(uri)
        parent = [r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags][0]
        client.set_tag(parent.info.run_id, "expectations", json.dumps(expectations))
    return uri


def compile_with_pdflatex(tex: Path, workdir: Path, packages: str = "booktabs") -> None:
    """Compile `tex` (\\input into a minimal article with `packages`) with pdflatex; pytest.skip where there is
    none (Debian: apt-get install texlive-latex-base texlive-latex-recommended); fails on a LaTeX error."""
    import shutil
    import subprocess

    import pytest

    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex not installed: structure checked, not compiled (apt-get install texlive-latex-base "
                    "texlive-latex-recommended; tests/check_report_render.py)")
    doc = workdir / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage[T1]{fontenc}"
                   + "".join(f"\\usepackage{{{p}}}" for p in packages.split(","))
                   + f"\\begin{{document}}\\input{{{tex.as_posix()}}}\\end{{document}}\n")
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=workdir,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (workdir / "doc.pdf").stat().st_size > 1000
