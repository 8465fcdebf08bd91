"""Stage-1 fine-tuning throughput of the bundled MiniLM on real MELD prompts: fp32 against bf16 autocast.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/minilm_finetune.py --meld ../shared/data/meld \
        --max-tokens 64 --steps 12 --threads 1

Builds the text encoder exactly as stage 1 does (`model.encoders.build_text_encoder`, prompt on, the
projection and classifier on top), takes the train split's prompts in a seeded random order (so the batches'
padded lengths are what an epoch sees), and times `--steps` AdamW steps of `--batch` prompts (forward,
cross-entropy, backward, clip, step) per precision, alternating fp32 and bf16 step by step so that a busy
machine slows both alike. Prints prompts/s for each, their ratio, the projected minutes per epoch over the
train split, and whether this CPU has native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo: without it,
bf16 autocast on a CPU is emulated and usually slower than fp32).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from core.config import load_config
from dialogue_data.registry import load_dataset
from model.encoders import build_text_encoder
from model.stage1 import split_tables


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meld", required=True, help="folder with MELD's *_sent_emo.csv")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per precision (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", choices=["on", "off"], default="on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"data.path={args.meld}", "data.name=meld", "stage1.text_encoder=minilm",
                             "stage1.width=384", f"stage1.max_tokens={args.max_tokens}",
                             f"stage1.prompt={'true' if args.prompt == 'on' else 'false'}"])
    dataset = load_dataset(cfg.data)
    tables = split_tables(dataset, cfg.fusion.max_speakers)
    train = tables["train"]
    encoder = build_text_encoder(cfg.stage1, [u.text or "" for u in train.utterances], len(dataset.labels),
                                 cfg.fusion.max_speakers)
    ids = encoder.inputs(train.dialogues)
    labels = train.labels
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=2e-5)
    seconds = {"fp32": 0.0, "bf16": 0.0}
    tokens = 0
    for step in range(args.steps + 1):
        rows = order[step * args.batch:(step + 1) * args.batch].tolist()
        input_ids, mask = encoder.collate([ids[i] for i in rows])
        tokens += int(mask.sum()) if step else 0
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, logits = encoder(input_ids, mask)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 10.0)
            optimizer.step()
            if step:                       # step 0 warms both up
                seconds[precision] += time.perf_counter() - start
    prompts = args.steps * args.batch
    print(f"MiniLM fine-tuning, prompt {args.prompt}, max_tokens {args.max_tokens}, batch {args.batch}, "
          f"{args.threads} thread(s), {args.steps} steps per precision, mean real tokens per prompt "
          f"{tokens / prompts:.1f}; native bf16 on this CPU: {native_bf16()}")
    for precision, s in seconds.items():
        rate = prompts / s
        print(f"RESULT {precision}: {rate:.1f} prompts/s, {1000 * s / args.steps:.0f} ms/step, "
              f"epoch over {len(ids)} train prompts {len(ids) / rate / 60:.1f} min")
    print(f"RESULT bf16/fp32 speed: {seconds['fp32'] / seconds['bf16']:.2f}x")


if __name__ == "__main__":
    main()
