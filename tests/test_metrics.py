"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from attnzoo.run.metrics import (
    classification_report,
    cls_attention_mass,
    confusion_matrix,
    expected_calibration_error,
    mean_attention_distance,
    normalized_entropy,
    per_class_scores,
    topk_accuracy,
)

# 10 samples, 3 classes. Confusion matrix (rows = true class, columns = predicted):
#   [[3, 1, 0],
#    [0, 2, 0],
#    [2, 1, 1]]
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDS = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 2])
# precision = tp / column sum = [3/5, 2/4, 1/1]    -> macro (0.6 + 0.5 + 1) / 3 = 0.7
# recall    = tp / row sum    = [3/4, 2/2, 1/4]    -> macro (0.75 + 1 + 0.25) / 3 = 2/3
# F1        = 2pr / (p + r)   = [2/3, 2/3, 0.4]    -> macro (2/3 + 2/3 + 0.4) / 3 = 26/45
PRECISION, RECALL, F1 = [0.6, 0.5, 1.0], [0.75, 1.0, 0.25], [2 / 3, 2 / 3, 0.4]


def test_confusion_matrix_and_per_class_scores():
    cm = confusion_matrix(PREDS, LABELS, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 0], [2, 1, 1]]
    scores = per_class_scores(cm)
    assert scores["precision"] == pytest.approx(PRECISION)
    assert scores["recall"] == pytest.approx(RECALL)
    assert scores["f1"] == pytest.approx(F1)


def test_classification_report_macro_averages():
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 4  # argmax = PREDS
    report = classification_report(logits, LABELS, ["a", "b", "c"])
    assert report["samples"] == 10
    assert report["top1"] == pytest.approx(0.6)
    assert report["precision_macro"] == pytest.approx(0.7)
    assert report["recall_macro"] == pytest.approx(2 / 3)
    assert report["f1_macro"] == pytest.approx(26 / 45)
    assert report["per_class_accuracy"] == pytest.approx({"a": 0.75, "b": 1.0, "c": 0.25})


def test_scores_are_zero_where_undefined():
    cm = torch.tensor([[2, 0], [1, 0]])  # class 1 is never predicted: precision 0/0 -> 0
    scores = per_class_scores(cm)
    assert scores["precision"] == pytest.approx([2 / 3, 0.0])
    assert scores["f1"] == pytest.approx([0.8, 0.0])


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.1],     # label 2: ranked 2nd
                           [0.9, 0.05, 0.03, 0.02],  # label 0: ranked 1st
                           [0.1, 0.2, 0.3, 0.4]])    # label 0: ranked 4th
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 4) == pytest.approx(1.0)
    assert topk_accuracy(logits, labels, 10) == pytest.approx(1.0)  # k larger than the classes


def test_expected_calibration_error():
    probs = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.25, 0.75], [0.35, 0.65]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])  # right, wrong, right, wrong
    # 10 bins: one sample per bin, |accuracy - confidence| = .05, .85, .25, .65, each weighted 1/4.
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx((0.05 + 0.85 + 0.25 + 0.65) / 4)
    # 2 bins: all in (0.5, 1]; accuracy 0.5, mean confidence 0.8.
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.3)
    # perfectly calibrated: confidence 1 and always right
    assert expected_calibration_error(torch.eye(3, dtype=torch.float64), torch.arange(3)) == pytest.approx(0.0)


def test_normalized_entropy_uniform_one_hot_and_signed():
    n = 5
    assert normalized_entropy(torch.full((2, n), 1 / n)).tolist() == pytest.approx([1.0, 1.0])
    assert normalized_entropy(torch.eye(n)).tolist() == pytest.approx([0.0] * n, abs=1e-6)
    # Signed weights (cosine without softmax) count by magnitude: |±0.5| is uniform over 2 keys.
    assert normalized_entropy(torch.tensor([[-0.5, 0.5]])).item() == pytest.approx(1.0)


def _patch_weights(patch_rows: torch.Tensor, cls_weight: float = 0.0) -> torch.Tensor:
    """(5, 5) weights for a 2x2 grid plus class token: patch rows given, cls column set, cls row uniform."""
    w = torch.zeros(5, 5)
    w[0] = 0.2
    w[1:, 1:] = patch_rows * (1 - cls_weight)
    w[1:, 0] = cls_weight
    return w


def test_mean_attention_distance_on_a_2x2_grid():
    # patches in row-major order: (0,0), (0,1), (1,0), (1,1)
    to_self = _patch_weights(torch.eye(4))
    assert mean_attention_distance(to_self, grid=2).item() == pytest.approx(0.0)
    opposite = _patch_weights(torch.eye(4).flip(1))  # (0,0) <-> (1,1), (0,1) <-> (1,0): distance sqrt 2
    assert mean_attention_distance(opposite, grid=2).item() == pytest.approx(math.sqrt(2))
    uniform = _patch_weights(torch.full((4, 4), 0.25))  # distances 0, 1, 1, sqrt 2 from every patch
    assert mean_attention_distance(uniform, grid=2).item() == pytest.approx((2 + math.sqrt(2)) / 4)
    # attention on the class token is left out: the same answer with half the weight there
    assert mean_attention_distance(_patch_weights(torch.eye(4).flip(1), 0.5), grid=2).item() == pytest.approx(math.sqrt(2))


def test_class_token_mass():
    w = _patch_weights(torch.full((4, 4), 0.25), cls_weight=0.4)  # patch queries: 0.4; cls query: 0.2
    assert cls_attention_mass(w).item() == pytest.approx((0.2 + 4 * 0.4) / 5)
    batched = torch.stack([w, _patch_weights(torch.eye(4))])  # (2, 5, 5): one value per map
    assert cls_attention_mass(batched).tolist() == pytest.approx([(0.2 + 4 * 0.4) / 5, 0.2 / 5])
