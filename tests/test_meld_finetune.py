"""Prompt learning with a fine-tuned MiniLM on real MELD text (ablations/meld_text_finetune.yaml).

The sweep itself takes about an hour on 2 cores (benchmarks/RESULTS.md); this checks, in seconds, that the
spec really fine-tunes: one step of stage-1 training through `model.stage1.fit` on a few real MELD prompts
moves the encoder's own weights, and the stage-1 cache entry is not the frozen spec's.
"""
from pathlib import Path

import pytest
import torch

from conftest import HAS_MELD, MELD_DIR, MELD_SKIP_REASON
from dialogue_data.registry import load_dataset
from model.encoders import build_text_encoder
from model.stage1 import fit, split_tables
from sweep.ablation_spec import load_ablation
from sweep.identity import stage1_key

ROOT = Path(__file__).resolve().parent.parent
needs_meld = pytest.mark.skipif(not HAS_MELD, reason=MELD_SKIP_REASON)


def _full(spec_name: str):
    """The baseline row's seed-0 config of a shipped spec, on the real MELD transcripts."""
    spec = load_ablation(ROOT / "ablations" / spec_name, [f"data.path={MELD_DIR}"])
    return next(t.cfg for t in spec.trials() if t.variant == spec.baseline and t.seed == 0)


@needs_meld
def test_one_fine_tuning_step_moves_minilm_and_keys_a_new_cache_entry():
    cfg = _full("meld_text_finetune.yaml")
    frozen = _full("meld_text.yaml")
    assert cfg.stage1.finetune_text and cfg.stage1.text_encoder == "minilm" and cfg.stage1.prompt
    assert not frozen.stage1.finetune_text

    dataset = load_dataset(cfg.data)
    tables = split_tables(dataset, cfg.fusion.max_speakers)
    train = tables["train"]
    encoder = build_text_encoder(cfg.stage1, [u.text or "" for u in train.utterances], len(dataset.labels),
                                 cfg.fusion.max_speakers)
    ids = encoder.inputs(train.dialogues[:2])           # the first two real dialogues' prompts
    rows = list(range(min(len(ids), cfg.stage1.batch_size)))
    assert len(rows) >= 4
    assert all(len(x) <= cfg.stage1.max_tokens for x in ids)
    labels = train.labels[:len(ids)]

    def batcher(chosen):
        return encoder.collate([ids[i] for i in chosen])

    backbone_before = {k: v.detach().clone() for k, v in encoder.backbone.state_dict().items()}
    stage1 = cfg.stage1.__class__(**{**vars(cfg.stage1), "epochs": 1})
    torch.manual_seed(0)
    result = fit("text", encoder, stage1, (batcher, rows, labels), (batcher, [], labels),
                 len(dataset.labels), torch.device("cpu"), torch.Generator().manual_seed(0), log=lambda _: None)
    assert result.best_epoch == 1
    # Every encoder layer trained, not only the head: attention and feed-forward weights of the first and last
    # layer, and the word embeddings (the rows of the tokens these prompts use), all moved.
    after = encoder.backbone.state_dict()
    moved = {k for k, v in backbone_before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    layers = {k.split(".layer.")[1].split(".")[0] for k in moved if ".layer." in k}
    n_layers = encoder.backbone.model.config.num_hidden_layers
    assert layers == {str(i) for i in range(n_layers)}, f"layers that moved: {sorted(layers)}"
    assert any("word_embeddings" in k for k in moved)

    # The fine-tuned entry is its own cache entry: never the frozen spec's vectors.
    fingerprint = dataset.fingerprint()
    assert stage1_key(cfg, fingerprint) != stage1_key(frozen, fingerprint)
    assert cfg.stage1_hash() != frozen.stage1_hash()
