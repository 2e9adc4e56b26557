"""search/results/published.py: the MedMNIST v2 benchmark (Table 3) kept for `search report`.

Fast (no training, no data files): the table's shape, against medmnist's own list of 2D flags, and a spot check
of values read from the paper's Table 3, so that a shifted or mistyped row is caught.
"""
from __future__ import annotations

import math

import medmnist
import pytest
from medmnist.dataset import MedMNIST2D
from medmnist.info import INFO

from search.results import published

# The twelve 2D flags, found the way search/train/data.py's _register_medmnist finds them.
FLAGS_2D = [flag for flag, info in INFO.items()
            if isinstance(cls := getattr(medmnist, info["python_class"], None), type) and issubclass(cls, MedMNIST2D)]


def test_medmnist_has_the_twelve_2d_flags_of_the_paper():
    assert FLAGS_2D == ["pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
                        "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"]


def test_every_2d_flag_is_listed_and_nothing_else():
    assert list(published.MEDMNIST_V2) == FLAGS_2D  # the paper's (and medmnist's) order


def test_methods_are_known_in_the_papers_order_and_only_the_unchecked_ones_are_missing():
    for dataset, rows in published.MEDMNIST_V2.items():
        assert set(rows) <= set(published.METHODS), dataset
        assert list(rows) == [m for m in published.METHODS if m in rows], dataset  # table and figure order
        missing = tuple(m for m in published.METHODS if m not in rows)
        assert missing == published.NOT_CHECKED.get(dataset, ()), dataset
    assert published.NOT_CHECKED == {"bloodmnist": ("ResNet-18 (224)", "auto-sklearn")}


def test_every_value_is_an_auc_and_acc_in_0_1():
    for dataset, rows in published.MEDMNIST_V2.items():
        for method, pair in rows.items():
            assert isinstance(pair, tuple) and len(pair) == 2, (dataset, method)
            for value in pair:
                assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (dataset, method)
                assert round(value, 3) == value, (dataset, method)  # the paper prints three decimals


@pytest.mark.parametrize(("dataset", "method", "auc", "acc"), [
    # Table 3 of Yang et al. (2023), checked against two copies each (see the module docstring).
    ("pathmnist", "ResNet-18 (28)", 0.983, 0.907),
    ("pathmnist", "ResNet-18 (224)", 0.989, 0.909),
    ("chestmnist", "ResNet-18 (28)", 0.768, 0.947),
    ("chestmnist", "auto-sklearn", 0.649, 0.779),
    ("dermamnist", "Google AutoML Vision", 0.914, 0.768),
    ("octmnist", "ResNet-50 (224)", 0.958, 0.776),
    ("pneumoniamnist", "Google AutoML Vision", 0.991, 0.946),
    ("retinamnist", "ResNet-50 (28)", 0.726, 0.528),
    ("breastmnist", "ResNet-18 (28)", 0.901, 0.863),
    ("bloodmnist", "ResNet-50 (224)", 0.997, 0.950),
    ("tissuemnist", "AutoKeras", 0.941, 0.703),
    ("organamnist", "ResNet-18 (28)", 0.997, 0.935),
    ("organcmnist", "ResNet-50 (28)", 0.992, 0.905),
    ("organsmnist", "AutoKeras", 0.974, 0.813),
])
def test_spot_values_of_table_3(dataset, method, auc, acc):
    assert published.published(dataset)[method] == (auc, acc)  # AUC first, then ACC


def test_a_dataset_without_published_values_gets_none():
    assert published.published("digits") is None and published.published("mnist") is None
