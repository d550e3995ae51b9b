"""Scores for labelled predictions: AUROC, accuracy, Pearson r, MSE, and bootstrap standard errors.

AUROC is the Mann-Whitney statistic (ties count half), computed from average ranks; multi-class
AUROC is the mean of the one-vs-rest AUROCs over classes present. ``higher_is_better`` tells early
stopping which way a metric points.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

CLASSIFY_METRICS = ("auroc", "accuracy")
REGRESS_METRICS = ("pearson", "mse")


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive); NaN if one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(np.asarray(scores, np.float64))
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multiclass_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC for (N, C) class probabilities: binary uses class 1; more classes: mean one-vs-rest."""
    if probs.shape[1] == 2:
        return auroc(labels == 1, probs[:, 1])
    values = [auroc(labels == c, probs[:, c]) for c in range(probs.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean(values)) if values else float("nan")


def pearson(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    if len(y) < 2 or y.std() == 0 or pred.std() == 0:
        return float("nan")
    return float(np.corrcoef(y, pred)[0, 1])


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auroc": multiclass_auroc(labels, probs), "accuracy": float((probs.argmax(1) == labels).mean())}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"pearson": pearson(y, pred), "mse": float(np.mean((np.asarray(y) - np.asarray(pred)) ** 2))}


def higher_is_better(metric: str) -> bool:
    return metric != "mse"


def bootstrap_se(labels: np.ndarray, scores: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], float] = auroc,
                 n: int = 200, seed: int = 0) -> float:
    """Standard deviation of ``fn`` over ``n`` resamples (with replacement) of the rows."""
    rng = np.random.default_rng(seed)
    labels, scores = np.asarray(labels), np.asarray(scores)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        v = fn(labels[idx], scores[idx])
        if np.isfinite(v):
            values.append(v)
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def default_metric(task: str, n_classes: Optional[int]) -> str:
    """Early-stopping metric: AUROC for two classes, accuracy for more, Pearson r for regression."""
    if task == "regress":
        return "pearson"
    return "auroc" if n_classes == 2 else "accuracy"
