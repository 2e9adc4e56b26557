"""`search init DATA`: look at a lab's own images and write a study file for them.

DATA is a folder of class folders, a CSV of path,label[,split] rows or a MedMNIST-layout .npz (search/train/
owndata.py). The file it writes (./studies/<name>.yaml, where `search start --study <name>` finds it) names the
source, its classes and counts, its channels and the sizes that fit it, and a search space chosen by the
training set's size: small sets get small models, small batches and more epochs. It converts the images once at the
chosen size, so the first trial starts from the cache.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from search import env
from search.errors import SearchError
from search.hpo.studies import _NAME, load_study


@dataclass(frozen=True)
class Written:
    path: Path
    name: str
    summary: str  # one line: images, classes, channels, splits


def spec_of(data: str) -> str:
    """DATA as a dataset string: folder:, csv: or npz: from what the path is (an explicit prefix is kept)."""
    from search.train import owndata

    if owndata.is_own(data):
        return data
    path = env.user_path(data, what="DATA")
    if path.is_dir():
        return f"folder:{path.resolve()}"
    if path.suffix.lower() in (".csv", ".npz") and path.is_file():
        return f"{path.suffix.lower()[1:]}:{path.resolve()}"
    if not path.exists():
        raise SearchError(f"DATA {data!r}: no such folder or file; give a folder of class folders, a .csv of "
                          f"path,label[,split] rows or a MedMNIST-layout .npz")
    raise SearchError(f"DATA {data!r}: not a folder, .csv or .npz; give a folder of class folders, a .csv of "
                      f"path,label[,split] rows or a MedMNIST-layout .npz")


def _default_name(spec: str) -> str:
    path = Path(spec.partition(":")[2])
    stem = path.name if spec.startswith("folder:") else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "own-data"


def _space(n_train: int, size: int) -> tuple[dict, int, int]:
    """(space, epochs, trials) for a training set of ``n_train`` images at ``size`` px: smaller sets, smaller
    models (they overfit less), smaller batches (more steps an epoch) and more epochs."""
    if n_train < 2_000:
        archs, batches, epochs = ["simple_cnn_v1", "simple_cnn_v2", "resnet18"], [16, 32, 64], 20
    elif n_train < 20_000:
        archs, batches, epochs = ["simple_cnn_v2", "alexnet", "resnet18"], [32, 64, 128], 15
    else:
        archs, batches, epochs = ["simple_cnn_v2", "resnet18", "resnet50"], [64, 128, 256], 10
    if size > 28:
        archs = [a for a in archs if a != "simple_cnn_v1"] + (["xception"] if n_train >= 20_000 else [])
    batches = [b for b in batches if b <= max(2, n_train // 4)] or [max(2, n_train // 4)]
    space = {
        "architecture": {"type": "categorical", "choices": archs},
        "batch_size": {"type": "categorical", "choices": batches},
        "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "augmentation": {"type": "categorical", "choices": ["none", "crop"]},
    }
    return space, epochs, 40 if n_train >= 2_000 else 30


def write(data: str, *, name: str | None = None, size: int | None = None, out: Path | None = None,
          force: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
          skip_bad: bool = False) -> Written:
    """Scan DATA, convert its images once, and write its study file; returns where and a one-line summary."""
    from models import SIZES
    from search.train import data as datasets
    from search.train import owndata

    spec = spec_of(data)
    name = name or _default_name(spec)
    if not _NAME.fullmatch(name):
        raise SearchError(f"--name {name!r} may contain only letters, digits, '-', '_' and '.'")
    path = out if out is not None else Path.cwd() / "studies" / f"{name}.yaml"
    if path.exists() and not force:
        raise SearchError(f"{path} exists; pass --force to replace it, or --name to write another study")
    if size is not None and size not in SIZES:
        raise SearchError(f"--size {size} is not offered; valid: {', '.join(map(str, SIZES))}")
    info = datasets.get_info(spec)
    listing = owndata.scan(spec)
    native = owndata.native_side(listing)
    fitting = [s for s in SIZES if s <= max(native, 28)]
    size = size or (64 if 64 in fitting and native >= 96 else 28)
    own = datasets.OwnOptions(owndata.SplitRule(val_fraction, test_fraction, split_seed), skip_bad)
    arrays = datasets.prepare(spec, None, size, own)  # converts once: the workers start from the cache
    counts = {s: len(arrays[s][0]) for s in ("train", "val", "test")}
    space, epochs, trials = _space(counts["train"], size)
    metric = "val_auc" if info.multi_label else "val_acc"
    per_class = owndata.class_counts(listing)
    body = {
        "name": name, "dataset": spec, "metric": metric, "direction": "maximize", "epochs": epochs,
        "trials": trials, "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
        "space": space,
        "fixed": {"size": size, "optimizer": "adam", "schedule": "cosine", "val_fraction": val_fraction,
                  "test_fraction": test_fraction, "split_seed": split_seed,
                  **({"skip_bad_images": True} if skip_bad else {})},
    }
    head = [f"Written by `search init {data}` on {date.today().isoformat()}.",
            f"{sum(counts.values()):,} images, {'grey' if info.channels == 1 else 'RGB'}, {info.task}; "
            f"train {counts['train']:,} / val {counts['val']:,} / test {counts['test']:,}"
            f"{' (split by class from split_seed)' if listing.split is None else ' (splits as the data give them)'}.",
            "Images per class: " + ", ".join(f"{k} {v:,}" for k, v in per_class.items()) + ".",
            f"Native side about {native} px; sizes that fit: {', '.join(map(str, fitting))} (fixed.size; larger ones "
            f"only upsample).",
            "Augmentation: crop only, since nothing here says whether a flip keeps your labels; add flip or dihedral "
            "where it does.",
            f"Run: search start --study {name} --workers 2"]
    text = "".join(f"# {line}\n" for line in head) + yaml.safe_dump(body, sort_keys=False, default_flow_style=None,
                                                                   width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    from search.train.config import atomic_write

    atomic_write(path, lambda p: p.write_text(text))
    load_study(str(path))  # the file it wrote is one `search start` accepts
    summary = (f"{sum(counts.values()):,} images in {len(info.labels or ())} classes, "
               f"{'grey' if info.channels == 1 else 'RGB'}, {size} px; train {counts['train']:,} / "
               f"val {counts['val']:,} / test {counts['test']:,}")
    return Written(path, name, summary)
