"""Real-data check: the real MNIST test set split 8,000 / 2,000 into IDX files, then `search train` on it.

    python bench/real_mnist.py [--shared ../shared/data/mnist] [--epochs 15] [--out runs/real-mnist]

Writes the split to a temporary folder in the IDX format (as torchvision keeps MNIST), trains simple_cnn_v2 with
the engine (the same code as `search train`) and prints test ACC/AUC. The target is >= 98.5% test accuracy.
tests/test_real_mnist.py runs it as a slow test.
"""
from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import numpy as np

from search.train import engine
from search.train.config import TrainConfig
from search.train.data import read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
N_TRAIN = 8000


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def split_real_mnist(shared: Path, folder: Path) -> Path:
    images = read_idx(shared / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared / "t10k-labels-idx1-ubyte.gz")
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:N_TRAIN])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:N_TRAIN])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[N_TRAIN:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[N_TRAIN:])
    return folder


def config(data_dir: Path, epochs: int) -> TrainConfig:
    return TrainConfig(dataset="mnist", data_dir=str(data_dir), architecture="simple_cnn_v2", epochs=epochs,
                       batch_size=128, lr=2e-3, schedule="cosine", warmup_epochs=1, augmentation="crop",
                       device="auto", seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("runs/real-mnist"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(split_real_mnist(args.shared, Path(tmp)), args.epochs)
        m = engine.train(cfg, args.out)
    print(f"real MNIST 8000/2000: test_acc {m['test_acc']:.4f} test_auc {m['test_auc']:.4f} "
          f"(best epoch {m['best_epoch']}/{m['epochs']}, {m['seconds']:.0f} s on {m['device']}) -> {args.out}")


if __name__ == "__main__":
    main()
