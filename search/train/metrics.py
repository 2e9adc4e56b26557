"""MedMNIST's ACC and AUC, computed in torch on the scores' device.

The definitions mirror ``medmnist.evaluator.getACC`` / ``getAUC`` (medmnist 3.0) for each task type:

- ``multi-class`` and ``ordinal-regression``: ACC is the accuracy of ``argmax(y_score)`` (first index on ties,
  as numpy); AUC is the unweighted mean over the K columns of the one-vs-rest ROC AUC.
- ``binary-class``: both use the positive-class score ``y_score[:, -1]``; ACC predicts positive when that score
  is ``> threshold``.
- ``multi-label, binary-class``: ACC is the mean over labels of the per-label accuracy of ``y_score > threshold``
  (equal to the mean over all N*K entries); AUC is the mean of the per-label ROC AUCs.

AUC is the Mann-Whitney rank statistic with average ranks for ties, vectorised over columns, so it equals
``sklearn.metrics.roc_auc_score`` (ties included) up to the last rounding. A column whose targets are all
positive or all negative has no AUC: scikit-learn (>= 1.6) then returns NaN with a warning and medmnist sums it
into its mean, so the AUC here is NaN too rather than a number that no other MedMNIST report could match.
Callers that optimise AUC must treat NaN as "undefined" (e.g. a validation split that lacks a class).

``y_score`` is (N, K) probabilities (softmax, or sigmoid for multi-label); ``y_true`` is (N,) (or (N, 1)) class
indices for single-label tasks and (N, K) 0/1 for multi-label. Everything stays on the device until one
``.item()`` / ``.tolist()`` at the end.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from search.train.data import MULTI_LABEL, is_multi_label

TASKS: tuple[str, ...] = ("multi-class", "binary-class", MULTI_LABEL, "ordinal-regression")


def _check(y_true: Tensor, y_score: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """Validated (y_true, y_score): y_true (N,) for single-label tasks, (N, K) for multi-label."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task == "binary-class" and y_score.ndim == 1:
        y_score = y_score.unsqueeze(1)  # medmnist also accepts a bare positive-class score
    if y_score.ndim != 2:
        raise ValueError(f"y_score must be (N, K), got {tuple(y_score.shape)}")
    n, k = y_score.shape
    if is_multi_label(task):
        if tuple(y_true.shape) != (n, k):
            raise ValueError(f"multi-label y_true must be {(n, k)}, got {tuple(y_true.shape)}")
    else:
        if y_true.ndim == 2 and y_true.shape[1] == 1:
            y_true = y_true.squeeze(1)  # MedMNIST stores labels as (N, 1)
        if tuple(y_true.shape) != (n,):
            raise ValueError(f"{task} y_true must be ({n},) class indices, got {tuple(y_true.shape)}")
    return y_true.to(y_score.device), y_score


def column_auc(targets: Tensor, scores: Tensor) -> Tensor:
    """ROC AUC of each column: targets (N, K) bool, scores (N, K) -> (K,) float64 (NaN where undefined).

    AUC = U / (n_pos * n_neg) with U = (sum of the positives' ranks) - n_pos (n_pos + 1) / 2, ranks averaged over
    ties. The average rank of a value is (#smaller + #smaller-or-equal + 1) / 2, both counts found by binary
    search in the sorted column; kept doubled so that everything but the final division is exact integers.
    """
    scores = scores.detach().t().contiguous()  # (K, N): searchsorted works along the last dimension
    targets = targets.t().to(torch.int64)
    ordered = scores.sort(dim=1).values
    smaller = torch.searchsorted(ordered, scores, right=False)
    smaller_or_equal = torch.searchsorted(ordered, scores, right=True)
    twice_rank = smaller + smaller_or_equal + 1
    n_pos = targets.sum(dim=1)
    n_neg = targets.shape[1] - n_pos
    twice_u = (twice_rank * targets).sum(dim=1) - n_pos * (n_pos + 1)
    return twice_u.double() / (2 * n_pos * n_neg).double()  # 0 / 0 = NaN for a one-class column


def _auc(y_true: Tensor, y_score: Tensor, task: str) -> Tensor:
    y_true, y_score = _check(y_true, y_score, task)
    if is_multi_label(task):
        targets, scores = y_true != 0, y_score
    elif task == "binary-class":
        targets, scores = (y_true == 1).unsqueeze(1), y_score[:, -1:]
    else:
        classes = torch.arange(y_score.shape[1], device=y_score.device)
        targets, scores = y_true.unsqueeze(1) == classes, y_score
    return column_auc(targets, scores).mean()


def predict(y_score: Tensor, task: str, threshold: float = 0.5) -> Tensor:
    """The predictions MedMNIST's ACC scores: (N, K) bool ``y_score > threshold`` per label for multi-label tasks;
    otherwise (N,) class indices: the positive-class score ``> threshold`` for binary-class, else the argmax."""
    if is_multi_label(task):
        return y_score > threshold
    if task == "binary-class":
        return (y_score[:, -1] > threshold).to(torch.int64)
    return y_score.argmax(dim=1)


def _acc(y_true: Tensor, y_score: Tensor, task: str, threshold: float = 0.5) -> Tensor:
    y_true, y_score = _check(y_true, y_score, task)
    truth = y_true != 0 if is_multi_label(task) else y_true
    return (predict(y_score, task, threshold) == truth).double().mean()


def auc(y_true: Tensor, y_score: Tensor, task: str) -> float:
    """MedMNIST's AUC (``getAUC``) for ``task``; NaN when some class has no positives or no negatives."""
    return _auc(y_true, y_score, task).item()


def acc(y_true: Tensor, y_score: Tensor, task: str, threshold: float = 0.5) -> float:
    """MedMNIST's ACC (``getACC``) for ``task``."""
    return _acc(y_true, y_score, task, threshold).item()


def evaluate_scores(y_true: Tensor, y_score: Tensor, task: str) -> dict[str, float]:
    """``{"acc": ..., "auc": ...}`` with a single device synchronisation."""
    acc_value, auc_value = torch.stack([_acc(y_true, y_score, task), _auc(y_true, y_score, task)]).tolist()
    return {"acc": acc_value, "auc": auc_value}


def class_results(labels: torch.Tensor, scores: torch.Tensor, task: str) -> dict[str, Any]:
    """Confusion matrix and per-class accuracy, with the predictions MedMNIST's ACC uses for ``task``.

    Single-label tasks predict the argmax (binary-class: positive score > 0.5, as medmnist's getACC); the matrix
    has true classes as rows and predicted ones as columns, and a class's accuracy is its row's share on the
    diagonal (its recall; None when the split has no sample of it). Multi-label tasks have no single confusion
    matrix: per-class accuracy is each label's accuracy at 0.5, and the counts are its positives.
    """
    k = scores.shape[1]
    pred = predict(scores, task)
    if is_multi_label(task):
        positive = labels != 0
        return {"confusion": None, "per_class_acc": (pred == positive).double().mean(dim=0).tolist(),
                "class_counts": positive.sum(dim=0).tolist()}
    truth = labels.view(-1)
    confusion = torch.bincount(truth * k + pred, minlength=k * k).view(k, k).tolist()
    counts = [sum(row) for row in confusion]
    return {"confusion": confusion, "class_counts": counts,
            "per_class_acc": [row[i] / n if n else None for i, (row, n) in enumerate(zip(confusion, counts))],
            "labels": truth.tolist(), "predictions": pred.tolist()}
