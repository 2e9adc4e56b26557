"""Do ensembles pay? A single model vs a 3-seed ensemble vs a rerank-3 ensemble, on real MNIST images.

    python bench/ensembles.py [--n-train 2000] [--epochs 3] [--trials 6] [--seeds 6] [--out runs/bench-ensembles]

Data: the real MNIST test set in ../shared/data/mnist (as bench/real_mnist.py): its first N images are the training
set (split 9:1 into train and val by the MNIST reader), its last 2,000 the test split. A small training set, as a
small medical dataset is: where a single model's luck shows.

Everything goes through the real command line, as a user would run it:
1. `search start`: a search of TRIALS trials (simple_cnn_v1; lr, dropout, optimizer) on the split;
2. `search export` (the best trial) and `search train best.yaml --seeds S`: S single models;
3. `search export --rerank 3 --seeds 2 --ensemble 3`: the 3 best trials retrained with 2 seeds, and their
   ensemble folder.
Then, from the runs' test_predictions.csv (the probabilities each run kept; nothing is run again):
- single model: the S runs' test accuracy, mean ± sd;
- 3-seed ensemble: the winner's seeds in disjoint groups of 3 (S / 3 ensembles), mean ± sd;
- rerank-3 ensemble: one model of each of the 3 best trials (a seed each: 2 disjoint ensembles), and the folder's
  6-member ensemble (3 trials x 2 seeds).
Prints each figure, the gain over the single model, and the cost in trained models. Times are this machine's.
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from search.train.data import read_idx
from search.train.ensemble import from_runs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
N_TEST = 2000

STUDY = """\
name: bench-ensembles
dataset: mnist
metric: val_acc
epochs: {epochs}
trials: {trials}
sampler: {{name: tpe, seed: 0, n_startup_trials: 4}}
pruner: {{name: none}}
space:
  lr: {{type: float, low: 0.0005, high: 0.01, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.5}}
  optimizer: {{type: categorical, choices: [adam, adamw]}}
fixed:
  architecture: simple_cnn_v1
  batch_size: 64
"""


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def split(shared: Path, folder: Path, n_train: int) -> Path:
    images = read_idx(shared / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared / "t10k-labels-idx1-ubyte.gz")
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(len(images) - N_TEST, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
    return folder


def search(out: Path, *args: str) -> str:
    """`search ARGS` in ``out`` (the split as its data folder); its output, or the script stops with its error."""
    env = {**os.environ, "SEARCH_DATA_DIR": str(out / "data")}
    proc = subprocess.run([sys.executable, "-m", "search", *args], cwd=out, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"search {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def acc(runs: list[Path]) -> float:
    e = from_runs(runs, "multi-class")
    assert e is not None, runs
    return float(e["test_acc"])


def pm(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{sd} (n = {len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--n-train", type=int, default=2000, help="training images (train + val), from the real set")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=6, help="single-model seeds (a multiple of 3)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ensembles"))
    args = ap.parse_args()
    if not (args.shared / "t10k-images-idx3-ubyte.gz").exists():
        sys.exit(f"the real MNIST test set is not at {args.shared}")
    out = args.out.resolve()
    if out.exists():
        sys.exit(f"{out} exists; choose another --out")
    out.mkdir(parents=True)
    split(args.shared, out / "data", args.n_train)
    (out / "study.yaml").write_text(STUDY.format(epochs=args.epochs, trials=args.trials))
    t0 = time.perf_counter()
    search(out, "start", "--study", "study.yaml", "--workers", "1", "--storage", f"sqlite:///{out / 'study.db'}")
    t_search = time.perf_counter() - t0
    storage = ["--storage", f"sqlite:///{out / 'study.db'}"]
    search(out, "export", "--study", "bench-ensembles", *storage, "-o", "best.yaml")
    t0 = time.perf_counter()
    search(out, "train", "best.yaml", "--seeds", str(args.seeds), "--out", "single", "--device", "cpu")
    t_single = (time.perf_counter() - t0) / args.seeds
    t0 = time.perf_counter()
    search(out, "export", "--study", "bench-ensembles", *storage, "--rerank", "3", "--seeds", "2", "--ensemble", "3",
           "--rerank-dir", "rerank", "--ensemble-dir", "ensemble", "-o", "reranked.yaml")
    t_rerank = time.perf_counter() - t0

    singles = sorted((out / "single").glob("seed-*"), key=lambda p: int(p.name[5:]))
    single = [acc([r]) for r in singles]
    seed3 = [acc(singles[i:i + 3]) for i in range(0, len(singles) - 2, 3)]
    spec = yaml.safe_load((out / "ensemble" / "ensemble.yaml").read_text())
    trials = sorted({m["trial"] for m in spec["members"]})
    rerank3 = [acc([out / "rerank" / f"trial-{t}" / f"seed-{s}" for t in trials]) for s in (1, 2)]
    six = acc([out / m["run"] for m in spec["members"]])
    base = statistics.fmean(single)
    print(f"real MNIST: {args.n_train} training images (train + val), {N_TEST} test; simple_cnn_v1, {args.epochs} "
          f"epochs, a search of {args.trials} trials ({t_search:.0f} s)")
    print(f"  single model (the search's best config), test_acc over seeds:  {pm(single)}")
    print(f"  3-seed ensemble of it, disjoint seed groups:                   {pm(seed3)}  "
          f"gain {statistics.fmean(seed3) - base:+.4f}")
    print(f"  rerank-3 ensemble (a model of each of the 3 best trials):      {pm(rerank3)}  "
          f"gain {statistics.fmean(rerank3) - base:+.4f}")
    print(f"  rerank-3 x 2 seeds, the export's ensemble folder (6 models):   {six:.4f}  gain {six - base:+.4f}")
    print(f"cost: a model trains in {t_single:.1f} s here; an ensemble of M predicts M x slower and holds M x the "
          f"weights; the rerank's 6 runs and the ensemble's evaluation took {t_rerank:.0f} s")


if __name__ == "__main__":
    main()
