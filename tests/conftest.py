"""Shared fixtures: small data files written in the true on-disk formats (MedMNIST .npz, MNIST IDX)."""
from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_medmnist_npz(path: Path, *, channels: int, classes: int, counts=(120, 40, 40), multi_label: bool = False,
                       seed: int = 0, size: int = 28) -> Path:
    """A MedMNIST-layout file: keys {train,val,test}_{images,labels}, uint8 N x S x S (x 3), labels N x 1.

    ``size`` is the image side (MedMNIST+ writes <flag>_64.npz etc. in the same layout).

    Each class has its own mean brightness pattern, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        if multi_label:
            labels = rng.integers(0, 2, size=(n, classes)).astype(np.uint8)
            base = labels[:, :1].astype(np.float64) * 120
        else:
            labels = rng.integers(0, classes, size=(n, 1)).astype(np.uint8)
            base = labels.astype(np.float64) * (200 / max(1, classes - 1))
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        noise = rng.normal(0, 20, size=shape)
        images = np.clip(base.reshape((n,) + (1,) * (len(shape) - 1)) + 30 + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)
    return path


def write_mnist(folder: Path, *, n_train: int = 300, n_test: int = 100, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.clip(labels[:, None, None] * 20 + rng.normal(0, 10, (n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture
def pathmnist_dir(tmp_path: Path) -> Path:
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    return tmp_path


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.medmnist: the default data root is an empty temporary folder."""
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path_factory.mktemp("default-data-root")))


def search_cmd() -> list[str]:
    """The installed console script, run as a real process."""
    exe = Path(sys.executable).with_name("search")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "search"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(extra)
    return env
