"""Losses and heads against hand-computed values on tiny cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.training.heads import ArcFaceHead, LinearHead, make_head
from retrieval.training.losses import (classification_loss, contrastive_loss, make_metric_loss,
                                       pairwise_distances, triplet_loss)


def _unit(*angles_deg):
    a = torch.tensor([math.radians(v) for v in angles_deg])
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def test_pairwise_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]])
    d = pairwise_distances(x)
    assert torch.allclose(d, torch.tensor([[0, 5, 3], [5, 0, 4], [3, 4, 0.]]), atol=1e-5)
    assert torch.allclose(pairwise_distances(x, squared=True), d ** 2, atol=1e-4)


def test_contrastive_zero_when_positives_coincide_and_negatives_beyond_margin():
    # two classes, each at one point; the points are sqrt(2) apart (90 degrees) > margin 0.7
    x = _unit(0, 0, 90, 90)
    labels = torch.tensor([0, 0, 1, 1])
    for reduction in ("balanced", "mean", "sum"):
        assert float(contrastive_loss(x, labels, margin=0.7, reduction=reduction)) == pytest.approx(0.0, abs=1e-6)


def test_contrastive_hand_computed_and_gradients_flow():
    # positives at 60 degrees: d^2 = 2 - 2cos60 = 1; negative pair at 30 degrees: d = 2 sin15
    x = _unit(0, 60, 90).requires_grad_(True)
    labels = torch.tensor([0, 0, 1])
    margin = 1.0
    d_neg = {(0, 2): 2 * math.sin(math.radians(45)), (1, 2): 2 * math.sin(math.radians(15))}
    pos_term = 0.5 * 1.0
    neg_terms = [0.5 * max(0.0, margin - d) ** 2 for d in d_neg.values()]
    with torch.no_grad():
        total = float(contrastive_loss(x, labels, margin, "sum"))
        mean = float(contrastive_loss(x, labels, margin, "mean"))
    assert total == pytest.approx(pos_term + sum(neg_terms), rel=1e-5)
    assert mean == pytest.approx((pos_term + sum(neg_terms)) / 3, rel=1e-5)
    loss = contrastive_loss(x, labels, margin, "balanced")
    assert loss.item() == pytest.approx(pos_term + sum(neg_terms) / 2, rel=1e-5)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # a gradient step lowers the loss
    with torch.no_grad():
        y = x - 0.1 * x.grad
    assert contrastive_loss(y, labels, margin, "balanced").item() < loss.item()


def test_contrastive_gradient_finite_when_negatives_coincide():
    x = _unit(0, 0).requires_grad_(True)
    loss = contrastive_loss(x, torch.tensor([0, 1]), margin=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.125, rel=1e-4) and torch.isfinite(x.grad).all()


def test_triplet_batch_hard_hand_case():
    # 1-D embeddings: class 0 at 0 and 1, class 1 at 1.5 and 4
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    m = 0.2
    # anchor: hardest positive, nearest negative
    expected = [max(0, 1 - 1.5 + m), max(0, 1 - 0.5 + m), max(0, 2.5 - 0.5 + m), max(0, 2.5 - 3 + m)]
    loss = triplet_loss(x, labels, margin=m, mining="batch_hard")
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    loss.backward()
    assert float(x.grad.abs().sum()) > 0


def test_triplet_batch_all_hand_case():
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    d = (x - x.t()).abs()
    m = 0.2
    vals = []
    for a in range(4):
        for p in range(4):
            for n in range(4):
                if p != a and labels[p] == labels[a] and labels[n] != labels[a]:
                    vals.append(max(0.0, float(d[a, p] - d[a, n]) + m))
    active = [v for v in vals if v > 0]
    assert float(triplet_loss(x, labels, m, "batch_all")) == pytest.approx(sum(active) / len(active), rel=1e-5)


def test_losses_reject_bad_input():
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(torch.zeros(2, 2), torch.tensor([0, 1]), mining="semi")
    with pytest.raises(ValueError, match="unknown metric loss"):
        make_metric_loss("npair")


def test_arcface_reduces_to_scaled_cosine_softmax_at_zero_margin():
    torch.manual_seed(0)
    x, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    head = ArcFaceHead(5, 3, s=10.0, m=0.0)
    cosine = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    assert torch.allclose(head(x, labels), 10.0 * cosine, atol=1e-5)
    assert classification_loss(head(x, labels), labels).item() == pytest.approx(
        F.cross_entropy(10.0 * cosine, labels).item(), rel=1e-5)


def test_arcface_margin_on_true_class_only():
    torch.manual_seed(1)
    x, labels = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    head = ArcFaceHead(3, 2, s=8.0, m=0.4)
    logits = head(x, labels)
    plain = head(x)  # no labels: margin-free
    cos = plain / 8.0
    theta = torch.acos(cos.gather(1, labels[:, None]).clamp(-1, 1))
    expected_target = torch.where(theta + 0.4 <= math.pi, torch.cos(theta + 0.4),
                                  torch.cos(theta) - 0.4 * math.sin(0.4))
    assert torch.allclose(logits.gather(1, labels[:, None]), 8.0 * expected_target, atol=1e-4)
    other = 1 - labels
    assert torch.allclose(logits.gather(1, other[:, None]), plain.gather(1, other[:, None]))
    # the margin makes the loss larger than without it
    assert classification_loss(logits, labels).item() > classification_loss(plain, labels).item()


def test_linear_head_and_factory():
    head = make_head("linear", 4, 3, scale=2.0)
    assert isinstance(head, LinearHead)
    x = torch.randn(2, 4)
    assert torch.allclose(head(x), 2.0 * head.fc(x))
    assert make_head("cosine", 4, 3, s=5.0).m == 0.0
    with pytest.raises(ValueError, match="unknown head"):
        make_head("softmax", 4, 3)
