"""Classification and attention metrics, as plain functions of tensors."""

from __future__ import annotations

import math

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hits.float().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_scores(cm: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall (= per-class accuracy) and F1 per class; 0 where undefined."""
    cm = cm.double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    confidence, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    ece = 0.0
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        in_bin = (confidence > lo) & (confidence <= hi) if i else (confidence >= lo) & (confidence <= hi)
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].double().mean()).abs()
            ece += gap.item() * in_bin.double().mean().item()
    return ece


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    logits, labels = logits.float(), labels.long()
    n = len(classes)
    probs = logits.softmax(dim=1)
    cm = confusion_matrix(logits.argmax(1), labels, n)
    scores = per_class_scores(cm)
    present = cm.sum(1) > 0  # macro averages over classes that occur in the evaluated set
    macro = lambda xs: float(torch.tensor(xs, dtype=torch.float64)[present].mean())  # noqa: E731
    return {
        "samples": int(len(labels)),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "precision_macro": macro(scores["precision"]),
        "recall_macro": macro(scores["recall"]),
        "f1_macro": macro(scores["f1"]),
        "ece": expected_calibration_error(probs, labels),
        "per_class_accuracy": dict(zip(classes, scores["recall"])),
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }


# ---------------------------------------------------------------- attention


def attention_distribution(weights: torch.Tensor) -> torch.Tensor:
    """Make any variant's weights a distribution over keys, for comparable statistics.

    Softmax weights already are one. For variants with signed or unnormalised weights
    (cosine without softmax), the distribution is |w| / sum |w| over the keys: how the
    query's attention *magnitude* is spread, whatever its sign.
    """
    w = weights.float().abs()
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def normalized_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy of each query's attention distribution divided by log(N): 1 = uniform, 0 = one-hot.

    Returns (..., queries)."""
    p = attention_distribution(weights)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
    n = weights.shape[-1]
    return entropy / math.log(n) if n > 1 else torch.zeros_like(entropy)


def mean_attention_distance(weights: torch.Tensor, grid: int) -> torch.Tensor:
    """Expected distance in patches between a patch query and the patches it attends to.

    Class-token rows and columns are excluded; returns (..., ) averaged over queries."""
    p = attention_distribution(weights[..., 1:, 1:])
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
    dist = torch.cdist(coords.float(), coords.float()).to(p.device)  # (P, P)
    return (p * dist).sum(-1).mean(-1)


def cls_attention_mass(weights: torch.Tensor) -> torch.Tensor:
    """Fraction of each query's attention (as a distribution) on the class token, averaged over queries."""
    return attention_distribution(weights)[..., 0].mean(-1)
