"""Where one packed stage-2 step spends its time: torch.profiler, 1 thread, MELD-length batches of 16.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fusion_profile.py WIDTH train|eval
"""
import sys
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
import fusion_throughput as ft
from core.config import load_config
from model.fusion import build_fusion, stage2_loss
from model.train import build_optimizer
torch.set_num_threads(1)
w = int(sys.argv[1]); mode = sys.argv[2]
cfg = load_config(None, [f"fusion.width={w}", "fusion.heads=8"])
lengths = ft.meld_dialogue_lengths(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv")
bs = ft.make_batches(lengths, 8, seed=1, device="cpu")
torch.manual_seed(0)
model = build_fusion(cfg.fusion, 7, {m: 768 for m in ft.MODALITIES}, packed=True)
opt = build_optimizer(model, cfg)
def step(b):
    out = model(b["inputs"], b["speakers"], b["mask"]); loss = stage2_loss(cfg, out, b["labels"], b["mask"])
    opt.zero_grad(set_to_none=True); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip); opt.step()
if mode == "train":
    model.train(); [step(b) for b in bs[:2]]
    from torch.profiler import profile
    with profile() as p:
        for b in bs[2:]: step(b)
else:
    model.eval()
    with torch.no_grad():
        [model(b["inputs"], b["speakers"], b["mask"]) for b in bs[:2]]
        from torch.profiler import profile
        with profile() as p:
            for b in bs[2:]: model(b["inputs"], b["speakers"], b["mask"])
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
