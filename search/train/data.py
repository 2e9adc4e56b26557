"""Dataset registry: MedMNIST 2D flags, MNIST and scikit-learn's digits, as uint8 tensors on the device.

Each split is read once per process and kept on the training device as uint8 (N, C, S, S) images and int64
labels (float 0/1 label matrices for multi-label tasks). Normalisation and augmentation happen batched on the
device in the engine, so the training loop never touches Python per image, PIL or a DataLoader.

Sizes: S is 28 for every dataset; MedMNIST+ also ships each 2D flag at 64, 128 and 224 pixels as
``<flag>_64.npz`` etc. in the same layout, read (and downloaded) by medmnist's own ``size=`` argument.

File locations: ``data_dir`` of the config, else $SEARCH_DATA_DIR, else medmnist's default root (~/.medmnist).
Missing files are downloaded with medmnist's and torchvision's own code (MD5 checked on download only).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from search import env
from search.errors import SearchError
from search.train import owndata, owninfo, readers
from search.train.dataset_info import (  # noqa: F401  (re-exported: data.DatasetInfo, data.TTA, ...)
    MULTI_LABEL,
    SMALL_ROTATION,
    TTA,
    DatasetInfo,
    Limits,
    augment_limits,
    is_multi_label,
)
from search.train.owndata import OwnOptions
from search.train.readers import (  # noqa: F401  (re-exported: data.SPLITS, data.read_idx, ...)
    DIGITS_SPLIT_SEED,
    MNIST_FILES,
    MNIST_SPLIT_SEED,
    MNIST_VAL_FRACTION,
    SPLITS,
    Arrays,
    digits_arrays,
    medmnist_file,
    read_idx,
)

if TYPE_CHECKING:  # torch is imported where tensors are made: `search start` itself never needs it (3 s here)
    import torch

log = logging.getLogger("search")

@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, C, S, S) on the device
    labels: torch.Tensor  # int64 (N,), or float (N, K) for multi-label tasks

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class Data:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor  # per-channel, of the training images scaled to [0, 1], shape (1, C, 1, 1)
    std: torch.Tensor


_REGISTRY: dict[str, DatasetInfo] = {}
_CACHE: dict[tuple, Data] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    from models import SIZES  # what every architecture takes: a dataset's sizes must be among them

    if not set(info.sizes) <= set(SIZES):
        raise ValueError(f"dataset {info.name}: sizes {info.sizes} include one no architecture takes ({SIZES})")
    _REGISTRY[info.name] = info
    return info


_medmnist_registered = False


def _with_medmnist() -> None:
    """MedMNIST's datasets join the registry when a name is not found among the others, or for the whole list:
    importing medmnist loads scikit-learn's metrics and pandas (about 2 s of every process's start on a small
    CPU), which a digits or MNIST run never needs."""
    global _medmnist_registered
    if not _medmnist_registered:
        _medmnist_registered = True
        _register_medmnist()


def list_datasets() -> list[str]:
    _with_medmnist()
    return sorted(_REGISTRY)


def is_dataset(name: str) -> bool:
    if owndata.is_own(name):
        return True  # what the source holds is checked where it is read (get_info), with the file at fault named
    if name not in _REGISTRY:
        _with_medmnist()
    return name in _REGISTRY


def get_info(name: str) -> DatasetInfo:
    if owndata.is_own(name):
        return owninfo.info(name)
    if not is_dataset(name):
        raise SearchError(f"dataset '{name}' is not known; valid: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def class_names(dataset: str, k: int) -> list[str]:
    """MedMNIST's label names for the dataset's k classes; the class numbers for digits, MNIST or unknown names."""
    labels = get_info(dataset).labels if is_dataset(dataset) else None
    return list(labels) if labels is not None and len(labels) == k else [str(i) for i in range(k)]


def data_root(data_dir: str | os.PathLike | None) -> Path:
    if data_dir:
        return env.user_path(data_dir, what="data_dir")
    from_env = env.path("SEARCH_DATA_DIR")
    if from_env is not None:
        return from_env
    # medmnist's own default (medmnist.info.DEFAULT_ROOT), not imported from it: importing medmnist costs ~2 s,
    # which a digits or MNIST run would pay for a path. tests/test_data.py checks that the two agree.
    return Path.home() / ".medmnist"


def _read(info: DatasetInfo, root: Path, size: int, own: OwnOptions | None = None) -> Arrays:
    info.check_size(size)
    if owndata.is_own(info.name):
        own = own or OwnOptions()
        from search.train import imagecache  # Pillow and the cache: only for own data

        arrays, _ = imagecache.read_arrays(info.name, size, own.split, skip_bad=own.skip_bad)
        return _checked(info, arrays, size)
    return _checked(info, info.read(root, True, size), size)


def prepare(name: str, data_dir: str | None = None, size: int = 28, own: OwnOptions | None = None) -> Arrays:
    """Make sure the dataset's files are present (downloading them if missing) and readable."""
    return _read(get_info(name), data_root(data_dir), size, own)


def fetch(name: str, data_dir: str | None = None, size: int = 28, own: OwnOptions | None = None) -> None:
    """`prepare`, before any worker starts (`search start`, `search submit`, compose's init): a bundled dataset
    has nothing to fetch, and reading it here would only load torch into a process that never trains. Own data is
    converted here, once, so that the workers (a SLURM array's tasks) find its image cache made."""
    info = get_info(name)
    if not info.bundled:
        _read(info, data_root(data_dir), size, own)


def load(name: str, data_dir: str | None, device: torch.device, size: int = 28, own: OwnOptions | None = None
         ) -> Data:
    """The dataset at ``size`` pixels on ``device``, read once per process and cached (``own``: how own data is
    split and read; the shipped datasets ignore it)."""
    import torch

    root = data_root(data_dir)
    own = own if own is not None and owndata.is_own(name) else None
    key = (name, str(root.resolve()), str(device), size, own)
    if key not in _CACHE:
        info = get_info(name)
        arrays = _read(info, root, size, own)
        if owndata.is_own(name):
            owninfo.check_fits(info, arrays, device)
        splits = {s: _to_split(info, *arrays[s], device) for s in SPLITS}
        # Statistics of the training images, computed once on the host in float64 for accuracy.
        train = arrays["train"][0].reshape(len(arrays["train"][0]), -1, info.channels)
        mean = train.mean(axis=(0, 1)) / 255.0
        std = _chunked_std(train, mean)
        as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
        _CACHE[key] = Data(info, splits["train"], splits["val"], splits["test"], as_t(mean), as_t(std).clamp_min(1e-3))
    return _CACHE[key]


def fold_data(data: Data, assignment: Sequence[int], fold: int) -> Data:
    """One fold of cross-validation on train+val: the images whose ``assignment`` (train images first, then val,
    in the split's order) is ``fold`` validate, the others train; the test split is the dataset's. The
    normalisation is that fold's training images' own, as `load` computes it for the official split."""
    import torch

    if len(assignment) != len(data.train) + len(data.val):
        raise SearchError(f"{data.info.name}: the stored folds cover {len(assignment)} images, but train+val now holds "
                          f"{len(data.train) + len(data.val)}; the dataset changed since the study was created: "
                          f"start a new study")
    where = torch.as_tensor(list(assignment), device=data.train.images.device) == fold
    images = torch.cat([data.train.images, data.val.images])
    labels = torch.cat([data.train.labels, data.val.labels])
    train = Split(images[~where], labels[~where])
    total = torch.zeros(data.info.channels, dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for i in range(0, len(train), 1024):  # float64 as in `load`, in chunks (224 px images are large)
        chunk = train.images[i:i + 1024].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = train.images[:, 0].numel()
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    as_t = lambda v: v.float().view(1, -1, 1, 1)  # noqa: E731
    return Data(data.info, train, Split(images[where], labels[where]), data.test, as_t(mean),
                as_t(std).clamp_min(1e-3))


def _chunked_std(images: np.ndarray, mean: np.ndarray, chunk: int = 10_000) -> np.ndarray:
    # In chunks: PathMNIST's training images as float64 would take 1.7 GB at once.
    total = np.zeros_like(mean)
    for i in range(0, len(images), chunk):
        total += ((images[i:i + chunk] / 255.0 - mean) ** 2).sum(axis=(0, 1))
    return np.sqrt(total / (len(images) * images.shape[1]))


def images_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images as stored (N, S, S) or (N, S, S, C) -> the (N, C, S, S) tensor the engine takes (on the CPU)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _to_split(info: DatasetInfo, images: np.ndarray, labels: np.ndarray, device: torch.device) -> Split:
    import torch

    x = images_tensor(images)
    y = torch.from_numpy(labels.astype(np.float32 if info.multi_label else np.int64))
    y = y if info.multi_label else y.reshape(-1)
    return Split(x.to(device), y.to(device))


def _checked(info: DatasetInfo, arrays: Arrays, size: int = 28) -> Arrays:
    for split in SPLITS:
        images, labels = arrays[split]
        want = (size, size) if info.channels == 1 else (size, size, info.channels)
        if images.dtype != np.uint8 or images.shape[1:] != want:
            raise SearchError(f"{info.name}: {split} images have dtype {images.dtype} and shape {images.shape}; "
                              f"expected uint8 (N, {', '.join(map(str, want))})")
        if len(labels) != len(images):
            raise SearchError(f"{info.name}: {split} has {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise SearchError(f"{info.name}: the {split} split is empty")
        if not info.multi_label and (labels.min() < 0 or labels.max() >= info.num_classes):
            raise SearchError(f"{info.name}: {split} labels must lie in 0..{info.num_classes - 1}, "
                              f"found {labels.min()}..{labels.max()}")
    return arrays


def _register_medmnist() -> None:
    medmnist = readers.medmnist_module()
    for flag, info in medmnist.INFO.items():
        cls = getattr(medmnist, info["python_class"], None)
        if cls is None or not issubclass(cls, medmnist.dataset.MedMNIST2D):
            continue  # the 3D volumes are not 28x28 images
        names = [info["label"].get(str(i)) for i in range(len(info["label"]))]
        register_dataset(DatasetInfo(flag, info["n_channels"], len(info["label"]), info["task"],
                                     readers.medmnist_reader(flag), tuple(getattr(cls, "available_sizes", (28,))),
                                     tuple(map(str, names)) if all(names) else None,
                                     tta=readers.MEDMNIST_TTA.get(flag, "none")))


register_dataset(DatasetInfo("mnist", 1, 10, "multi-class", readers.read_mnist))
register_dataset(DatasetInfo("digits", 1, 10, "multi-class", readers.read_digits, bundled=True))
