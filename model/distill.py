"""The two distillation losses of MAGTKD, as plain functions (used by stage 1 and stage 2).

Both take a batch of rows, one row per utterance: logits (N, C) or features (N, D). The student
comes first and the teacher second; gradients flow into both unless the caller detaches the
teacher (stage 1 freezes its text teacher; stage 2 by default does not detach its anchor).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PEARSON_EPS = 1e-8  # the authors' eps, added to the norm product (so identical rows give 1 - O(eps))


def row_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`: (N, K), (N, K) -> (N,).

        r_i = <a_i - mean(a_i), b_i - mean(b_i)> / (||a_i - mean(a_i)|| * ||b_i - mean(b_i)|| + eps)

    A constant row has no defined correlation; the eps makes it 0 here.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def logit_relation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """DIST-style logit-relation loss (the one the authors use), a scalar.

        p_s = softmax(z_s / tau, dim=1),  p_t = softmax(z_t / tau, dim=1)          # (N, C)
        inter = 1 - mean_i Pearson(p_s[i, :], p_t[i, :])     # each utterance's class profile
        intra = 1 - mean_c Pearson(p_s[:, c], p_t[:, c])     # each class's profile over the batch
        loss  = tau^2 * (inter + intra)

    Identical, non-degenerate inputs give 0 (up to the eps); the range is [0, 4 tau^2].
    A batch of one utterance has constant columns, so its intra term is 1 whatever the inputs.
    """
    p_s = F.softmax(student_logits / tau, dim=1)
    p_t = F.softmax(teacher_logits / tau, dim=1)
    inter = 1.0 - row_pearson(p_s, p_t).mean()
    intra = 1.0 - row_pearson(p_s.t(), p_t.t()).mean()
    return tau ** 2 * (inter + intra)


def feature_similarity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Feature-similarity loss: the student must reproduce the teacher's batch similarity structure.

        S = S / ||S||,  T = T / ||T||                         # rows L2-normalised, (B, D)
        P = softmax(T T^T / t, dim=1)                         # target: teacher-teacher similarities
        log Q = log_softmax(T S^T / t, dim=1)                 # teacher-student similarities
        loss = KL(P || Q) summed over columns, averaged over rows (F.kl_div "batchmean")

    Identical inputs give exactly 0 (Q = P). The two feature widths must match.
    """
    s = F.normalize(student_feat, p=2, dim=1)
    te = F.normalize(teacher_feat, p=2, dim=1)
    target = F.softmax(te @ te.t() / t, dim=1)
    log_q = F.log_softmax(te @ s.t() / t, dim=1)
    return F.kl_div(log_q, target, reduction="batchmean")
