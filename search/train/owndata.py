"""A lab's own images as a dataset: a folder of class folders, a CSV of paths and labels, or a MedMNIST-layout .npz.

A study names one in its ``dataset`` key:

    dataset: folder:/data/patches      # torchvision's ImageFolder layout: patches/<class>/*.png, optionally
                                       # under train/, val/ and test/ (patches/train/<class>/...)
    dataset: csv:/data/labels.csv      # rows path,label[,split]; paths relative to the CSV's folder; a label
                                       # "a;b" names several classes (a multi-label task)
    dataset: npz:/data/mine.npz        # train_images, train_labels, val_..., test_... as medmnist writes them

Everything after the prefix is a path (~ expanded; a relative one is taken from the working folder). This module
lists what a source holds (files, labels, given splits, class names) without reading a pixel; search/train/
imagecache.py turns the files into one uint8 array, cached beside the data. Where the source names no split, a
stratified split (``val_fraction``, ``test_fraction``, ``split_seed`` of the config, stored with the study) makes one:
every worker and the final run draw the same. Every bad input is one line naming the file or class at fault.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search import env
from search.errors import SearchError

log = logging.getLogger("search")

KINDS = ("folder", "csv", "npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")
MULTI_SEP = ";"


@dataclass(frozen=True)
class Source:
    kind: str  # folder, csv or npz
    path: Path  # as the user wrote it, ~ expanded
    spec: str  # the dataset string itself: "folder:/data/patches"

    @property
    def home(self) -> Path:
        """The folder the source's files are relative to, and where its image cache lives."""
        return self.path if self.kind == "folder" else self.path.parent


@dataclass(frozen=True)
class SplitRule:
    """How a source without given splits is split: fractions of each class (stratified), drawn with ``seed``."""
    val: float = 0.1
    test: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class OwnOptions:
    """How own data is split and read: the config's val_fraction, test_fraction, split_seed and skip_bad_images."""
    split: SplitRule = SplitRule()
    skip_bad: bool = False

    @classmethod
    def of(cls, values: object) -> "OwnOptions":
        """From a TrainConfig or a mapping of its keys (a study's base config); defaults where a key is absent."""
        def get(key: str, default: object) -> object:
            return values.get(key, default) if isinstance(values, dict) else getattr(values, key, default)

        rule = SplitRule(get("val_fraction", 0.1), get("test_fraction", 0.1), get("split_seed", 0))  # type: ignore
        return cls(rule, bool(get("skip_bad_images", False)))


@dataclass
class Listing:
    """What a source holds, before any pixel is read."""
    source: Source
    classes: tuple[str, ...]
    labels: np.ndarray  # (N,) int64 class numbers; (N, K) uint8 0/1 for a multi-label source
    split: np.ndarray | None  # (N,) 0 train, 1 val, 2 test, -1 not given; None when the source gives none at all
    files: list[Path]  # each image file, in order (empty for an .npz source: its arrays are the images)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)


def is_own(name: str) -> bool:
    """Whether a dataset name points at the user's own data (folder:, csv:, npz:)."""
    kind, sep, _ = str(name).partition(":")
    return bool(sep) and kind in KINDS


def parse(spec: str) -> Source:
    kind, _, rest = str(spec).partition(":")
    if kind not in KINDS or not rest.strip():
        raise SearchError(f"dataset {spec!r}: own data is named folder:PATH, csv:PATH or npz:PATH")
    return Source(kind, env.user_path(rest.strip(), what=f"dataset {spec!r}"), spec)


def scan(spec: str) -> Listing:
    """The source's files, labels and given splits; one line for any bad input."""
    source = parse(spec)
    if source.kind == "folder":
        listing = _scan_folder(source)
    elif source.kind == "csv":
        listing = _scan_csv(source)
    else:
        listing = _scan_npz(source)
    check_classes(listing)
    return listing


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(source: Source) -> Listing:
    root = source.path
    if not root.is_dir():
        raise SearchError(f"dataset {source.spec!r}: no folder at {root}")
    given = [s for s in SPLITS if (root / s).is_dir()]
    if given and "train" not in given:
        raise SearchError(f"dataset {source.spec!r}: {root} has {', '.join(s + '/' for s in given)} but no train/; "
                          f"valid layouts: {root}/<class>/*.png, or {root}/train/<class>/*.png (val/, test/ optional)")
    parts = [(root / s, SPLITS.index(s)) for s in given] if given else [(root, -1)]
    names = sorted({p.name for folder, _ in parts for p in _class_folders(folder)})
    if not names:
        raise SearchError(f"dataset {source.spec!r}: {parts[0][0]} holds no class folders; the layout is "
                          f"{parts[0][0]}/<class>/<image>.png (PNG, JPEG, TIFF or BMP)")
    files, labels, split = [], [], []
    for folder, code in parts:
        for c, name in enumerate(names):
            images = _images_in(folder / name) if (folder / name).is_dir() else []
            if not images and code in (-1, 0):
                raise SearchError(f"dataset {source.spec!r}: the class folder {folder / name} holds no images "
                                  f"({', '.join(IMAGE_SUFFIXES)}); remove it or add its images")
            files += images
            labels += [c] * len(images)
            split += [code] * len(images)
    return Listing(source, tuple(names), np.asarray(labels, dtype=np.int64),
                   np.asarray(split, dtype=np.int64) if given else None, files)


def _read_rows(source: Source) -> list[list[str]]:
    path = source.path
    if not path.is_file():
        raise SearchError(f"dataset {source.spec!r}: no CSV file at {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SearchError(f"dataset {source.spec!r}: {path} is not a readable CSV file ({err})") from None
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]  # a header row
    if not rows:
        raise SearchError(f"dataset {source.spec!r}: {path} has no rows; each row is path,label[,split]")
    return rows


def _scan_csv(source: Source) -> Listing:
    rows = _read_rows(source)
    home = source.home.resolve()
    multi = any(MULTI_SEP in row[1] for row in rows if len(row) > 1)
    files, tags, split = [], [], []
    for number, row in enumerate(rows, start=1):
        where = f"dataset {source.spec!r}: row {number} of {source.path.name}"
        if len(row) not in (2, 3) or not row[0].strip() or (not multi and not row[1].strip()):
            raise SearchError(f"{where} is {','.join(row)!r}; each row is path,label[,split]")
        file = (home / row[0].strip()).resolve()
        if not file.is_relative_to(home):
            raise SearchError(f"{where}: {row[0].strip()!r} lies outside the CSV's folder {home}; paths are "
                              f"relative to it, inside it")
        files.append(file)
        tags.append([t.strip() for t in row[1].split(MULTI_SEP) if t.strip()] if multi else [row[1].strip()])
        code = row[2].strip().lower() if len(row) == 3 else ""
        if code and code not in SPLITS:
            raise SearchError(f"{where}: split {code!r} is not known; valid: {', '.join(SPLITS)}, or empty")
        split.append(SPLITS.index(code) if code else -1)
    names = tuple(sorted({t for row in tags for t in row}))
    codes = np.asarray(split, dtype=np.int64)
    if multi:
        labels = np.zeros((len(rows), len(names)), dtype=np.uint8)
        for i, row in enumerate(tags):
            labels[i, [names.index(t) for t in row]] = 1
    else:
        labels = np.asarray([names.index(row[0]) for row in tags], dtype=np.int64)
        if (codes >= 0).any():
            trained = set(labels[codes == 0].tolist()) if (codes == 0).any() else set(labels.tolist())
            unknown = sorted({names[c] for c in labels[codes > 0].tolist()} - {names[c] for c in trained})
            if unknown:
                raise SearchError(f"dataset {source.spec!r}: the label {unknown[0]!r} of {source.path.name} names "
                                  f"no class of its train rows; valid: "
                                  f"{', '.join(names[c] for c in sorted(trained))}")
    return Listing(source, names, labels, codes if (codes >= 0).any() else None, files)


def _scan_npz(source: Source) -> Listing:
    path = source.path
    if not path.is_file():
        raise SearchError(f"dataset {source.spec!r}: no .npz file at {path}")
    keys = [f"{s}_{what}" for s in SPLITS for what in ("images", "labels")]
    try:
        with np.load(path) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise SearchError(f"dataset {source.spec!r}: {path.name} lacks {', '.join(missing)}; MedMNIST's "
                                  f"layout holds {', '.join(keys)}")
            labels = [np.asarray(npz[f"{s}_labels"]) for s in SPLITS]
    except (OSError, ValueError) as err:
        raise SearchError(f"dataset {source.spec!r}: {path} is not a readable .npz file ({err})") from None
    multi = labels[0].ndim == 2 and labels[0].shape[1] > 1
    joined = np.concatenate([lab.reshape(len(lab), -1) for lab in labels])
    k = joined.shape[1] if multi else int(joined.max()) + 1
    labels_all = joined.astype(np.uint8) if multi else joined.reshape(-1).astype(np.int64)
    split = np.concatenate([np.full(len(lab), i, dtype=np.int64) for i, lab in enumerate(labels)])
    return Listing(source, tuple(str(i) for i in range(k)), labels_all, split, [])


def check_classes(listing: Listing) -> None:
    spec, k = listing.source.spec, len(listing.classes)
    if k < 2 and not listing.multi_label:
        raise SearchError(f"dataset {spec!r}: it holds one class ({listing.classes[0] if k else 'none'}); a "
                          f"classifier needs at least 2")
    counts = listing.labels.sum(axis=0) if listing.multi_label else np.bincount(listing.labels, minlength=k)
    empty = [listing.classes[c] for c in range(k) if counts[c] == 0]
    if empty:
        raise SearchError(f"dataset {spec!r}: class {empty[0]!r} has no images")


def class_counts(listing: Listing, code: int | None = None) -> dict[str, int]:
    """Images per class (per label, multi-label), of split ``code`` (0, 1, 2) or of all."""
    rows = slice(None) if code is None else listing.split == code
    labels = listing.labels[rows]
    k = len(listing.classes)
    counts = labels.sum(axis=0) if listing.multi_label else np.bincount(labels, minlength=k)
    return {name: int(n) for name, n in zip(listing.classes, counts)}


def assign_splits(listing: Listing, rule: SplitRule) -> np.ndarray:
    """Each image's split (0 train, 1 val, 2 test): the source's where it gives one; the rest drawn per class.

    Stratified: within each class (multi-label: each image's first label, "none" for an image with none), the
    images without a given split are shuffled with ``rule.seed`` and cut into val, test and train by the fractions,
    so every split holds every class in the same proportion. A split the source gives (test/ alone, say) is not
    drawn again: only the missing ones are.
    """
    given = listing.split if listing.split is not None else np.full(len(listing), -1, dtype=np.int64)
    out = given.copy()
    want = [s for s, frac in ((1, rule.val), (2, rule.test)) if frac > 0 and not (given == s).any()]
    free = given <= 0  # a drawn split comes out of the images without one and those of the given train split
    if not want:
        out[out == -1] = 0
        return out
    strata = listing.labels.argmax(axis=1) + listing.labels.any(axis=1) if listing.multi_label else listing.labels
    rng = np.random.default_rng(rule.seed)
    fractions = {1: rule.val, 2: rule.test}
    for c in np.unique(strata):
        members = np.flatnonzero(free & (strata == c))
        members = members[rng.permutation(len(members))]
        need = len(want) + 1
        if len(members) < need:
            name = _stratum_name(listing, int(c))
            raise SearchError(f"dataset {listing.source.spec!r}: class {name!r} has {len(members)} image(s) to "
                              f"split, too few for train, {' and '.join(SPLITS[s] for s in want)} (at least {need}); "
                              f"add images, or set val_fraction/test_fraction to 0 for a split you do not need")
        start = 0
        for s in want:
            n = min(max(1, round(len(members) * fractions[s])), len(members) - (need - 1))
            out[members[start:start + n]] = s
            start += n
        out[members[start:]] = 0
    return out


def _stratum_name(listing: Listing, c: int) -> str:
    if not listing.multi_label:
        return listing.classes[c]
    return listing.classes[c - 1] if c > 0 else "(no label)"


def task_of(listing: Listing) -> str:
    """medmnist's task name for the source: what the engine's loss and metrics follow."""
    if listing.multi_label:
        return "multi-label, binary-class"
    return "binary-class" if len(listing.classes) == 2 else "multi-class"


def native_side(listing: Listing, sample: int = 200) -> int:
    """The images' typical side in pixels (the median shorter side of up to ``sample`` files; an .npz: its arrays')."""
    if listing.source.kind == "npz":
        with np.load(listing.source.path) as npz:
            return int(npz["train_images"].shape[1])
    from PIL import Image

    step = max(1, len(listing.files) // sample)
    sides = []
    for path in listing.files[::step]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except Exception:  # a bad file is named where the pixels are read
            continue
    return int(np.median(sides)) if sides else 28
