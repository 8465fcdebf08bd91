"""IEMOCAP in the authors' layout at growing size: session videos cut by Start_Time/End_Time, decoded once.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/iemocap_scale.py --sessions 2 --session-seconds 120 --per-session 15 60

Writes `--sessions` session videos like IEMOCAP's (`SessionK/SesK_impro01.avi`: MPEG-4 Part 2 in AVI, as
DivX is, 720x480, 30 fps, an AAC stereo 48 kHz track; each its own content), and for each `--per-session` U a
transcript (`iemocap/{train,dev,test}.csv`, the preset's columns, blank Wav_Path: the audio is cut from the
session's track) whose utterances cut every session at U ranges of 2-4 s spread over it. For each U, each in
a fresh process with a fresh media store: the store built with 1 and with 2 decode processes (seconds per
utterance, audio and 8 frames at 224 px), the peak RSS of the loading process and of its pool, and a second
load (decodes nothing). What it shows: whether the cost per utterance and the memory stay flat as the
utterances per session grow (the store opens a session once for all its utterances and seeks to each
range), and the projection to IEMOCAP's 10,039 utterances. Prints one table; RESULTS.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IEMOCAP_UTTERANCES = 10039
FRAMES, SIZE = 8, 224
HEADER = "Utterance,Speaker,Dialogue_ID,Start_Time,End_Time,Wav_Path,Video_Path,Emotion,Utterance_ID\n"
LABELS = ("neu", "ang", "sad", "hap", "exc", "fru")


def make_sessions(media: Path, sessions: int, seconds: float) -> list[Path]:
    from dialogue_data.clipgen import write_clip

    paths = []
    for k in range(1, sessions + 1):
        path = media / f"Session{k}" / f"Ses0{k}F_impro01.avi"
        if not path.exists():   # reused across runs of the benchmark with the same --work
            write_clip(path, seconds=seconds, size=(720, 480), fps=30, codec="mpeg4", noise=12, seed=k)
        paths.append(path)
    return paths


def make_transcripts(data: Path, sessions: list[Path], media: Path, per_session: int, seconds: float) -> int:
    """U ranges per session, 2-4 s long, spread evenly over it; about 80% of each session's turns to train, 10%
    each to dev and test (by position: only the cost is measured here, not a model)."""
    data.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    slot = (seconds - 1.0) / per_session
    for session in sessions:
        dialogue = session.stem
        for i in range(per_session):
            start = 0.5 + i * slot
            end = min(start + 2.0 + (i % 3), seconds - 0.1, start + slot - 0.05)
            split = "test" if i % 10 == 9 or i == per_session - 1 else \
                ("dev" if i % 10 == 8 or i == per_session - 2 else "train")
            rows[split].append(f"Turn {i}.,{'M' if i % 2 else 'F'},{dialogue},{start:.3f},{end:.3f},,"
                               f"{session.relative_to(media)},{LABELS[i % len(LABELS)]},{dialogue}_F{i:03d}")
    for split, lines in rows.items():
        (data / f"{split}.csv").write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return sum(len(lines) for lines in rows.values())


def load(data: Path, media: Path, store: Path, workers: int) -> dict:
    from core.config import load_config
    from dialogue_data.registry import load_dataset

    cfg = load_config(None, {"data.name": "iemocap", "data.path": str(data), "data.media_dir": str(media),
                             "data.media_store": str(store), "data.media_workers": workers,
                             "data.frames": FRAMES, "data.frame_size": SIZE})
    start = time.perf_counter()
    dataset = load_dataset(cfg.data)
    seconds = time.perf_counter() - start
    n = sum(dataset.coverage(s)["utterances"] for s in ("train", "dev", "test"))
    cov = {m: sum(dataset.coverage(s)[m] for s in ("train", "dev", "test")) for m in ("audio", "video")}
    return {"utterances": n, "seconds": seconds, "s_per_utterance": seconds / n, "coverage": cov}


def child(*args: str) -> dict:
    """One load in a fresh process; its peak RSS and its decode pool's come back with it."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"load failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(args: list[str]) -> None:
    result = load(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]))
    me, pool = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(peak_rss_mb=me.ru_maxrss / 1024, pool_peak_rss_mb=pool.ru_maxrss / 1024,
                  cpu_s=me.ru_utime + me.ru_stime + pool.ru_utime + pool.ru_stime)
    print(json.dumps(result))


def measure(work: Path, sessions: list[Path], media: Path, per_session: int, seconds: float) -> dict:
    data = work / f"iemocap_u{per_session}"
    n = make_transcripts(data, sessions, media, per_session, seconds)
    row = {"per_session": per_session, "utterances": n}
    for workers in (1, 2):
        store = work / f"store_u{per_session}_w{workers}"
        shutil.rmtree(store, ignore_errors=True)
        row[f"w{workers}"] = child(str(data), str(media), str(store), str(workers))
    row["again"] = child(str(data), str(media), str(work / f"store_u{per_session}_w2"), "2")
    return row


def report(rows: list[dict], sessions: int, seconds: float) -> str:
    head = ("| utterances per session | utterances | s/utterance, 1 proc | s/utterance, 2 procs | 2 procs vs 1 | "
            "second load s | peak RSS MB, 1 proc (process / pool) | peak RSS MB, 2 procs (process / pool) | "
            "coverage audio, video | projection to 10,039 utterances, 2 procs (min) |")
    lines = [f"{sessions} session(s) of {seconds:g} s, 720x480 MPEG-4 AVI 30 fps + AAC; {FRAMES} frames at {SIZE} px",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        w1, w2, again = r["w1"], r["w2"], r["again"]
        lines.append(f"| {r['per_session']} | {r['utterances']} | {w1['s_per_utterance']:.3f} | "
                     f"{w2['s_per_utterance']:.3f} | {w1['seconds'] / w2['seconds']:.2f}x | {again['seconds']:.2f} | "
                     f"{w1['peak_rss_mb']:.0f} / {w1['pool_peak_rss_mb']:.0f} | "
                     f"{w2['peak_rss_mb']:.0f} / {w2['pool_peak_rss_mb']:.0f} | "
                     f"{w2['coverage']['audio']}/{r['utterances']}, {w2['coverage']['video']}/{r['utterances']} | "
                     f"{IEMOCAP_UTTERANCES * w2['s_per_utterance'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--session-seconds", type=float, default=120.0)
    parser.add_argument("--per-session", type=int, nargs="+", default=[15, 60])
    parser.add_argument("--work", default="/tmp/iemocap_scale")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child)
        return
    work = Path(args.work)
    media = work / "IEMOCAP"
    start = time.perf_counter()
    sessions = make_sessions(media, args.sessions, args.session_seconds)
    print(f"sessions ready in {time.perf_counter() - start:.0f} s", flush=True)
    rows = [measure(work, sessions, media, u, args.session_seconds) for u in args.per_session]
    print(report(rows, args.sessions, args.session_seconds))


if __name__ == "__main__":
    main()
