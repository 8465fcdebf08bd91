"""The GPU code paths, shown on a CPU: device choice in Ray workers given no GPU, no host sync in the
stage-2 step, out-of-memory reported instead of retried, stage 1 freeing the text model before the
students, capped media evaluation batches, host copies only for checkpoints, memory caps, determinism."""
from __future__ import annotations

import gc
import os
import sys
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ensure_local_ray, write_ablation
from core.config import ConfigError
from model import stage1 as stage1_module
from model.fusion import build_fusion
from model.runtime import cap_gpu_memory, grad_scaler, worker_device
from model.stage1 import eval_batches, run_stage1
from model.train import PaddedSplit, build_optimizer, linear_warmup_decay, train_stage2, train_step
from sweep.engine import SweepOptions, prepare
from sweep.identity import trial_identity
from test_stage1 import make_dataset
from test_stage1 import tiny_cfg as stage1_cfg
from test_train_stage2 import make_features, tiny_cfg

# Ops whose result the host must read from the device (on CUDA each one waits for every queued kernel):
# .item() / float() / bool() end in _local_scalar_dense; nonzero and boolean-mask gathers size their output
# from the data.
HOST_SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "aten.equal", "unique")


class HostSyncCounter(TorchDispatchMode):
    """Records every data-dependent op dispatched inside it (any device: the CPU shows what CUDA would wait on)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(op in str(func) for op in HOST_SYNC_OPS):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _stage2_setup(*overrides):
    cfg = tiny_cfg("fusion.kd_audio_weight=0.5", "fusion.kd_video_weight=0.5", "fusion.kd_terms=ce,logit,feature",
                   *overrides)
    features = make_features()
    device = torch.device("cpu")
    data = PaddedSplit.build(features.splits["train"], cfg.fusion.modalities, cfg.fusion.max_speakers, device)
    model = build_fusion(cfg.fusion, 4, features.dims())
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(2, 20))
    return cfg, model, data, optimizer, scheduler, device


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_stage2_step_makes_no_host_sync(precision):
    cfg, model, data, optimizer, scheduler, device = _stage2_setup(f"train.precision={precision}")
    scaler = grad_scaler(precision, device)
    batch = data.batch(torch.tensor([0, 3, 5, 7]))   # dialogues of different lengths: real padding
    train_step(cfg, model, batch, optimizer, scheduler, scaler, device)   # first step: lazy optimizer state
    with HostSyncCounter() as counter:
        for _ in range(2):
            loss = train_step(cfg, model, batch, optimizer, scheduler, scaler, device)
    assert counter.ops == []
    assert torch.isfinite(loss)
    # the counter does see syncs: the model's own fallback (no row index given) asks nonzero()
    with HostSyncCounter() as counter:
        model(batch["inputs"], batch["speakers"], batch["mask"], batch["present"])
    assert any("nonzero" in op for op in counter.ops)


def test_host_copies_are_made_only_for_epochs_with_a_checkpoint():
    states = {}
    train_stage2(tiny_cfg("train.epochs=3"), make_features(), on_epoch=lambda m, s: states.update({int(m["epoch"]): s}),
                 checkpoint_due=lambda epoch: epoch == 2)
    assert "model" in states[2] and "optimizer" in states[2] and "rng" in states[2]
    assert "model" not in states[1] and "model" not in states[3]
    assert all("best" in s and "history" in s for s in states.values())   # what predictions and reports need


def test_deterministic_mode_runs_deterministic_kernels_and_repeats_exactly():
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(torch.are_deterministic_algorithms_enabled()))
    try:
        first = train_stage2(tiny_cfg("train.deterministic=true"), make_features()).history
        second = train_stage2(tiny_cfg("train.deterministic=true"), make_features()).history
    finally:
        handle.remove()
        torch.use_deterministic_algorithms(False)
    assert seen and all(seen)
    assert first == second


def test_the_device_type_is_part_of_a_trial_identity_and_cuda_n_is_refused(tmp_path):
    cfg = tiny_cfg()
    assert trial_identity(cfg, "data", "code", "cpu") != trial_identity(cfg, "data", "code", "cuda")
    spec = write_ablation(tmp_path, "dev", {"full": {}}, seeds=[0])
    opts = SweepOptions(output=tmp_path / "out", num_gpus=1, gpus_per_trial=0.25)
    on_gpu = prepare("ablate", spec, ["train.device=auto"], opts).trial_settings[0]
    on_cpu = prepare("ablate", spec, ["train.device=cpu"], opts).trial_settings[0]
    assert (on_gpu["device_type"], on_cpu["device_type"]) == ("cuda", "cpu")
    assert on_gpu["identity"] != on_cpu["identity"]
    with pytest.raises(ConfigError, match="cuda:1 is refused"):
        prepare("ablate", spec, ["train.device=cuda:1"], opts)


def test_worker_device_rules():
    assert worker_device("auto", []) == "cpu"
    assert worker_device("auto", ["3"]) == "cuda"          # Ray shows the worker its GPU as cuda:0
    assert worker_device("cpu", ["0"]) == "cpu"
    with pytest.raises(ConfigError, match="cuda:1 is refused"):
        worker_device("cuda:1", ["1"])
    with pytest.raises(ConfigError, match="gave this task no GPU"):
        worker_device("cuda", [])


def _device_in_worker():
    """In a Ray worker: pretend this node has CUDA (torch would then pick GPU 0 for 'auto') and resolve."""
    import ray

    from model.runtime import resolve_device
    from sweep.trainable import place_on_ray_worker
    from core.config import default_config

    torch.cuda.is_available = lambda: True      # a CUDA node, as far as 'auto' can tell
    visible_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    cfg, gpu_ids, share = place_on_ray_worker(default_config())
    return {"visible_before": visible_before, "visible_after": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": cfg.train.device, "gpu_ids": list(gpu_ids), "share": share,
            "plain_auto": str(resolve_device("auto")), "ray_gpu_ids": list(ray.get_gpu_ids())}


def test_auto_is_the_cpu_in_a_ray_worker_given_no_gpu_even_with_cuda_visible():
    import ray

    ensure_local_ray()
    task = ray.remote(_device_in_worker)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        result = ray.get(task.options(num_gpus=0, runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}}).remote(),
                         timeout=120)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert result["visible_before"] == "0"        # what Ray 2.60 leaves a 0-GPU worker (here set on purpose)
    assert result["plain_auto"] == "cuda"         # what 'auto' alone would pick there: GPU 0, outside Ray's count
    assert result["device"] == "cpu" and result["gpu_ids"] == [] and result["share"] == 0.0
    assert result["visible_after"] == ""          # and the worker cannot touch a GPU by accident


def test_a_fractional_trial_caps_its_gpu_memory_at_its_share():
    calls = []
    assert cap_gpu_memory(torch.device("cuda", 0), 0.25, setter=lambda share, dev: calls.append((share, dev))) == 0.25
    assert calls == [(0.25, torch.device("cuda", 0))]
    assert cap_gpu_memory(torch.device("cuda", 0), 1.0, setter=calls.append) is None     # a whole GPU: no cap
    assert cap_gpu_memory(torch.device("cpu"), 0.25, setter=calls.append) is None
    assert len(calls) == 1


def test_media_evaluation_batches_are_sorted_by_length_and_capped():
    lengths = [40, 3, 25, 7, 40, 1, 12, 30, 2, 8]
    rows = list(range(len(lengths)))
    batches = eval_batches(rows, batch_size=4, order_key=lambda i: lengths[i], max_padded=60)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == rows                                       # every row once
    assert [lengths[i] for i in flat] == sorted(lengths)              # short clips together
    assert all(len(b) <= 4 for b in batches)
    assert all(len(b) * max(lengths[i] for i in b) <= 60 or len(b) == 1 for b in batches)
    assert [len(b) for b in batches][-2:] == [1, 1]                   # the 40-sample clips alone
    # run_media evaluates audio this way: the cap is in waveform samples (MAX_EVAL_AUDIO_SECONDS)
    keys, cap = stage1_module.media_eval_order("audio", "tiny", {"dev": stage1_module.SplitTable([], [], None, None, [])},
                                               lambda u: u, 16000)
    assert cap == int(stage1_module.MAX_EVAL_AUDIO_SECONDS * 16000) and keys["dev"] is not None


def test_stage1_frees_the_text_model_before_the_students_train(monkeypatch):
    text_models, alive_when_students_start = [], []
    real_text, real_media = stage1_module.build_text_encoder, stage1_module.build_media_encoder

    def text_encoder(*args, **kwargs):
        model = real_text(*args, **kwargs)
        text_models.append(weakref.ref(model))
        return model

    def media_encoder(*args, **kwargs):
        gc.collect()
        alive_when_students_start.append([ref() is not None for ref in text_models])
        return real_media(*args, **kwargs)

    monkeypatch.setattr(stage1_module, "build_text_encoder", text_encoder)
    monkeypatch.setattr(stage1_module, "build_media_encoder", media_encoder)
    features = run_stage1(stage1_cfg(), make_dataset(train=4, dev=2, test=2), log=lambda m: None)
    assert features.info["audio_kd"] == "true"                # the students did distil from the teacher
    assert alive_when_students_start == [[False], [False]]     # audio, video: the text model was gone


def _stage1_with_oom(settings, cache_dir):
    """A Ray task: compute_entry with every forward pass raising out-of-memory (as a GPU would)."""
    from sweep.stage1_plan import compute_entry

    def oom(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.60 GiB")

    torch.nn.modules.module.register_module_forward_pre_hook(oom)
    return compute_entry(settings, cache_dir)


def test_out_of_memory_in_stage1_is_a_reported_failure_naming_the_batch_size(tmp_path):
    import ray

    spec = write_ablation(tmp_path, "oom", {"full": {}}, seeds=[0], extra_base={"stage1.epochs": 1})
    settings = prepare("ablate", spec, [], SweepOptions(output=tmp_path / "out")).trial_settings[0]
    ensure_local_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        result = ray.get(ray.remote(_stage1_with_oom).options(max_retries=0).remote(settings, str(tmp_path / "cache")),
                         timeout=300)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert "out of GPU memory in stage 1" in result["failure"]
    assert "stage1.batch_size (now 8" in result["failure"] and "OutOfMemoryError" in result["failure"]
    assert not result["computed"] or result["failure"]


def test_out_of_memory_in_stage2_names_the_batch_size_and_the_share():
    from sweep.trainable import out_of_memory_reason

    cfg = tiny_cfg("train.batch_size=16")
    reason = out_of_memory_reason(torch.OutOfMemoryError("CUDA out of memory."), cfg, 0.25, "stage 2")
    assert "train.batch_size (now 16)" in reason and "--gpus-per-trial, now 0.25" in reason


def _trial_with_oom(config):
    """A Tune trainable: the real one, with the stage-2 model's forward raising out-of-memory."""
    from sweep.trainable import train_trial

    def oom(module, args):
        if type(module).__name__ == "AnchorGatedTransformer":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(oom)
    try:
        train_trial(config)
    finally:
        handle.remove()


def test_out_of_memory_in_a_trial_is_reported_once_not_retried(tmp_path):
    import ray
    from ray import tune

    spec = write_ablation(tmp_path, "oom2", {"full": {}}, seeds=[0])
    settings = prepare("ablate", spec, ["train.batch_size=3"], SweepOptions(output=tmp_path / "out")).trial_settings[0]
    settings["cache_dir"] = str(tmp_path / "cache")
    ensure_local_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        tuner = tune.Tuner(tune.with_resources(_trial_with_oom, {"cpu": 1}), param_space={"trial": settings},
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="oom", verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=2)))
        results = tuner.fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    result = results[0]
    assert result.error is None                         # reported, not raised: Ray retried nothing
    assert result.metrics["failed"] == 1.0
    assert "out of GPU memory in stage 2" in result.metrics["failure_reason"]
    assert "train.batch_size (now 3)" in result.metrics["failure_reason"]
    assert result.metrics["training_iteration"] == 1    # one report: the failure, once
