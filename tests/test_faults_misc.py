"""Fault-matrix cases that belong to no single component: a dev split lacking a class; two sweeps racing to tag one experiment.

What the code base never does with untrusted input (yaml.load, eval/exec, plain pickle, torch.load
without weights_only) is checked by `ruff check .` in .ci/run (pyproject.toml: [tool.ruff.lint])."""
import math

import pytest
import torch

from model.train import train_stage2
from tests.test_train_stage2 import LABELS, make_features, tiny_cfg


def test_a_dev_split_lacking_a_class_still_trains_and_reports_it():
    features = make_features(seed=3)
    dev = features.splits["dev"]
    missing = LABELS.index("anger")
    keep = dev.labels != missing
    dev.labels = torch.where(keep, dev.labels, torch.zeros_like(dev.labels))  # no 'anger' left in dev
    assert not bool((dev.labels == missing).any())
    metrics = train_stage2(tiny_cfg(), features).metrics
    assert all(math.isfinite(metrics[k]) for k in ("selected_dev_wf1", "selected_dev_mf1", "selected_test_wf1"))
    assert metrics["selected_dev_f1_anger"] == 0.0          # reported, not dropped and not NaN
    assert metrics["selected_test_f1_anger"] >= 0.0         # test still has the class


def test_a_sweep_that_loses_the_race_to_tag_its_experiment_goes_on(tmp_path):
    """Two sweeps starting at once on one tracking server both find the experiment's UI tag unset, and the
    server refuses the second insert on the tag's unique key (seen in CI). The tag then holds the value
    this sweep wanted, so it goes on; a refusal that leaves the tag unset is still an error."""
    from mlflow.exceptions import MlflowException

    from sweep import tracking

    client = tracking.make_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    key, value = tracking.EXPERIMENT_KIND

    class OtherSweepFirst:
        """The real client, whose tag write lands second: the other sweep's insert happens just before."""

        def __getattr__(self, name):
            return getattr(client, name)

        def set_experiment_tag(self, experiment_id, tag_key, tag_value):
            client.set_experiment_tag(experiment_id, tag_key, tag_value)
            raise MlflowException("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "experiment_tags.key, experiment_tags.experiment_id")

    class Refusing(OtherSweepFirst):
        def set_experiment_tag(self, experiment_id, tag_key, tag_value):
            raise MlflowException("BAD_REQUEST: permission denied")

    raced, refused = client.create_experiment("raced"), client.create_experiment("refused")
    assert key not in client.get_experiment(raced).tags
    tracking.mark_model_training(OtherSweepFirst(), raced)
    assert client.get_experiment(raced).tags[key] == value
    with pytest.raises(MlflowException, match="permission denied"):
        tracking.mark_model_training(Refusing(), refused)
    tracking.mark_model_training(Refusing(), raced)   # already set: nothing is written, nothing refused


def test_checkpoints_are_all_kept_when_saves_come_faster_than_rays_snapshot(tmp_path):
    """A SIGKILLed driver resumes from Ray's last experiment snapshot (saved every 10 s or more), which can name a
    checkpoint several saves old: with saves closer than 60 s none may be deleted (seen in the SIGKILL resume
    test with two kept and a save every epoch)."""
    from sweep.ablation_spec import load_ablation
    from sweep.engine import checkpoints_to_keep
    from sweep.search_space import load_search_space
    from tests.conftest import write_ablation, write_search

    def ablation(interval, variants=None):
        spec = write_ablation(tmp_path, "keep", variants or {"full": {}}, extra_base={"train.checkpoint_interval_s": interval})
        return load_ablation(spec)

    assert checkpoints_to_keep("ablate", ablation(300)) == 2
    assert checkpoints_to_keep("ablate", ablation(60)) == 2
    assert checkpoints_to_keep("ablate", ablation(0)) is None
    # one variant saving every epoch is enough: the sweep keeps every checkpoint
    assert checkpoints_to_keep("ablate", ablation(300, {"full": {}, "fast": {"train.checkpoint_interval_s": 5}})) is None
    search = write_search(tmp_path, "keep-search", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    assert checkpoints_to_keep("tune", load_search_space(search, ["train.checkpoint_interval_s=0"])) is None
    assert checkpoints_to_keep("tune", load_search_space(search, ["train.checkpoint_interval_s=300"])) == 2
