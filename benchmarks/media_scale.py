"""MELD-sized media: today's path (before issue 26) against the media store, side by side in one run.

    .venv/bin/python benchmarks/media_scale.py --n 100 300 [--old-sample 20] [--work /tmp/media_scale]
    .venv/bin/python benchmarks/media_scale.py --n 30 100 --stage1-only     # a stage-1 task's memory
    .venv/bin/python benchmarks/media_scale.py --n 100 1000 --distinct 50 --stage1-only --variants views capped

For each N it writes N MELD-like clips (1280x720, 3.6 s, 24 fps, H.264 + AAC stereo 48 kHz, a little
noise so the bit rate is not trivial) in MELD's layout (80% train, 10% dev, 10% test), then measures,
each in a fresh process:
- old: the previous `read_clip` (every frame decoded to a PIL image, 8 kept as float32 224 px; MELD's
  audio was not read at all) over `--old-sample` clips (s/clip) and over all N (peak RSS of the load and
  of a stage-2 trial on a stage-1 cache hit, which reloaded everything: the old fingerprint hashed arrays);
- new: the media store built with 1 and with 2 decode processes (s/clip, audio AND frames), peak RSS of
  the loading process and of the pool's workers, a second load (decodes nothing), and a stage-2 trial on
  a cache hit: seconds until it holds its stage-1 features (time to first batch) and its peak RSS
  through one stage-2 epoch;
and projects each per-clip figure to MELD's 13,708 clips. Prints one table; RESULTS.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MELD_CLIPS = 13708
FRAMES, SIZE = 8, 224
SPLIT_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
LABELS = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]


def copy_distinct(source: Path, target: Path, index: int) -> None:
    """A copy of an encoded clip that is a different file: an ISO BMFF `free` box (which every reader skips)
    holding the clip's index appended after the last box. Decoding it costs what the source costs; the media
    store, which keys clips by content hash, sees a new clip."""
    payload = f"media_scale copy {index}".encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with open(target, "ab") as f:
        f.write((8 + len(payload)).to_bytes(4, "big") + b"free" + payload)


def make_corpus(root: Path, n: int, distinct: int = 0) -> tuple[Path, Path]:
    """N clips in MELD.Raw's layout, 5 utterances per dialogue; reused when already there. With `distinct` D > 0
    only the first D clips are encoded and clip i >= D is clip i mod D made a different file (copy_distinct):
    encoding a 1280x720 clip took 1.5-5.7 s here, far more than decoding it, which is what is measured."""
    from dialogue_data.clipgen import write_clip

    data, media = root / "meld", root / "MELD.Raw"
    if (root / "done").exists():
        return data, media
    # A larger corpus made earlier holds these clips (the same names, the same content): copy them
    prefix = f"d{distinct}n" if distinct else "n"
    larger = sorted((p for p in root.parent.glob(prefix + "*") if (p / "done").exists()
                     and int(p.name[len(prefix):]) >= n), key=lambda p: int(p.name[len(prefix):]))
    data.mkdir(parents=True, exist_ok=True)
    counts = {"train": n - 2 * (n // 10), "dev": n // 10, "test": n // 10}
    encoded: list[Path] = []
    start = time.perf_counter()
    for split, count in counts.items():
        rows = []
        for i in range(count):
            d, u = divmod(i, 5)
            rows.append(f"{i + 1},Line {i}.,{'Ross' if u % 2 else 'Rachel'},{LABELS[i % 7]},x,{d},{u},1,1,"
                        f"\"00:00:01,000\",\"00:00:04,600\"")
            target = media / SPLIT_DIRS[split] / f"dia{d}_utt{u}.mp4"
            if larger:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(larger[0] / "MELD.Raw" / SPLIT_DIRS[split] / target.name, target)
            elif distinct and len(encoded) >= distinct:
                copy_distinct(encoded[i % distinct], target, i)
            else:
                write_clip(target, seconds=3.6, size=(1280, 720), fps=24, noise=6, seed=1000 * len(split) + i)
                encoded.append(target)
        (data / f"{split}_sent_emo.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "done").write_text(f"{time.perf_counter() - start:.1f}")
    return data, media


# ---- today's path, as it was before issue 26 (dialogue_data/media.py read_clip) ------------------

def old_read_clip(path: Path, frames: int, size: int):
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(path)) as container:
        images = [f.to_image() for f in container.decode(video=0)]
    idx = np.linspace(0, len(images) - 1, frames).round().astype(int)
    out = [np.asarray(images[i].convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
           .transpose(2, 0, 1) / 255.0 for i in idx]
    return np.stack(out).astype(np.float32)


def old_load(media: Path, limit: int = 0) -> dict:
    """Every clip decoded and held in memory, then hashed for the fingerprint (what each trial did)."""
    import hashlib

    clips = sorted(media.rglob("*.mp4"))[: limit or None]
    start = time.perf_counter()
    held = [old_read_clip(p, FRAMES, SIZE) for p in clips]
    decode = time.perf_counter() - start
    h = hashlib.sha256()
    for arr in held:
        h.update(arr.tobytes())
    return {"clips": len(clips), "seconds": time.perf_counter() - start, "decode_s_per_clip": decode / len(clips)}


# ---- the new path ----------------------------------------------------------------------------------

def config(data: Path, media: Path, store: Path, workers: int):
    from core.config import load_config

    return load_config(None, {"data.name": "meld", "data.path": str(data), "data.media_dir": str(media),
                              "data.media_store": str(store), "data.media_workers": workers,
                              "data.frames": FRAMES, "data.frame_size": SIZE,
                              "stage1.tiny_hidden": 8, "stage1.tiny_layers": 1, "stage1.width": 8,
                              "stage1.max_tokens": 32, "stage1.epochs": 0, "stage1.batch_size": 8,
                              "fusion.width": 8, "fusion.heads": 2, "train.epochs": 1, "train.batch_size": 4,
                              "train.device": "cpu"})


def new_load(data: Path, media: Path, store: Path, workers: int) -> dict:
    from dialogue_data.registry import load_dataset

    cfg = config(data, media, store, workers)
    start = time.perf_counter()
    dataset = load_dataset(cfg.data)
    seconds = time.perf_counter() - start
    n = sum(dataset.coverage(s)["utterances"] for s in ("train", "dev", "test"))
    cov = {m: sum(dataset.coverage(s)[m] for s in ("train", "dev", "test")) for m in ("audio", "video")}
    return {"clips": n, "seconds": seconds, "decode_s_per_clip": seconds / n, "coverage": cov,
            "fingerprint": dataset.fingerprint()}


def trial(data: Path, media: Path, store: Path, cache: Path, workers: int) -> dict:
    """A stage-2 trial: its stage-1 features (computed on the first call, a cache hit after), one epoch."""
    start = time.perf_counter()
    from model.train import train_stage2
    from pipeline.trial import stage1_features, usable_config

    imported = time.perf_counter()
    cfg = config(data, media, store, workers)
    dataset, fingerprint, features = stage1_features(cfg, cache, log=lambda m: None)
    run_cfg, _ = usable_config(cfg, features)
    ready = time.perf_counter()
    train_stage2(run_cfg, features)
    return {"import_s": imported - start, "ready_s": ready - imported, "epoch_s": time.perf_counter() - ready,
            "available": features.available()}


def child(kind: str, *args: str, env: dict | None = None) -> dict:
    """Run one measurement in a fresh process; its peak RSS (and its children's) comes back with it."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class RssParts:
    """Peaks of this process's resident memory by kind, sampled from /proc/self/status every 20 ms: RssAnon (heap,
    tensors: what grows if something is held), RssFile (mapped files: libraries, memory-mapped store clips; page
    cache the kernel can take back) and RssShmem (DataLoader batches handed over in shared memory). The peak RSS
    (ru_maxrss, VmHWM) is exact but mixes the three; a sample can miss a spike shorter than 20 ms. Empty where
    there is no /proc."""
    KEYS = ("RssAnon", "RssFile", "RssShmem")

    def __init__(self):
        self.peaks = {key: 0 for key in self.KEYS}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if Path("/proc/self/status").exists():
            self.thread.start()

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peaks:
                self.peaks[key] = max(self.peaks[key], int(value.split()[0]))

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self._sample()

    def result(self) -> dict:
        if not self.thread.is_alive():
            return {}
        self.stop.set()
        self.thread.join()
        self._sample()
        return {f"peak_{key[3:].lower()}_mb": kb / 1024 for key, kb in self.peaks.items()}


def run_child(kind: str, args: list[str]) -> None:
    paths = [Path(a) for a in args]
    parts = RssParts()
    if kind == "old":
        result = old_load(paths[0], int(args[1]))
    elif kind == "new":
        result = new_load(paths[0], paths[1], paths[2], int(args[3]))
    else:
        if args[5:] == ["uncapped"]:   # stage 1 as before the video cap: one evaluation batch of 8 x batch_size
            from model import stage1

            stage1.MAX_EVAL_VIDEO_FRAME_PIXELS = 1 << 62
        if args[5:] == ["views"]:      # predict as before own_copy: each batch's vector kept as the model gave it
            from model import stage1

            stage1.own_copy = lambda output: output.float().cpu()
        result = trial(paths[0], paths[1], paths[2], paths[3], int(args[4]))
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(parts.result())
    result["peak_rss_mb"] = me.ru_maxrss / 1024
    result["children_peak_rss_mb"] = children.ru_maxrss / 1024
    # CPU seconds of this process and its pool (less sensitive to a shared machine than wall time)
    result["cpu_s"] = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps(result))


def measure(work: Path, n: int, old_sample: int, old_all_max: int, distinct: int = 0) -> dict:
    root = work / (f"n{n}" if not distinct else f"d{distinct}n{n}")
    data, media = make_corpus(root, n, distinct)
    row = {"n": n, "distinct": distinct, "encode_s": float((root / "done").read_text())}
    store1, store1t, store2, cache = root / "store1", root / "store1t", root / "store2", root / "cache"
    for path in (store1, store1t, store2, cache):
        shutil.rmtree(path, ignore_errors=True)
    row["old_sample"] = child("old", str(media), str(old_sample))
    if n <= old_all_max:     # today's path over every clip: its memory grows by a fixed amount per clip
        row["old_all"] = child("old", str(media), "0")
    row["new_1"] = child("new", str(data), str(media), str(store1), "1")
    # one process with one decoder thread: the unit that two processes (one thread each) are compared with
    row["new_1t"] = child("new", str(data), str(media), str(store1t), "1", env={"MAGTKD_DECODER_THREADS": "1"})
    row["new_2"] = child("new", str(data), str(media), str(store2), "2")
    row["new_again"] = child("new", str(data), str(media), str(store2), "2")
    row["trial_miss"] = child("trial", str(data), str(media), str(store2), str(cache), "2")
    row["trial_hit"] = child("trial", str(data), str(media), str(store2), str(cache), "2")
    return row


STAGE1_VARIANTS = {"uncapped": "64 clips per evaluation batch (before the video cap)",
                   "views": "each batch's vector kept as a view of the encoder's output (before own_copy)",
                   "capped": "as now"}


def measure_stage1(work: Path, n: int, distinct: int = 0, variants: tuple = ("uncapped", "capped")) -> dict:
    """Peak RSS of a stage-1 task (a trial on a stage-1 cache miss: tiny encoders at 224 px, epochs 0, so
    stage 1 is the encoding of every split) as now ("capped") and, side by side, as before a fix
    (STAGE1_VARIANTS): the video evaluation batches uncapped by model.stage1.MAX_EVAL_VIDEO_FRAME_PIXELS, or
    predict keeping each batch's vector as the model returned it (model.stage1.own_copy)."""
    root = work / (f"d{distinct}n{n}" if distinct else f"n{n}")
    data, media = make_corpus(root, n, distinct)
    store = root / "store2"
    row = {"n": n, "load": child("new", str(data), str(media), str(store), "2")}   # decodes only what is missing
    for variant in variants:
        cache = root / f"cache_stage1_{variant}"
        shutil.rmtree(cache, ignore_errors=True)
        row[variant] = child("trial", str(data), str(media), str(store), str(cache), "2", variant)
    return row


def report_stage1(rows: list[dict]) -> str:
    lines = ["| N | stage 1 | peak RSS MB | peak RssAnon / RssFile / RssShmem MB (sampled) | DataLoader workers' "
             "peak RSS MB | stage 1 + one stage-2 epoch s | CPU s |", "|" + "---|" * 7]
    for r in rows:
        for variant in (v for v in STAGE1_VARIANTS if v in r):
            c = r[variant]
            parts = " / ".join(f"{c[k]:.0f}" if k in c else "-"
                               for k in ("peak_anon_mb", "peak_file_mb", "peak_shmem_mb"))
            lines.append(f"| {r['n']} | {variant}: {STAGE1_VARIANTS[variant]} | {c['peak_rss_mb']:.0f} | {parts} | "
                         f"{c['children_peak_rss_mb']:.0f} | {c['ready_s'] + c['epoch_s']:.1f} | {c['cpu_s']:.1f} |")
    return "\n".join(lines)


def report(rows: list[dict]) -> str:
    lines = ["| N | old s/clip (1 proc, frames only) | new s/clip 1 proc (audio+frames; FFmpeg threads) | "
             "new s/clip 1 proc, 1 thread | new s/clip 2 procs, 1 thread each | "
             "speed-up 1 proc | 2 procs vs 1 (1 thread each) | second load s | old load s / peak RSS MB | new load peak RSS MB "
             "(parent / pool workers) | new cache-hit trial: ready s / peak RSS MB | "
             "projection to 13,708 clips: old decode h, old RAM GB, new decode h (2 procs) |",
             "|" + "---|" * 12]
    # What each held clip adds to the old load's memory (every clip against the sample), from a row that ran it
    measured = [r for r in rows if r.get("old_all")]
    old_mb_per_clip = (sum((r["old_all"]["peak_rss_mb"] - r["old_sample"]["peak_rss_mb"])
                           / (r["old_all"]["clips"] - r["old_sample"]["clips"]) for r in measured) / len(measured)
                       if measured else float("nan"))
    for r in rows:
        old, n1, n2 = r["old_sample"]["decode_s_per_clip"], r["new_1"]["decode_s_per_clip"], r["new_2"]["decode_s_per_clip"]
        n1t = r["new_1t"]["decode_s_per_clip"]
        old_all = (f"{r['old_all']['seconds']:.1f} / {r['old_all']['peak_rss_mb']:.0f}" if r.get("old_all")
                   else "not run")
        lines.append(
            f"| {r['n']} | {old:.3f} | {n1:.3f} | {n1t:.3f} | {n2:.3f} | {old / n1:.2f}x | {n1t / n2:.2f}x | "
            f"{r['new_again']['seconds']:.2f} | {old_all} | "
            f"{r['new_1']['peak_rss_mb']:.0f} / {r['new_2']['children_peak_rss_mb']:.0f} | "
            f"{r['trial_hit']['ready_s']:.2f} / {r['trial_hit']['peak_rss_mb']:.0f} | "
            f"{old * MELD_CLIPS / 3600:.2f}, {old_mb_per_clip * MELD_CLIPS / 1024:.0f}, {n2 * MELD_CLIPS / 3600:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--old-sample", type=int, default=20, help="clips timed on today's path (s/clip)")
    parser.add_argument("--old-all-max", type=int, default=1000,
                        help="run today's path over every clip only up to this N (it holds them all in RAM)")
    parser.add_argument("--work", default="/tmp/media_scale")
    parser.add_argument("--distinct", type=int, default=0,
                        help="encode only this many clips; the others are copies made distinct files (copy_distinct)")
    parser.add_argument("--rows", nargs="*", default=[], help="earlier rows (JSON lines files) to print with these")
    parser.add_argument("--stage1-only", action="store_true",
                        help="only the stage-1 task's peak RSS, as now and as before a fix (--variants)")
    parser.add_argument("--variants", nargs="+", default=["uncapped", "capped"], choices=list(STAGE1_VARIANTS),
                        help="with --stage1-only: the stage-1 variants run, each in a fresh process, fresh cache")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], args.child[1:])
        return
    rows = [json.loads(line) for f in args.rows for line in Path(f).read_text().splitlines() if line.startswith("{")]
    if args.stage1_only:
        rows = [measure_stage1(Path(args.work), n, args.distinct, tuple(args.variants)) for n in args.n]
        for row in rows:
            print(json.dumps(row), flush=True)
        print(f"\nmachine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(report_stage1(rows))
        return
    for n in args.n:
        row = measure(Path(args.work), n, args.old_sample, args.old_all_max, args.distinct)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(report(rows))


if __name__ == "__main__":
    main()
