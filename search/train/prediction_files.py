"""Per-image prediction files, one format: a run's test_predictions.csv and `search predict`'s output.

A run's ``test_predictions.csv`` has one row per test image, in the split's order:

- single-label tasks: ``label`` (the true class index), ``prediction`` (the class MedMNIST's ACC counts: the
  argmax; for binary-class, the positive class when its probability is > 0.5), then ``p_<class>`` for each class
  (the softmax probability; a row sums to 1). `search report`'s paired test (McNemar) reads label and prediction;
  ensembles (search/train/ensemble.py) average the probabilities.
- multi-label tasks: ``y_<label>`` (0 or 1: the truth of each label) and ``p_<label>`` (its sigmoid probability;
  the labels are independent, so a row does not sum to 1). No label and prediction columns: an image has no single
  class, so there is no paired test; an ensemble averages the probabilities as for single-label tasks.

Class names are the dataset's (MedMNIST's INFO labels; the class numbers for MNIST and digits), written with the
csv module (a name with a comma is quoted). Files written before probabilities were kept (``label,prediction``
only) still read, without probabilities. `search predict`'s file adds ``image`` (a file name or an index) and
``predicted_label`` (the predicted class's name) and has a ``label`` column only where the input had labels.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.errors import SearchError
from search.train.data import class_names, is_multi_label

DIGITS = 8  # significant digits of a probability: beyond float32's, so a file gives back what the run computed


def prob_columns(names: list[str]) -> list[str]:
    return [f"p_{n}" for n in names]


def table(names: list[str], probabilities: np.ndarray, *, task: str, labels: np.ndarray | None = None,
          predictions: np.ndarray | None = None, first: dict[str, list[str]] | None = None,
          predicted_names: bool = False) -> str:
    """The CSV text: ``first`` columns (name -> values), then label / prediction (single-label) or y_ columns
    (multi-label), then the probabilities."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    multi = is_multi_label(task)
    head = list(first or {})
    if multi:
        if labels is not None:
            head += [f"y_{n}" for n in names]
        if predicted_names:
            head += ["prediction", "predicted_label"]
    else:
        head += (["label"] if labels is not None else []) + ["prediction"]
        head += ["predicted_label"] if predicted_names else []
    writer.writerow(head + prob_columns(names))
    for i, row in enumerate(probabilities):
        cells = [values[i] for values in (first or {}).values()]
        pred = predictions[i] if predictions is not None else None
        if multi:
            if labels is not None:
                cells += [str(int(v)) for v in labels[i]]
            if predicted_names:
                on = [k for k, v in enumerate(pred) if v]
                cells += [";".join(map(str, on)), ";".join(names[k] for k in on)]
        else:
            cells += ([str(int(labels[i]))] if labels is not None else []) + [str(int(pred))]
            cells += [names[int(pred)]] if predicted_names else []
        writer.writerow(cells + [f"{p:.{DIGITS}g}" for p in row])
    return out.getvalue()


def test_text(dataset: str, task: str, labels: np.ndarray, probabilities: np.ndarray,
              predictions: np.ndarray) -> str:
    """The text of a run's test_predictions.csv (the caller writes it atomically)."""
    names = class_names(dataset, probabilities.shape[1])
    return table(names, probabilities, task=task, labels=labels, predictions=None if is_multi_label(task)
                 else predictions)


@dataclass(frozen=True)
class TestPredictions:
    labels: np.ndarray  # (N,) class indices; (N, K) 0/1 for multi-label tasks
    predictions: np.ndarray | None  # (N,) class indices; None for multi-label tasks
    probabilities: np.ndarray | None  # (N, K); None in a file written before probabilities were kept
    classes: list[str]  # the names of the p_ columns


def read_test(path: Path) -> TestPredictions:
    """A run's test_predictions.csv, in either form (with or without probabilities); SearchError if unreadable."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        head, body = rows[0], [r for r in rows[1:] if r]
        p_cols = [i for i, c in enumerate(head) if c.startswith("p_")]
        y_cols = [i for i, c in enumerate(head) if c.startswith("y_")]
        probs = np.array([[float(r[i]) for i in p_cols] for r in body], dtype=np.float64) if p_cols else None
        if probs is not None:
            probs = probs.reshape(len(body), len(p_cols))
        if y_cols:
            labels = np.array([[int(r[i]) for i in y_cols] for r in body], dtype=np.int64).reshape(len(body), -1)
            preds = None
        else:
            li, pi = head.index("label"), head.index("prediction")
            labels = np.array([int(r[li]) for r in body], dtype=np.int64)
            preds = np.array([int(r[pi]) for r in body], dtype=np.int64)
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as err:
        raise SearchError(f"{path} cannot be read: {err or type(err).__name__}") from None
    return TestPredictions(labels, preds, probs, [head[i][2:] for i in p_cols])
