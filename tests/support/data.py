"""Data files in the true on-disk formats: MedMNIST .npz and MNIST IDX, small and learnable."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def write_medmnist_npz(path: Path, *, channels: int, classes: int, counts=(120, 40, 40), multi_label: bool = False,
                       seed: int = 0, size: int = 28) -> Path:
    """A MedMNIST-layout file: keys {train,val,test}_{images,labels}, uint8 N x S x S (x 3), labels N x 1.

    ``size`` is the image side S (MedMNIST+ writes <flag>_64.npz etc. in the same layout).

    A model can learn the labels: each class has its own mean brightness; multi-label, each label that is on
    brightens its own band of rows.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        if multi_label:
            labels = rng.integers(0, 2, size=(n, classes)).astype(np.uint8)
            band = np.arange(size) * classes // size  # the label each row shows
            base = labels[:, band].astype(np.float64)[:, :, None] * 120 * np.ones((1, 1, size))  # n x rows x cols
            base = base if channels == 1 else base[..., None]
        else:
            labels = rng.integers(0, classes, size=(n, 1)).astype(np.uint8)
            base = (labels.astype(np.float64) * (200 / max(1, classes - 1))).reshape((n,) + (1,) * (len(shape) - 1))
        noise = rng.normal(0, 20, size=shape)
        images = np.clip(base + 30 + noise, 0, 255).astype(np.uint8)
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


def write_image_folder(root: Path, *, classes=("a", "b", "c"), per_class: int = 12, side: int = 36,
                       mode: str = "RGB", splits: tuple[str, ...] = (), seed: int = 0, suffix: str = ".png") -> Path:
    """A lab's own images: root/<class>/<i>.png (or root/<split>/<class>/... for each of ``splits``), learnable (each
    class its own brightness), ``side`` x ``side`` pixels in PIL ``mode``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                level = 40 + c * 160 / max(1, len(classes) - 1)
                shape = (side, side) if mode in ("L", "I;16") else (side, side, 3)
                pixels = np.clip(rng.normal(level, 15, shape), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if mode == "I;16":
                    image = Image.fromarray(pixels.astype(np.uint16) * 257)
                image.save(folder / f"{i}{suffix}")
    return root
