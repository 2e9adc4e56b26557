"""ACC and AUC against scikit-learn and medmnist's own evaluator, for every MedMNIST task type."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, roc_auc_score

from search.train.metrics import TASKS, acc, auc, column_auc, evaluate_scores

TOL = 1e-12
# The CUDA case carries the marker `gpu` (bench/gpu_proof.py runs `pytest -m gpu`) and skips where no GPU is visible.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU is visible (torch.cuda.is_available() is False)")])]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scores(n: int, k: int, *, ties: bool, seed: int) -> torch.Tensor:
    """(N, K) scores in [0, 1]; with ``ties`` on five levels, so every column has many exact ties."""
    g = generator(seed)
    if ties:
        return torch.randint(0, 5, (n, k), generator=g).double() / 4
    return torch.rand(n, k, generator=g, dtype=torch.float64)


def imbalanced_labels(n: int, k: int, seed: int) -> torch.Tensor:
    """(N,) class indices with frequencies roughly 1 : 2 : 4 : ... (every class present)."""
    weights = 2.0 ** torch.arange(k, dtype=torch.float64)
    labels = torch.multinomial(weights, n, replacement=True, generator=generator(seed))
    labels[:k] = torch.arange(k)
    return labels


def case(task: str, *, n: int, k: int, ties: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "multi-label, binary-class":
        y_true = (torch.rand(n, k, generator=generator(seed + 1)) < torch.linspace(0.05, 0.6, k)).long()
        y_true[0], y_true[1] = 0, 1  # every label has both values
        return y_true, scores(n, k, ties=ties, seed=seed)
    if task == "binary-class":
        k = 2
    y_true = imbalanced_labels(n, k, seed + 1)
    y_score = scores(n, k, ties=ties, seed=seed)
    if not ties:  # softmax probabilities that lean towards the true class, so AUCs are not all near 0.5
        y_score = torch.softmax(torch.log(y_score) + 1.5 * torch.nn.functional.one_hot(y_true, k), dim=1)
    return y_true, y_score


def sklearn_reference(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[float, float]:
    """(acc, auc) straight from scikit-learn, independent of medmnist's code."""
    if task == "multi-label, binary-class":
        pred = y_score > 0.5
        accs = [accuracy_score(y_true[:, i], pred[:, i]) for i in range(y_true.shape[1])]
        aucs = [roc_auc_score(y_true[:, i], y_score[:, i]) for i in range(y_true.shape[1])]
        return float(np.mean(accs)), float(np.mean(aucs))
    if task == "binary-class":
        return accuracy_score(y_true, y_score[:, 1] > 0.5), roc_auc_score(y_true, y_score[:, 1])
    aucs = [roc_auc_score(y_true == i, y_score[:, i]) for i in range(y_score.shape[1])]
    return accuracy_score(y_true, y_score.argmax(axis=1)), float(np.mean(aucs))


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_and_medmnist(task: str, ties: bool, seed: int) -> None:
    y_true, y_score = case(task, n=997, k=5, ties=ties, seed=seed)
    ours_acc, ours_auc = acc(y_true, y_score, task), auc(y_true, y_score, task)
    ref_acc, ref_auc = sklearn_reference(y_true.numpy(), y_score.numpy(), task)
    # medmnist's labels are (N, 1) for single-label tasks; its evaluator squeezes them.
    med_true = y_true.numpy() if task == "multi-label, binary-class" else y_true.numpy()[:, None]
    med_acc, med_auc = getACC(med_true, y_score.numpy(), task), getAUC(med_true, y_score.numpy(), task)
    assert ours_auc == pytest.approx(ref_auc, abs=TOL) and ours_auc == pytest.approx(med_auc, abs=TOL)
    assert ours_acc == pytest.approx(ref_acc, abs=TOL) and ours_acc == pytest.approx(med_acc, abs=TOL)
    assert 0.0 < ours_auc < 1.0 and 0.0 < ours_acc < 1.0
    assert evaluate_scores(y_true, y_score, task) == {"acc": ours_acc, "auc": ours_auc}
    # Labels as MedMNIST stores them, (N, 1), give the same numbers.
    assert auc(torch.from_numpy(med_true), y_score, task) == ours_auc


def test_sklearn_multiclass_ovr() -> None:
    y_true, y_score = case("multi-class", n=500, k=9, ties=False, seed=3)
    expected = roc_auc_score(y_true.numpy(), y_score.numpy(), multi_class="ovr", average="macro")
    assert auc(y_true, y_score, "multi-class") == pytest.approx(expected, abs=TOL)


def test_column_auc_heavy_ties_and_imbalance() -> None:
    # 3 positives in 4000, two score levels: almost everything ties.
    g = generator(7)
    targets = torch.zeros(4000, 3, dtype=torch.bool)
    targets[torch.randperm(4000, generator=g)[:3], 0] = True
    targets[:, 1] = torch.rand(4000, generator=g) < 0.5
    targets[:, 2] = torch.rand(4000, generator=g) < 0.99
    values = torch.randint(0, 2, (4000, 3), generator=g).double()
    expected = [roc_auc_score(targets[:, i].numpy(), values[:, i].numpy()) for i in range(3)]
    assert column_auc(targets, values).tolist() == pytest.approx(expected, abs=TOL)
    constant = torch.full((4000, 3), 0.3, dtype=torch.float64)
    assert column_auc(targets, constant).tolist() == [0.5, 0.5, 0.5]


def test_float32_scores() -> None:
    # Ties are decided on the float32 values, as scikit-learn does on the same array.
    y_true, y_score = case("multi-class", n=800, k=4, ties=False, seed=4)
    y_score = y_score.float()
    expected = getAUC(y_true.numpy(), y_score.numpy(), "multi-class")
    assert auc(y_true, y_score, "multi-class") == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", TASKS)
def test_perfect_predictions(task: str, device: str) -> None:
    y_true, _ = case(task, n=300, k=4, ties=False, seed=5)
    if task == "multi-label, binary-class":
        y_score = y_true.double() * 0.8 + 0.1
    else:
        y_score = torch.nn.functional.one_hot(y_true).double() * 0.8 + 0.2 / y_true.max().add(1)
    assert evaluate_scores(y_true.to(device), y_score.to(device), task) == {"acc": 1.0, "auc": 1.0}


@pytest.mark.parametrize("device", DEVICES)
def test_reversed_binary_scores(device: str) -> None:
    y_true = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0], device=device)
    p = torch.where(y_true == 1, 0.2, 0.9).double()
    y_score = torch.stack([1 - p, p], dim=1)
    assert evaluate_scores(y_true, y_score, "binary-class") == {"acc": 0.0, "auc": 0.0}
    # A bare positive-class score is accepted too, as by medmnist.
    assert auc(y_true, p, "binary-class") == 0.0


def test_binary_threshold() -> None:
    y_true = torch.tensor([0, 1, 1, 0])
    p = torch.tensor([0.2, 0.6, 0.4, 0.5], dtype=torch.float64)
    y_score = torch.stack([1 - p, p], dim=1)
    # 0.5 itself is not above the threshold: predictions [0, 1, 0, 0].
    assert acc(y_true, y_score, "binary-class") == getACC(y_true.numpy(), y_score.numpy(), "binary-class") == 0.75
    # Everything is above 0.1: predictions [1, 1, 1, 1].
    low = getACC(y_true.numpy(), y_score.numpy(), "binary-class", threshold=0.1)
    assert acc(y_true, y_score, "binary-class", threshold=0.1) == low == 0.5


def test_class_without_positives_gives_nan_like_medmnist() -> None:
    # Class 3 never occurs: scikit-learn returns NaN for its AUC and medmnist averages that NaN in.
    y_true = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y_score = torch.softmax(torch.randn(8, 4, generator=generator(8), dtype=torch.float64), dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        expected = getAUC(y_true.numpy(), y_score.numpy(), "multi-class")
    assert np.isnan(expected)
    assert np.isnan(auc(y_true, y_score, "multi-class"))
    ovr = column_auc(y_true.unsqueeze(1) == torch.arange(4), y_score)
    assert torch.isnan(ovr[3]) and not torch.isnan(ovr[:3]).any()


def test_bad_inputs() -> None:
    y_true, y_score = torch.tensor([0, 1]), torch.rand(2, 3)
    with pytest.raises(ValueError, match="unknown task"):
        auc(y_true, y_score, "regression")
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        acc(y_true, y_score, "multi-label, binary-class")
    with pytest.raises(ValueError, match="class indices"):
        auc(torch.tensor([0, 1, 2]), y_score, "multi-class")
