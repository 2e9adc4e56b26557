"""Own data: what converting a folder of images costs, and proof that a folder trains as its .npz twin does.

    python bench/own_data.py [--images 10000] [--side 64] [--out /tmp/own-bench]

1. Conversion: ``--images`` generated PNGs (RGB, ``--side`` px, 10 classes in class folders) read as
   ``folder:`` at 28 px: the first load (decode, resize, cache) against the cached load, in images per second.
2. Same trials, same numbers: a 2-worker search (4 queued trials: the same four configurations in both) on a
   generated folder of 28 px PNGs with train/val/test folders, and on the same pixels written as a MedMNIST-layout
   .npz; each configuration's value and epochs side by side.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.train import imagecache, owndata  # noqa: E402
from tests.support.data import write_image_folder  # noqa: E402

QUEUED = [{"lr": lr, "dropout": d} for lr, d in ((1e-3, 0.0), (3e-3, 0.2), (1e-2, 0.4), (3e-4, 0.1))]


def conversion(folder: Path, n: int, side: int) -> None:
    per_class = n // 10
    t0 = time.perf_counter()
    write_image_folder(folder, classes=tuple(f"c{i}" for i in range(10)), per_class=per_class, side=side)
    print(f"wrote {10 * per_class:,} PNGs of {side} px in {time.perf_counter() - t0:.1f} s")
    for what in ("first load (convert + cache)", "cached load"):
        t0 = time.perf_counter()
        arrays, _ = imagecache.read_arrays(f"folder:{folder}", 28, owndata.SplitRule())
        seconds = time.perf_counter() - t0
        count = sum(len(a[0]) for a in arrays.values())
        print(f"{what:30s} {seconds:7.2f} s  {count / seconds:10,.0f} images/s")


def study(path: Path, name: str, dataset: str) -> None:
    path.write_text(yaml.safe_dump({
        "name": name, "dataset": dataset, "epochs": 3, "trials": len(QUEUED),
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        "fixed": {"architecture": "simple_cnn_v1", "batch_size": 32},
        "enqueue": QUEUED}))


def search(folder: Path, name: str, dataset: str) -> dict[tuple, tuple[float, ...]]:
    study(folder / "studies" / f"{name}.yaml", name, dataset)
    cmd = [str(Path(sys.executable).with_name("search")), "start", "--study", name, "--workers", "2",
           "--devices", "cpu"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: search start failed: {done.stderr.strip()}")
    print(f"{name}: 2 workers, {len(QUEUED)} trials in {time.perf_counter() - t0:.0f} s")
    loaded = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'search.db'}")
    # each configuration's whole validation curve, epoch by epoch: the same pixels give the same numbers
    return {(t.params["lr"], t.params["dropout"]): tuple(t.intermediate_values.values()) for t in loaded.trials}


def same_numbers(folder: Path) -> None:
    root = write_image_folder(folder / "cells", classes=("a", "b", "c"), per_class=40, side=28,
                              splits=("train", "val", "test"))
    arrays, _ = imagecache.read_arrays(f"folder:{root}", 28, owndata.SplitRule())
    np.savez_compressed(folder / "cells.npz", **{f"{s}_{k}": arrays[s][i] for s in arrays
                                                 for i, k in ((0, "images"), (1, "labels"))})
    (folder / "studies").mkdir()
    as_folder = search(folder, "cells-folder", f"folder:{root}")
    as_npz = search(folder, "cells-npz", f"npz:{folder / 'cells.npz'}")
    print(f"{'lr':>8s} {'dropout':>8s}  val_acc per epoch: folder | npz")
    for key in sorted(as_folder):
        curve = lambda c: " ".join(f"{v:.4f}" for v in c)  # noqa: E731
        print(f"{key[0]:8.0e} {key[1]:8.2f}  {curve(as_folder[key])} | {curve(as_npz.get(key, ()))}")
    same = as_folder.keys() == as_npz.keys() and all(as_folder[k] == as_npz[k] for k in as_folder)
    print(f"same trials, same curves bit for bit: {'yes' if same else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="own-bench-"))
    try:
        conversion(out / "conversion", args.images, args.side)
        same_numbers(out / "twins")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
