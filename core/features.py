"""The hand-off between stage 1 and stage 2: per-utterance vectors, grouped into dialogues.

This is what the stage-1 cache stores (safetensors) and what the authors' released feature
pickles are converted into, so stage-2 sweeps run on either without retraining stage 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.config import MODALITIES


@dataclass
class SplitFeatures:
    vectors: dict[str, torch.Tensor]      # modality -> (N, D_m) float32, one row per utterance
    present: dict[str, torch.Tensor]      # modality -> (N,) bool; False = masked (missing media)
    labels: torch.Tensor                  # (N,) int64
    speakers: torch.Tensor                # (N,) int64, dialogue-local speaker index
    dialogue_lengths: list[int]           # utterances per dialogue, in order; sum == N

    def dialogues(self):
        """Yield (start, end) row ranges, one per dialogue."""
        start = 0
        for length in self.dialogue_lengths:
            yield start, start + length
            start += length

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Stage1Features:
    labels: list[str]
    splits: dict[str, SplitFeatures]      # train, dev, test
    info: dict[str, str] = field(default_factory=dict)  # provenance: encoder, fingerprint, notes

    def dims(self) -> dict[str, int]:
        any_split = next(iter(self.splits.values()))
        return {m: int(v.shape[1]) for m, v in any_split.vectors.items()}

    def available(self) -> list[str]:
        """Modalities with at least one present utterance in train."""
        train = self.splits["train"]
        return [m for m in MODALITIES if m in train.present and bool(train.present[m].any())]

    # ---- flat tensor dict for safetensors -------------------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for split, sf in self.splits.items():
            for m, v in sf.vectors.items():
                out[f"{split}.vec.{m}"] = v.contiguous()
                out[f"{split}.present.{m}"] = sf.present[m].to(torch.uint8).contiguous()
            out[f"{split}.labels"] = sf.labels.contiguous()
            out[f"{split}.speakers"] = sf.speakers.contiguous()
            out[f"{split}.lengths"] = torch.tensor(sf.dialogue_lengths, dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], labels: list[str], info: dict[str, str]) -> "Stage1Features":
        splits = {}
        for split in sorted({k.split(".")[0] for k in tensors}):
            vectors = {k.split(".")[2]: t.float() for k, t in tensors.items() if k.startswith(f"{split}.vec.")}
            present = {k.split(".")[2]: t.bool() for k, t in tensors.items() if k.startswith(f"{split}.present.")}
            splits[split] = SplitFeatures(vectors, present, tensors[f"{split}.labels"].long(),
                                          tensors[f"{split}.speakers"].long(), tensors[f"{split}.lengths"].tolist())
        return cls(labels=list(labels), splits=splits, info=dict(info))
