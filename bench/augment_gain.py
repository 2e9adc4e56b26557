"""What each augmentation policy costs and what it gains on held-out data.

    python bench/augment_gain.py [--part cost|gain|both] [--seeds 3] [--epochs 3] [--policies affine,trivial,...]

Cost: images per second of each policy at batch 128 on this machine (the augmentation alone, and the whole
training step of simple_cnn_v2 with it), against no augmentation, in one run.

Gain: simple_cnn_v2 with the default recipe (Adam, lr 2e-3, cosine, batch 128) against the same run with each
policy at 2 strengths, ``--seeds`` seeds each, test accuracy mean +- sd, on
- real MNIST (../shared/data/mnist: the 10,000 real test digits split 8,000 / 2,000 as bench/real_mnist.py does);
- generated PathMNIST-shaped data (9 classes, RGB 28 px) whose test split has another stain and contrast than train
  and val (the shift between clinical centres PathMNIST's test set has).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.train import engine  # noqa: E402
from search.train.augment import make_augment  # noqa: E402
from search.train.config import TrainConfig  # noqa: E402
from search.train.data import load  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
ARMS = {"mnist": ["affine@0.25", "affine@0.5", "rcrop@0.3", "erase@0.3", "trivial@0.5", "trivial@1.0"],
             "shifted": ["color", "color@0.4", "contrast@0.5", "gamma@0.5", "blur@0.5", "noise@0.5", "trivial@0.5",
                         "trivial@1.0", "dihedral+color@0.4"]}
MIXES = ["mixup:0.2", "cutmix:1.0"]


def cost(policies: list[str]) -> None:
    x = torch.rand(128, 3, 28, 28)
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        _shifted(Path(tmp))
        base = TrainConfig(dataset="pathmnist", data_dir=tmp, device="cpu", batch_size=128)
        data = load(base.dataset, base.data_dir, torch.device("cpu"))
        rows = []
        idx = torch.arange(128)
        plain = engine.Trainer(base, data, torch.device("cpu"))
        for policy in policies:
            augment = make_augment(policy, channels=3)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                augment(x, g)
                n += 1
            alone = 128 * n / (time.perf_counter() - t0)
            trainer = engine.Trainer(base.replace(augmentation=policy), data, torch.device("cpu"))
            # the policy's step and the plain step in turn, 5 rounds, medians: a load that drifts meets both alike
            with_it, without = [], []
            for _ in range(5):
                for t, out in ((trainer, with_it), (plain, without)):
                    t.step(idx)
                    t0 = time.perf_counter()
                    for _ in range(5):
                        t.step(idx)
                    out.append(5 * 128 / (time.perf_counter() - t0))
            rows.append((policy, alone, statistics.median(with_it), statistics.median(without)))
    print(f"{'policy':22s} {'augment alone':>16s} {'step with it':>16s} {'step without':>16s} {'ratio':>6s}")
    for policy, alone, step, none in rows:
        print(f"{policy:22s} {alone:12,.0f} im/s {step:12,.0f} im/s {none:12,.0f} im/s {step / none:6.2f}")


def _shifted(folder: Path, seed: int = 0) -> None:
    """pathmnist.npz-shaped data: 9 classes of textures (each its stripe frequency and stain); test stained and
    contrasted otherwise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28] / 28.0
    stains = rng.uniform(0.35, 0.9, size=(9, 3))
    arrays = {}
    for split, n in (("train", 4500), ("val", 900), ("test", 1800)):
        labels = rng.integers(0, 9, size=n)
        angle = rng.uniform(0, np.pi, size=n)[:, None, None]
        freq = (2 + labels)[:, None, None] * np.pi
        wave = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3, (n, 1, 1)))
        stain = stains[labels] * rng.uniform(0.85, 1.15, size=(n, 3))
        if split == "test":  # another centre: another stain, less contrast
            stain = stain * np.array([1.15, 0.8, 1.05])
            wave = 0.5 + 0.6 * (wave - 0.5)
        images = wave[..., None] * stain[:, None, None, :] * 255 + rng.normal(0, 18, (n, 28, 28, 3))
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(folder / "pathmnist.npz", **arrays)


def _mnist(folder: Path) -> None:
    from bench.real_mnist import split_real_mnist

    split_real_mnist(MNIST, folder)


def gain(which: str, seeds: int, epochs: int, policies: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (_mnist if which == "mnist" else _shifted)(Path(tmp))
        dataset = "mnist" if which == "mnist" else "pathmnist"
        base = TrainConfig(dataset=dataset, data_dir=tmp, device="cpu", epochs=epochs, batch_size=128, lr=2e-3,
                           schedule="cosine", dropout=0.25)
        arms = ["none", *(policies or ARMS[which]), *MIXES]
        results = {}
        for arm in arms:
            accs = []
            for seed in range(seeds):
                kind, _, alpha = arm.partition(":")
                cfg = (base.replace(mix=kind, mix_alpha=float(alpha)) if kind in ("mixup", "cutmix")
                       else base.replace(augmentation=arm)).replace(seed=seed)
                result = engine.fit(cfg)
                accs.append(result.trainer.evaluate(result.trainer.data.test)["acc"])
            results[arm] = accs
            mean = statistics.fmean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            delta = mean - statistics.fmean(results["none"])
            print(f"{which:8s} {arm:22s} test acc {mean:.4f} +- {sd:.4f}  ({delta:+.4f} vs none)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("cost", "gain", "both"), default="both")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", choices=("mnist", "shifted", "both"), default="both")
    ap.add_argument("--policies", help="comma-separated policies instead of the defaults")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core a run: the figures do not depend on what else the machine runs
    chosen = args.policies.split(",") if args.policies else None
    if args.part in ("cost", "both"):
        cost(chosen or ["flip", "dihedral", "crop", "color", "affine", "rcrop", "gamma", "contrast", "blur", "noise",
                        "erase", "trivial"])
    if args.part in ("gain", "both"):
        for which in (("mnist", "shifted") if args.data == "both" else (args.data,)):
            gain(which, args.seeds, args.epochs, chosen)


if __name__ == "__main__":
    main()
