"""The stage-1 cache: round trip, computed once across real processes, corrupt entries rebuilt."""
import argparse
import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from dialogue_data import cli
from dialogue_data.cache import CacheWarning, Stage1Cache
from core.schema import DataError
from core.features import SplitFeatures, Stage1Features

LABELS = ["a", "b", "c"]


def make_features(seed: int = 0) -> Stage1Features:
    g = torch.Generator().manual_seed(seed)
    splits = {}
    for split, lengths in (("train", [3, 2]), ("dev", [2]), ("test", [1, 2])):
        n = sum(lengths)
        splits[split] = SplitFeatures(
            vectors={"text": torch.randn(n, 8, generator=g), "audio": torch.randn(n, 4, generator=g)},
            present={"text": torch.ones(n, dtype=torch.bool), "audio": torch.arange(n) % 2 == 0},
            labels=torch.randint(0, 3, (n,), generator=g), speakers=torch.randint(0, 2, (n,), generator=g),
            dialogue_lengths=lengths)
    return Stage1Features(labels=list(LABELS), splits=splits, info={"encoder": "test", "seed": str(seed)})


def assert_same(a: Stage1Features, b: Stage1Features):
    assert a.labels == b.labels and a.info == b.info
    for split in a.splits:
        x, y = a.splits[split], b.splits[split]
        assert x.dialogue_lengths == y.dialogue_lengths
        assert torch.equal(x.labels, y.labels) and torch.equal(x.speakers, y.speakers)
        for m in x.vectors:
            assert torch.equal(x.vectors[m], y.vectors[m]) and torch.equal(x.present[m], y.present[m])


class Counter:
    """A compute function that records each call in a file (visible across processes)."""

    def __init__(self, path: Path, seed: int = 0, until=None):
        """until: computing lasts until this condition holds (bounded), never a fixed time."""
        self.path, self.seed, self.until = path, seed, until

    def __call__(self) -> Stage1Features:
        with open(self.path, "a") as f:
            f.write(f"start {time.time()}\n")
        if self.until is not None:
            deadline = time.monotonic() + 240
            while not self.until() and time.monotonic() < deadline:
                time.sleep(0.05)
        with open(self.path, "a") as f:
            f.write(f"end {time.time()}\n")
        return make_features(self.seed)

    def calls(self) -> int:
        return self.path.read_text().count("start") if self.path.exists() else 0


def test_round_trip_and_atomic_files(tmp_path):
    cache = Stage1Cache(tmp_path / "cache")
    count = Counter(tmp_path / "calls")
    first = cache.get_or_compute("fp-abc", count, LABELS)
    second = cache.get_or_compute("fp-abc", count, LABELS)
    assert count.calls() == 1
    assert_same(first, make_features())
    assert_same(second, make_features())
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["fp-abc.json", "fp-abc.lock", "fp-abc.safetensors"]      # no temp files left
    meta = json.loads((tmp_path / "cache" / "fp-abc.json").read_text())
    assert meta["labels"] == LABELS and len(meta["sha256"]) == 64 and meta["info"]["encoder"] == "test"


def _worker(root, calls, barrier, out):
    """One process asking for the entry; all start together at the barrier."""
    cache = Stage1Cache(root)
    barrier.wait()
    requested = time.time()
    Path(out).with_suffix(".asked").touch()
    # Whoever computes keeps computing until both processes have asked (a condition, not a time window).
    both_asked = lambda: len(list(Path(out).parent.glob("*.asked"))) == 2  # noqa: E731
    features = cache.get_or_compute("shared-key", Counter(Path(calls), until=both_asked), LABELS)
    Path(out).write_text(json.dumps({"requested": requested, "sum": float(features.splits["train"].vectors["text"].sum())}))


def test_two_processes_compute_an_entry_exactly_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    calls = tmp_path / "calls"
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(calls), barrier, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    log = calls.read_text().split()
    assert log.count("start") == 1 and log.count("end") == 1                 # the encoders ran once
    compute_end = float(log[log.index("end") + 1])
    results = [json.loads(o.read_text()) for o in outs]
    assert all(r["requested"] < compute_end for r in results)               # both asked while it was computing
    assert results[0]["sum"] == results[1]["sum"]


def test_truncated_entry_is_detected_and_rebuilt(tmp_path):
    cache = Stage1Cache(tmp_path)
    count = Counter(tmp_path / "calls")
    cache.get_or_compute("k", count, LABELS)
    tensor = tmp_path / "k.safetensors"
    tensor.write_bytes(tensor.read_bytes()[: tensor.stat().st_size // 2])
    with pytest.warns(CacheWarning, match="truncated"):
        rebuilt = cache.get_or_compute("k", count, LABELS)
    assert count.calls() == 2
    assert_same(rebuilt, make_features())
    assert_same(cache.get_or_compute("k", count, LABELS), make_features())  # and the rebuilt entry is good
    assert count.calls() == 2


def test_flipped_byte_missing_sidecar_and_stale_labels_are_recomputed(tmp_path):
    cache = Stage1Cache(tmp_path)
    count = Counter(tmp_path / "calls")
    cache.get_or_compute("k", count, LABELS)
    tensor = tmp_path / "k.safetensors"
    data = bytearray(tensor.read_bytes())
    data[-3] ^= 0xFF                                                          # same size, different content
    tensor.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="sha256"):
        cache.get_or_compute("k", count, LABELS)
    (tmp_path / "k.json").unlink()
    with pytest.warns(CacheWarning):
        cache.get_or_compute("k", count, LABELS)
    (tmp_path / "k.json").write_text("{not json")
    with pytest.warns(CacheWarning):
        cache.get_or_compute("k", count, LABELS)
    with pytest.warns(CacheWarning, match="labels"):
        with pytest.raises(DataError, match="labels"):   # the recomputed features do not match either
            cache.get_or_compute("k", count, ["x", "y", "z"])
    assert count.calls() == 5


def test_invalid_key_is_refused(tmp_path):
    with pytest.raises(DataError, match="invalid cache key"):
        Stage1Cache(tmp_path).get_or_compute("../escape", Counter(tmp_path / "c"), LABELS)


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_and_clear_through_the_cache_command(tmp_path, capsys):
    cache = Stage1Cache(tmp_path / "runs" / "cache")
    for i, key in enumerate(("aaa-111", "bbb-222", "ccc-333")):
        cache.get_or_compute(key, lambda i=i: make_features(i), LABELS)
    assert [e.key for e in cache.list()] == ["aaa-111", "bbb-222", "ccc-333"]
    assert _run_cli(["cache", "list", "--output", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "bbb-222" in out and "encoder=test" in out
    assert _run_cli(["cache", "clear", "bbb-222", "--output", str(tmp_path / "runs")]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert [e.key for e in cache.list()] == ["aaa-111", "ccc-333"]
    assert _run_cli(["cache", "clear", "--output", str(tmp_path / "runs")]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert cache.list() == [] and not list((tmp_path / "runs" / "cache").iterdir())
    assert _run_cli(["cache", "list", "--output", str(tmp_path / "nothing")]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_the_driver_checks_an_entry_without_torch(tmp_path):
    """`verified_meta` (how the sweep's driver checks the cache) applies get's checks but reads no tensors:
    the driver process never imports torch."""
    import subprocess
    import sys
    import warnings

    cache = Stage1Cache(tmp_path)
    cache.get_or_compute("k", Counter(tmp_path / "calls"), LABELS)
    assert cache.verified_meta("k", LABELS)["info"] == make_features().info
    script = ("import sys; from dialogue_data.cache import Stage1Cache; "
              f"meta = Stage1Cache({str(tmp_path)!r}).verified_meta('k', {LABELS!r}); "
              "print(meta['labels'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split() == ["['a',", "'b',", "'c']", "False"]
    tensor = tmp_path / "k.safetensors"
    data = bytearray(tensor.read_bytes())
    data[-3] ^= 0xFF
    tensor.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.verified_meta("k", LABELS) is None
    assert any(issubclass(w.category, CacheWarning) and "sha256" in str(w.message) for w in caught)
