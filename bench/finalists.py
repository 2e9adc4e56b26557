"""Do test-time augmentation and cross-validated selection pay? Figures on the real MNIST split and generated data.

    python bench/finalists.py [--n-train 1000] [--trials 4] [--epochs 3] [--seeds 3] [--skip-tta] [--skip-cv]

1. TTA. MNIST allows none (digits have an orientation: the rule in docs/finalists.md), so it is measured on
   generated PathMNIST-shaped data (28 x 28 RGB, 9 classes) whose classes are textures with no orientation, each
   image one at a random flip and quarter turn with noise: one simple_cnn_v1 trained without augmentation, its
   kept weights evaluated on the test split with tta none, flip and dihedral (engine.score, the one prediction
   path). Prints test ACC and AUC and the milliseconds per image of each.
2. Cross-validated selection. The real MNIST test set in ../shared/data/mnist (as bench/real_mnist.py): its first
   N images are the training set (split 9:1 into train and val by the MNIST reader: a 100-image validation
   split), its last 2,000 the test split. For each sampler seed, two studies draw the same TRIALS random trials
   (lr, dropout; simple_cnn_v1): one judged on the validation split, one with cv_folds: 5. Each winner is then
   trained as `search train` does (the official split) and tested. Prints each winner's test ACC and its
   validation-test gap, and the mean ± sd over the seeds, with the time of each search.
Everything runs in this process through the project's own code (studies, objective, engine). Times are this
machine's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_mnist import write_idx  # noqa: E402

from search import quiet  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.hpo import supervisor  # noqa: E402
from search.hpo.objective import Objective  # noqa: E402
from search.hpo.studies import load_study, make_pruner, make_sampler  # noqa: E402
from search.train import engine  # noqa: E402
from search.train.config import TrainConfig  # noqa: E402
from search.train.data import read_idx  # noqa: E402
from search.train.metrics import evaluate_scores  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
N_TEST = 2000


# --- 1. test-time augmentation ---------------------------------------------------------------------------------


def textures(folder: Path, counts: tuple[int, int, int] = (600, 300, 1500), seed: int = 0) -> Path:
    """pathmnist.npz in MedMNIST's layout: 9 classes, each a fixed random RGB texture of blobs; every image is its
    class's texture at a random element of D4 (no orientation, as tissue), with noise and brightness jitter."""
    rng = np.random.default_rng(seed)
    small = rng.random((9, 7, 7, 3))
    templates = np.kron(small, np.ones((4, 4, 1)))  # 28 x 28 x 3 blocks: textures with a clear orientation
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = rng.integers(0, 9, size=n)
        images = np.empty((n, 28, 28, 3))
        for i, c in enumerate(labels):
            t = templates[c][:, ::-1] if rng.random() < 0.5 else templates[c]
            images[i] = np.rot90(t, rng.integers(0, 4))
        images = images * rng.uniform(0.7, 1.3, (n, 1, 1, 1)) * 100 + 70 + rng.normal(0, 70, images.shape)
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]
    np.savez_compressed(folder / "pathmnist.npz", **arrays)
    return folder


def tta_effect(epochs: int = 3) -> None:
    try:
        TrainConfig(dataset="mnist", tta="flip")
    except SearchError as err:
        print(f"MNIST: {err.message}: no TTA applies")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(dataset="pathmnist", data_dir=str(textures(Path(tmp))), architecture="simple_cnn_v1",
                          epochs=epochs, batch_size=64, lr=3e-3, device="cpu", seed=0)
        t0 = time.perf_counter()
        r = engine.fit(cfg)
        print(f"generated PathMNIST-shaped data (600 / 300 / 1,500 images, textures at random orientations): "
              f"simple_cnn_v1 without augmentation, {epochs} epochs, kept epoch {r.best_epoch} "
              f"({time.perf_counter() - t0:.0f} s)")
        data, trainer = r.trainer.data, r.trainer
        base = None
        for tta in ("none", "flip", "dihedral"):
            t0 = time.perf_counter()
            _, p = engine.score(trainer.model, data.test.images, cfg.replace(tta=tta), data.info, data.mean,
                                data.std, trainer.autocast)
            ms = 1000 * (time.perf_counter() - t0) / len(data.test)
            m = evaluate_scores(data.test.labels, p, data.info.task)
            base = base or (m["acc"], ms)
            print(f"  tta {tta:8s}: test ACC {m['acc']:.4f} (Δ {m['acc'] - base[0]:+.4f})  AUC {m['auc']:.4f}  "
                  f"{ms:.3f} ms per image ({ms / base[1]:.1f}x)")


# --- 2. cross-validated selection -------------------------------------------------------------------------------

STUDY = """\
name: {name}
dataset: mnist
data_dir: {data}
epochs: {epochs}
trials: {trials}
sampler: {{name: random, seed: {seed}}}
pruner: {{name: none}}
{cv}space:
  lr: {{type: float, low: 1.0e-4, high: 3.0e-2, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.7}}
fixed:
  architecture: simple_cnn_v1
  batch_size: 64
"""


def subset(shared: Path, folder: Path, n_train: int) -> Path:
    images = read_idx(shared / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared / "t10k-labels-idx1-ubyte.gz")
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[-N_TEST:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[-N_TEST:])
    return folder


def winner(folder: Path, data: Path, name: str, seed: int, trials: int, epochs: int, cv: int | None):
    path = folder / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, data=data, epochs=epochs, trials=trials, seed=seed,
                                 cv=f"cv_folds: {cv}\n" if cv else ""))
    spec = load_study(str(path))
    url = f"sqlite:///{folder / 'bench.db'}"
    t0 = time.perf_counter()
    supervisor.ensure_study(spec, url)
    study = optuna.load_study(study_name=name, storage=url, sampler=make_sampler(spec), pruner=make_pruner(spec))
    study.optimize(Objective(spec, "cpu"), n_trials=trials)
    best = study.best_trial
    return best, time.perf_counter() - t0


def cv_effect(shared: Path, n_train: int, trials: int, epochs: int, seeds: range) -> None:
    rows: dict[str, list[tuple[float, float]]] = {"plain split": [], "cv_folds: 5": []}
    cost = {"plain split": 0.0, "cv_folds: 5": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mnist").mkdir()
        data = subset(shared, Path(tmp) / "mnist", n_train)
        print(f"real MNIST, {n_train} training images (train {n_train - n_train // 10} / val {n_train // 10}), "
              f"test {N_TEST}: {trials} random trials (lr, dropout) x {epochs} epochs per search")
        for seed in seeds:
            for label, cv in (("plain split", None), ("cv_folds: 5", 5)):
                best, seconds = winner(Path(tmp), data, f"s{seed}-{'cv' if cv else 'plain'}", seed, trials,
                                       epochs, cv)
                cost[label] += seconds
                cfg = TrainConfig(**{**best.user_attrs["config"], "device": "cpu"})
                m = engine.train(cfg, Path(tmp) / f"run-{seed}-{cv}", progress=False)
                rows[label].append((m["test_acc"], m["val_acc"] - m["test_acc"]))
                print(f"  seed {seed} {label:11s}: winner trial {best.number} (lr {best.params['lr']:.2g}, dropout "
                      f"{best.params['dropout']:.2f}, search value {best.value:.4f}) -> test ACC {m['test_acc']:.4f}"
                      f", val-test gap {m['val_acc'] - m['test_acc']:+.4f}  (search {seconds:.0f} s)")
    for label, values in rows.items():
        accs, gaps = [a for a, _ in values], [g for _, g in values]
        sd = lambda v: f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""  # noqa: E731
        print(f"{label:11s}: winner's test ACC {statistics.fmean(accs):.4f}{sd(accs)}, val-test gap "
              f"{statistics.fmean(gaps):+.4f}{sd(gaps)} over {len(values)} sampler seeds; search time "
              f"{cost[label] / len(values):.0f} s per search")
    print(f"cv_folds: 5 cost {cost['cv_folds: 5'] / max(cost['plain split'], 1e-9):.1f}x the plain search's time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="the first sampler seed (to run seeds apart)")
    ap.add_argument("--skip-tta", action="store_true")
    ap.add_argument("--skip-cv", action="store_true")
    args = ap.parse_args()
    quiet.libraries()
    torch.manual_seed(0)
    if not args.skip_tta:
        tta_effect()
    if not args.skip_cv:
        cv_effect(args.shared, args.n_train, args.trials, args.epochs,
                  range(args.first_seed, args.first_seed + args.seeds))


if __name__ == "__main__":
    main()
