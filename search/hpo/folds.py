"""Cross-validated selection (a study's ``cv_folds: K``): the K stratified folds of train+val a trial trains on.

On a small dataset the validation split is small (BreastMNIST: 78 images), and a search that picks its winner on
it picks the trial that fits those few images best: its validation value flatters it. With ``cv_folds`` each
trial instead trains K models, each validating on one fold of train+val and training on the rest
(engine.fit_folds), and is judged by the mean over the folds: K times the training, on every image.

The folds are made once, when the study is created (supervisor.ensure_study), from the study file's sampler
seed, and stored in the study's definition: every worker, whatever its own seed or its scikit-learn version,
trains on the same folds. Refused, in one line, where they make no sense:

- train+val above MAX_IMAGES images: its validation split already holds thousands of images, and K-fold would
  multiply the cost of a search that is already the longest;
- K < 2, or K above the image count of the smallest class (a fold would miss that class);
- multi-label tasks (no one class per image to stratify by).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from search.errors import SearchError

if TYPE_CHECKING:
    from search.hpo.studies import StudySpec

MAX_IMAGES = 10_000  # train+val; DermaMNIST (8,010) is the largest MedMNIST 2D flag that takes cv_folds


def stratified(labels: np.ndarray, k: int, seed: int, *, dataset: str) -> list[int]:
    """Each image's fold, 0..k-1: scikit-learn's StratifiedKFold (shuffled, ``seed``), so every fold holds each
    class in the proportion of the whole, within one image."""
    n = len(labels)
    if n > MAX_IMAGES:
        raise SearchError(f"cv_folds: {dataset} has {n:,} train+val images; cross-validated selection is for small "
                          f"datasets (at most {MAX_IMAGES:,}), whose validation split is too small to judge by: "
                          f"remove cv_folds")
    classes, counts = np.unique(labels, return_counts=True)
    if k > counts.min():
        smallest = classes[counts.argmin()]
        raise SearchError(f"cv_folds {k} is more than the {counts.min()} train+val images of {dataset}'s smallest "
                          f"class ({smallest}); valid: 2 to {counts.min()}")
    from sklearn.model_selection import StratifiedKFold  # imported here: 1 s of start-up no other study pays

    fold = np.empty(n, dtype=np.int64)
    for f, (_, held_out) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n),
                                                                                                   labels)):
        fold[held_out] = f
    return fold.tolist()


def make(spec: StudySpec) -> dict[str, Any]:
    """The folds of ``spec`` as its definition stores them: {"k", "seed", "assignment"} (train images first, then
    val, in the split's order)."""
    from search.train import data
    from search.train.data import get_info, prepare

    assert spec.cv_folds is not None
    if get_info(spec.dataset).multi_label:
        raise SearchError(f"cv_folds: {spec.dataset} is a multi-label task, which has no one class per image to "
                          f"stratify folds by; remove cv_folds")
    arrays = prepare(spec.dataset, spec.data_dir, spec.sizes()[0], data.OwnOptions.of(spec.base_config()))
    labels = np.concatenate([arrays["train"][1], arrays["val"][1]]).reshape(-1)
    return {"k": spec.cv_folds, "seed": spec.cv_seed,
            "assignment": stratified(labels, spec.cv_folds, spec.cv_seed, dataset=spec.dataset)}
