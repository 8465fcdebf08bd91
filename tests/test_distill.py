"""The two distillation losses against numbers worked out by hand (not by the code under test)."""
import math

import pytest
import torch

from model.distill import feature_similarity_loss, logit_relation_loss, row_pearson


def _softmax(row, tau):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    return sum(x * y for x, y in zip(da, db)) / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)))


def test_identical_logits_give_zero():
    z = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -1.0, 2.0], [2.0, 2.5, -0.5, 0.0]])
    assert logit_relation_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_two_class_opposite_profiles_give_the_maximum_by_hand():
    # tau = 1. Student rows favour class 0 then class 1; teacher rows the reverse. With two classes
    # every centred row/column is (+d, -d), so each Pearson is exactly -1: inter = intra = 1 - (-1) = 2,
    # and the loss is tau^2 * (2 + 2) = 4.
    student = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert logit_relation_loss(student, teacher, tau=1.0).item() == pytest.approx(4.0, abs=1e-5)
    # tau = 3: still opposite profiles, so 9 * 4.
    assert logit_relation_loss(student, teacher, tau=3.0).item() == pytest.approx(36.0, abs=1e-4)


def test_three_class_case_matches_a_hand_computation():
    zs = [[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]]
    zt = [[0.0, 2.0, 1.0], [2.0, 2.0, -1.0]]
    tau = 2.0
    ps = [_softmax(r, tau) for r in zs]
    pt = [_softmax(r, tau) for r in zt]
    inter = 1 - (_pearson(ps[0], pt[0]) + _pearson(ps[1], pt[1])) / 2
    cols = lambda p, c: [p[0][c], p[1][c]]
    intra = 1 - sum(_pearson(cols(ps, c), cols(pt, c)) for c in range(3)) / 3
    expected = tau ** 2 * (inter + intra)
    got = logit_relation_loss(torch.tensor(zs), torch.tensor(zt), tau=tau).item()
    assert got == pytest.approx(expected, abs=1e-5)
    assert 0.0 < got < 4 * tau ** 2


def test_row_pearson_values():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    assert row_pearson(a, b).tolist() == pytest.approx([1.0, -1.0], abs=1e-6)


def test_feature_loss_of_identical_inputs_is_zero():
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]])
    assert feature_similarity_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # scale does not matter: both are L2-normalised
    assert feature_similarity_loss(5 * x, x).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_loss_swapped_orthogonal_vectors_by_hand():
    # T = I (2x2), S = the rows swapped. T T^T = I -> P rows (e, 1)/(e+1) and (1, e)/(e+1);
    # T S^T = [[0, 1], [1, 0]] -> Q rows (1, e)/(e+1) and (e, 1)/(e+1).
    # KL per row = p1 log(p1/q1) + p2 log(p2/q2) = e/(e+1) * 1 + 1/(e+1) * (-1) = (e-1)/(e+1) = tanh(1/2);
    # batchmean over the 2 rows keeps that value.
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    student = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    e = math.e
    assert feature_similarity_loss(student, teacher, t=1.0).item() == pytest.approx((e - 1) / (e + 1), abs=1e-6)
    # t = 0.5 doubles the similarities: log(p1/q1) = 2, log(p2/q2) = -2, so KL = 2 (p1 - p2) = 2 tanh(1).
    assert feature_similarity_loss(student, teacher, t=0.5).item() == pytest.approx(2 * math.tanh(1.0), abs=1e-5)


def test_gradients_reach_student_and_teacher():
    torch.manual_seed(0)
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    (logit_relation_loss(s, t) + feature_similarity_loss(s, t)).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
