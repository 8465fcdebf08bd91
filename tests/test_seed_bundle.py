"""Seed bundles (model/seed_bundle.py): seed s inside a bundle of 3 gives what seed s gives alone.

After one epoch: logits and loss within 1e-5. After a short run: the same selected epoch and metrics
within 1e-4. A seed whose loss diverges fails alone; a resumed bundle continues exactly.
"""
import copy
import io

import pytest
import torch

from model.fusion import PackedRows, build_fusion
from model.seed_bundle import SeedBundle, train_stage2_bundle
from model.train import DivergedError, PaddedSplit, train_stage2
from test_train_stage2 import make_features, tiny_cfg

SEEDS = [3, 4, 5]


def _float_keys(report: dict) -> list[str]:
    return [k for k, v in report.items() if isinstance(v, float)]


def _state_at(cfg_overrides, features, seeds=None):
    """(single-run final state per seed, bundle final state) of runs with cfg_overrides."""
    singles = {}
    for seed in seeds or SEEDS:
        train_stage2(tiny_cfg(f"seed={seed}", *cfg_overrides), features,
                     on_epoch=lambda m, s, seed=seed: singles.__setitem__(seed, s))
    bundled = {}
    cfgs = [tiny_cfg(f"seed={seed}", *cfg_overrides) for seed in seeds or SEEDS]
    train_stage2_bundle(cfgs, [features] * len(cfgs), on_epoch=lambda m, s: bundled.update(s))
    return singles, bundled


@pytest.mark.parametrize("overrides", [[], ["fusion.shared_anchor_layers=false", "fusion.layers=2"],
                                       ["fusion.kd_terms=[ce,logit,feature]", "fusion.kd_audio_weight=0"],
                                       ["fusion.kd_terms=[logit,feature]", "fusion.detach_anchor=true"]],
                         ids=["authors-shared-anchor", "separate-anchor-2-layers", "every-kd-term-no-audio",
                              "detached-anchor"])
def test_one_epoch_logits_and_loss_match_the_single_runs(overrides):
    features = make_features(n_train=24)
    overrides = ["train.epochs=1", *overrides]
    singles, bundled = _state_at(overrides, features)
    cfg = tiny_cfg(*overrides)
    dims = {m: features.dims()[m] for m in cfg.fusion.modalities}
    bundle = SeedBundle(cfg.fusion, len(features.labels), dims, SEEDS, torch.device("cpu"))
    bundle.load_state_dict(bundle.portable(bundled["model"], {"state": {}})[0])
    bundle.eval()
    dev = PaddedSplit.build(features.splits["dev"], cfg.fusion.modalities, cfg.fusion.max_speakers, torch.device("cpu"))
    batch = dev.batch(torch.arange(len(dev)))
    with torch.no_grad():
        output = bundle([batch] * len(SEEDS))
    rows = PackedRows(batch["mask"])
    for s, seed in enumerate(SEEDS):
        single = build_fusion(cfg.fusion, len(features.labels), dims)
        single.load_state_dict(singles[seed]["model"])
        single.eval()
        with torch.no_grad():
            alone = single(batch["inputs"], batch["speakers"], batch["mask"], batch["present"])
        for head, logits in alone["logits"].items():
            assert torch.allclose(rows.pack(logits), output.seed(s)["logits"][head], atol=1e-5, rtol=0), (seed, head)
        mine, theirs = bundled["history"][s][0], singles[seed]["history"][0]
        for key in ("train_loss", "dev_loss", "test_loss"):
            assert abs(mine[key] - theirs[key]) <= 1e-5, (seed, key, mine[key], theirs[key])
    # the seeds really differ from one another (a bundle that trained one seed three times would pass the above)
    assert bundled["history"][0][0]["train_loss"] != bundled["history"][1][0]["train_loss"]


def test_short_run_selects_the_same_epoch_with_the_same_metrics():
    features = make_features(n_train=24)
    cfgs = [tiny_cfg(f"seed={seed}", "train.epochs=4") for seed in SEEDS]
    result = train_stage2_bundle(cfgs, [features] * 3)
    assert result.failures == {} and sorted(result.results) == SEEDS
    for cfg in cfgs:
        alone = train_stage2(cfg, features)
        bundled = result.results[cfg.seed]
        assert [r["epoch"] for r in bundled.history] == [1, 2, 3, 4]
        assert bundled.metrics["selected_epoch"] == alone.metrics["selected_epoch"]
        assert bundled.metrics["selected_test_confusion"] == alone.metrics["selected_test_confusion"]
        for mine, theirs in zip(bundled.history, alone.history):
            assert set(mine) == set(theirs)
            for key in _float_keys(theirs):
                assert abs(mine[key] - theirs[key]) <= 1e-4, (cfg.seed, mine["epoch"], key)


def test_a_diverging_seed_fails_alone_and_the_others_match_their_single_runs():
    features = make_features(n_train=16)
    broken = make_features(n_train=16)
    broken.splits["train"].vectors["text"][0, 0] = float("inf")  # the features of one seed's stage 1 went bad
    cfgs = [tiny_cfg(f"seed={seed}", "train.epochs=2") for seed in SEEDS]
    reports = []
    result = train_stage2_bundle(cfgs, [features, broken, features], on_epoch=lambda m, s: reports.append((m, s)))
    assert set(result.failures) == {4} and "training loss is nan" in result.failures[4].lower()
    assert sorted(result.results) == [3, 5]
    assert all(4 not in per_seed and set(state["failures"]) == {4} for per_seed, state in reports)
    with pytest.raises(DivergedError):
        train_stage2(cfgs[1], broken)
    alone = train_stage2(cfgs[2], features)
    for mine, theirs in zip(result.results[5].history, alone.history):
        assert all(abs(mine[k] - theirs[k]) <= 1e-4 for k in _float_keys(theirs))


def test_a_resumed_bundle_continues_as_if_never_stopped():
    features = make_features(n_train=16)
    cfgs = [tiny_cfg(f"seed={seed}", "train.epochs=3") for seed in SEEDS]
    states = []
    whole = train_stage2_bundle(cfgs, [features] * 3, on_epoch=lambda m, s: states.append(s))
    buffer = io.BytesIO()
    torch.save(states[0], buffer)  # through the same bytes a checkpoint is
    buffer.seek(0)
    first_epoch = torch.load(buffer, weights_only=True)  # noqa: TID251 (weights_only)
    resumed = train_stage2_bundle(cfgs, [features] * 3, resume_state=first_epoch)
    for seed in SEEDS:
        assert resumed.results[seed].history == whole.results[seed].history


def test_seed_bundle_in_a_spec_is_validated_and_groups_the_seeds_of_each_variant(tmp_path):
    from core.config import ConfigError
    from sweep.ablation_spec import load_ablation
    from sweep.seed_members import bundle_trials, members

    def spec(bundle: str):
        path = tmp_path / "b.yaml"
        path.write_text("# python run_sweep.py ablate b.yaml\nname: b\nvariants:\n  full: {}\n  concat: {fusion.mode: concat}\n"
                        f"seeds: [0, 1, 2]\nseed_bundle: {bundle}\n")
        return load_ablation(path)

    with pytest.raises(ConfigError, match=r"b\.yaml:7.*seed_bundle"):
        spec("0")
    assert spec("auto").seed_bundle == 3 and spec("2").seed_bundle == 2
    pending = [{"variant": p.variant, "slug": f"{p.slug}-s{p.seed}", "seed": p.seed, "identity": f"id{i}",
                "overrides": p.overrides, "base": spec("2").base.to_dict()} for i, p in enumerate(spec("2").trials())]
    trials = bundle_trials(pending, 2)
    # full: seeds 0+1 bundled, seed 2 alone; concat (not bundled: only the anchor model is) stays per seed
    assert [[m["seed"] for m in t.get("members", [t])] for t in trials] == [[0, 1], [2], [0], [1], [2]]
    ids = [member_id for member_id, _, _ in members("abc", {"trial": trials[0]})]
    assert ids == ["abc-s0", "abc-s1"]


def _with_missing_clips(features, seed: int):
    """A copy of `features` with clips missing: random audio and video clips, and every audio clip of the
    first dialogue of each split (a dialogue with no audio key at all, whose audio context must be zero)."""
    out = copy.deepcopy(features)
    g = torch.Generator().manual_seed(seed)
    for split in out.splits.values():
        for m in ("audio", "video"):
            split.present[m] &= torch.rand(split.present[m].shape, generator=g) > 0.3
        split.present["audio"][:split.dialogue_lengths[0]] = False
    return out


def test_seeds_with_their_own_missing_clips_match_their_single_runs():
    """Evaluation puts every seed's rows side by side in one product: with missing clips (one mask per seed
    when the seeds' stage-1 features differ, one shared when they agree) the seeds still match their single runs."""
    base = make_features(n_train=16)
    own = [_with_missing_clips(base, seed) for seed in SEEDS]       # every seed its own missing clips
    shared = [own[0]] * len(SEEDS)                                   # the same missing clips for every seed
    for features in (own, shared):
        cfgs = [tiny_cfg(f"seed={seed}", "train.epochs=2") for seed in SEEDS]
        result = train_stage2_bundle(cfgs, features)
        for cfg, feats in zip(cfgs, features):
            alone = train_stage2(cfg, feats)
            bundled = result.results[cfg.seed]
            assert bundled.metrics["selected_epoch"] == alone.metrics["selected_epoch"]
            for mine, theirs in zip(bundled.history, alone.history):
                for key in _float_keys(theirs):
                    assert abs(mine[key] - theirs[key]) <= 1e-4, (cfg.seed, mine["epoch"], key, mine[key], theirs[key])
