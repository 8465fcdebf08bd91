"""One trial end to end: dataset -> stage-1 features (cached) -> stage 2 -> metrics.

This is what a Ray Tune trial calls; it knows nothing of Ray or MLflow. `on_epoch(metrics, state)`
is called after every stage-2 epoch (the trainable reports and checkpoints there) and `resume_state`
continues from such a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from core.config import ConfigError, MAGTKDConfig
from core.features import Stage1Features
from core.predictions import SPLITS as PREDICTION_SPLITS
from core.predictions import positional_ids, predictions_csv, utterance_ids
from dialogue_data.cache import Stage1Cache, entry_key
from dialogue_data.features_import import cached_author_features
from dialogue_data.registry import load_dataset
from pipeline.media_loader import store_reader
from model.stage1 import run_stage1
from model.seed_bundle import BundleResult, train_stage2_bundle
from model.train import train_stage2


@dataclass
class TrialResult:
    metrics: dict                    # the last epoch's report (holds the selected_* figures)
    history: list[dict]              # every epoch's report
    labels: list[str]
    masked_modalities: list[str]     # asked for in fusion.modalities but absent from the data
    dataset_fingerprint: str
    notes: list[str] = field(default_factory=list)


def stage1_features(cfg: MAGTKDConfig, cache_dir: str | Path, log: Callable[[str], None] = print):
    """The stage-1 vectors for this config, from the cache or computed once (file-locked). On a cache hit
    no clip is read: the dataset holds references and its fingerprint covers the clips' identities."""
    dataset = load_dataset(cfg.data, cache_dir)      # clips as references into <cache_dir>/media: no arrays
    fingerprint = dataset.fingerprint()
    key = entry_key(fingerprint, cfg.stage1_hash())
    features = Stage1Cache(cache_dir).get_or_compute(
        key, lambda: run_stage1(cfg, dataset, log=log, media_reader=store_reader(cfg)), dataset.labels)
    return dataset, fingerprint, features


def usable_config(cfg: MAGTKDConfig, features: Stage1Features) -> tuple[MAGTKDConfig, list[str]]:
    """Drop asked-for modalities that the data do not have, loudly: a missing modality is masked, never zeros."""
    available = features.available()
    masked = [m for m in cfg.fusion.modalities if m not in available]
    kept = [m for m in cfg.fusion.modalities if m in available]
    if not kept:
        raise ConfigError(f"fusion.modalities={cfg.fusion.modalities} but the data only have {available}")
    if masked:
        cfg = cfg.replace({"fusion.modalities": kept})
    return cfg, masked


def _inputs(cfg: MAGTKDConfig, cache_dir: str | Path, log: Callable[[str], None]):
    """(fingerprint, stage-1 features, notes, utterance ids per split, the config stage 2 runs, masked modalities)."""
    if cfg.data.name == "features":  # the authors' released stage-1 output: no stage 1 to run
        fingerprint, features, notes = cached_author_features(cfg, cache_dir, log=log)
        ids = {s: positional_ids(features.splits[s].dialogue_lengths) for s in PREDICTION_SPLITS}
    else:
        dataset, fingerprint, features = stage1_features(cfg, cache_dir, log=log)
        notes = list(dataset.notes)
        ids = utterance_ids(dataset)
    run_cfg, masked = usable_config(cfg, features)
    if masked:
        notes.append(f"modalities absent from the data and masked: {', '.join(masked)}")
        log(f"WARNING: {notes[-1]}")
    return fingerprint, features, notes, ids, run_cfg, masked


def run_trial(cfg: MAGTKDConfig, cache_dir: str | Path,
              on_epoch: Optional[Callable[[dict, dict], None]] = None,
              resume_state: Optional[dict] = None,
              log: Callable[[str], None] = print,
              checkpoint_due: Callable[[int], bool] = lambda epoch: True) -> TrialResult:
    fingerprint, features, notes, ids, run_cfg, masked = _inputs(cfg, cache_dir, log)
    history: list[dict] = []

    def record(metrics: dict, state: dict) -> None:
        history.append(dict(metrics))
        # The selected epoch's per-utterance predictions as CSV text; the trainable writes it beside the
        # checkpoint (not into it) and the MLflow callback logs it as the trial's predictions.csv.
        state["predictions_csv"] = predictions_csv(state["best"], ids, list(features.labels))
        if on_epoch is not None:
            on_epoch(metrics, state)

    result = train_stage2(run_cfg, features, on_epoch=record, resume_state=resume_state, checkpoint_due=checkpoint_due)
    return TrialResult(metrics=dict(history[-1]) if history else dict(result.metrics), history=history,
                       labels=list(features.labels), masked_modalities=masked,
                       dataset_fingerprint=fingerprint, notes=notes)


def run_bundle_trial(cfgs: list[MAGTKDConfig], cache_dir: str | Path,
                     on_epoch: Optional[Callable[[dict, dict], None]] = None,
                     resume_state: Optional[dict] = None,
                     log: Callable[[str], None] = print) -> BundleResult:
    """run_trial for k seeds of one config trained as one bundle (model/seed_bundle.py).

    on_epoch(per_seed, state): per_seed {seed: that epoch's metrics} for the seeds still training;
    state is the bundle's resume state plus `predictions_csv` {seed: the selected epoch's predictions}."""
    inputs = [_inputs(cfg, cache_dir, log) for cfg in cfgs]
    features = [i[1] for i in inputs]
    labels = list(features[0].labels)

    def record(per_seed: dict, state: dict) -> None:
        best = dict(zip([c.seed for c in cfgs], state["best"]))
        ids = {c.seed: i[3] for c, i in zip(cfgs, inputs)}
        state["predictions_csv"] = {seed: predictions_csv(best[seed], ids[seed], labels) for seed in per_seed}
        if on_epoch is not None:
            on_epoch(per_seed, state)

    return train_stage2_bundle([i[4] for i in inputs], features, on_epoch=record, resume_state=resume_state)
