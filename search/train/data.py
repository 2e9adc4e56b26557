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

import contextlib
import gzip
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from search import env
from search.errors import SearchError
from search.train import owndata

if TYPE_CHECKING:  # torch is imported where tensors are made: `search start` itself never needs it (3 s here)
    import torch

log = logging.getLogger("search")

SPLITS = ("train", "val", "test")
MULTI_LABEL = "multi-label, binary-class"  # medmnist's name of the one task with a 0/1 target per label
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images N,H,W[,C], labels N,K)
# Test-time augmentation: the label-preserving views a prediction averages (search/train/augment.py makes them).
# Each is a subset of the next, so a dataset allows a prefix of this tuple (DatasetInfo.tta).
TTA = ("none", "flip", "dihedral")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    num_classes: int
    task: str  # medmnist's task names: multi-class, binary-class, multi-label, binary-class, ordinal-regression
    read: Callable[..., Arrays]  # (root, download, size) -> arrays
    sizes: tuple[int, ...] = (28,)  # image sides in pixels that exist as files
    labels: tuple[str, ...] | None = None  # the class names (MedMNIST's); None: the class numbers
    bundled: bool = False  # its data ship with the installed packages: nothing to download or check beforehand
    # The most test-time augmentation that keeps every label (TTA: none < flip < dihedral); the rule is in
    # docs/finalists.md: digits and organ CT slices (left and right organs) have none, images with an up but no
    # left and right (chest X-ray, OCT, breast ultrasound) a mirror, orientation-free ones (tissue, cells, skin,
    # fundus) the dihedral group.
    tta: str = "none"

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)

    def check_tta(self, tta: str, symmetry: str | None = None) -> None:
        """The one check of a test-time augmentation against the views that keep this dataset's labels (own data:
        the config's ``symmetry``)."""
        allowed = TTA[:TTA.index(augment_limits(self, symmetry).symmetry) + 1]
        if tta in TTA and tta not in allowed:
            raise SearchError(f"tta {tta!r} can change the labels of {self.name} (its images have an orientation); "
                              f"valid for {self.name}: {', '.join(allowed)}")

    def check_size(self, size: int) -> None:
        """The one check of an image size: those that exist for the dataset (every one an architecture takes)."""
        if isinstance(size, bool) or size not in self.sizes:
            raise SearchError(f"size {size!r} does not exist for {self.name}; valid: "
                              f"{', '.join(map(str, self.sizes))} (pixels)")


@dataclass(frozen=True)
class Limits:
    """What keeps a dataset's labels under augmentation: its flips and quarter turns (none, flip or dihedral: those
    of its test-time views) and the largest rotation in degrees (search/train/augment_ops.py keeps to both)."""
    symmetry: str = "dihedral"
    max_rotation: float = 180.0


# The rotation a dataset without the dihedral symmetry keeps its labels under: a digit or a chest X-ray turned by
# 15 degrees is still itself (MNIST's own augmentation studies rotate by up to 15; X-rays are taken within a few).
SMALL_ROTATION = 15.0


def augment_limits(info: DatasetInfo, symmetry: str | None = None) -> Limits:
    """The dataset's rule: the registry's tta for the shipped datasets; the config's ``symmetry`` for own data
    (default none: nothing says a flip keeps its labels)."""
    own = owndata.is_own(info.name)
    if symmetry is not None and not own:
        raise SearchError(f"symmetry is set for own data only; {info.name}'s flips and turns are the registry's: "
                          f"{info.tta}")
    kept = (symmetry or "none") if own else info.tta
    return Limits(kept, 180.0 if kept == "dihedral" else SMALL_ROTATION)


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


def is_multi_label(task: str) -> bool:
    """Whether ``task`` (medmnist's task name) has a 0/1 target per label rather than one class per image."""
    return task == MULTI_LABEL


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
        return _own_info(name)
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


@dataclass(frozen=True)
class OwnOptions:
    """How own data (owndata.is_own) is split and read: the config's val_fraction, test_fraction, split_seed and
    skip_bad_images. The shipped datasets ignore it."""
    split: owndata.SplitRule = owndata.SplitRule()
    skip_bad: bool = False

    @classmethod
    def of(cls, values: object) -> "OwnOptions":
        """From a TrainConfig or a mapping of its keys (a study's base config); defaults where a key is absent."""
        get = (lambda k, d: values.get(k, d)) if isinstance(values, dict) else (  # noqa: E731
            lambda k, d: getattr(values, k, d))
        rule = owndata.SplitRule(get("val_fraction", 0.1), get("test_fraction", 0.1), get("split_seed", 0))
        return cls(rule, bool(get("skip_bad_images", False)))


def _read(info: DatasetInfo, root: Path, size: int, own: OwnOptions | None = None) -> Arrays:
    info.check_size(size)
    if owndata.is_own(info.name):
        own = own or OwnOptions()
        arrays, _ = owndata.read_arrays(info.name, size, own.split, skip_bad=own.skip_bad)
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
    """The dataset at ``size`` pixels on ``device``, read once per process and cached."""
    import torch

    root = data_root(data_dir)
    own = own if own is not None and owndata.is_own(name) else None
    key = (name, str(root.resolve()), str(device), size, own)
    if key not in _CACHE:
        info = get_info(name)
        arrays = _read(info, root, size, own)
        if owndata.is_own(name):
            _check_fits(info, arrays, device)
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


# --- MedMNIST 2D ------------------------------------------------------------------------------------------


def medmnist_file(flag: str, size: int = 28) -> str:
    """medmnist's file name for ``flag`` at ``size`` pixels: pathmnist.npz, pathmnist_64.npz, ..."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _medmnist_reader(flag: str) -> Callable[..., Arrays]:
    def read(root: Path, download: bool, size: int = 28) -> Arrays:
        medmnist = _medmnist()
        info = medmnist.INFO[flag]
        path = root / medmnist_file(flag, size)
        if not path.is_file():
            if not download:
                raise SearchError(f"{path} not found")
            _medmnist_download(flag, root, path, size)
        cls = getattr(medmnist, info["python_class"])
        arrays: Arrays = {}
        try:
            for split in SPLITS:
                # medmnist's own class reads the file; download=False so the MD5 is not re-hashed on every run.
                ds = cls(split=split, root=str(root), download=False, size=size)
                arrays[split] = (np.asarray(ds.imgs), np.asarray(ds.labels))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError) as err:
            raise SearchError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                              f"delete it and run again to download it, or place a good copy there") from None
        counts = {s: len(arrays[s][0]) for s in SPLITS}
        if counts != info["n_samples"]:
            log.warning("%s: using %s with %s samples; the official file has %s", flag, path,
                        counts, info["n_samples"])
        return arrays

    return read


def _medmnist():  # type: ignore[no-untyped-def]
    """medmnist, imported without creating ~/.medmnist: its module medmnist.info makes that folder (its default
    root) as it is imported, and this project passes the data folder every time (data_root), so HOME points to a
    scratch folder, removed at once, while it loads."""
    if "medmnist" not in sys.modules:
        home = os.environ.get("HOME")
        with tempfile.TemporaryDirectory(prefix="medmnist-home-") as scratch:
            os.environ["HOME"] = scratch
            try:
                import medmnist  # noqa: F401
                import medmnist.dataset  # noqa: F401
            finally:
                if home is None:
                    del os.environ["HOME"]
                else:
                    os.environ["HOME"] = home
    return sys.modules["medmnist"]


@contextlib.contextmanager
def _removed_if_failed(root: Path):  # type: ignore[no-untyped-def]
    """A download into ``root`` (created with its parents if missing) that fails takes back what it made: the
    folders it created and the new entries of a folder that was there (a partial file, MNIST/raw/)."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    before = set(root.iterdir()) if root.is_dir() else set()
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        else:
            for entry in set(root.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _medmnist_download(flag: str, root: Path, path: Path, size: int = 28) -> None:
    medmnist = _medmnist()
    info = medmnist.INFO[flag]
    suffix = "" if size == 28 else f"_{size}"  # medmnist's keys: url, MD5, url_64, MD5_64, ...
    try:
        with _removed_if_failed(root):
            getattr(medmnist, info["python_class"])(split="train", root=str(root), download=True, size=size)
    except Exception as err:  # medmnist wraps every download failure in a bare RuntimeError
        raise SearchError(f"{flag}: {path} is missing and the download from {info['url' + suffix]} failed "
                          f"({type(err).__name__}); place {path.name} (MD5 {info['MD5' + suffix]}) in {root}, or set "
                          f"data_dir / $SEARCH_DATA_DIR to the folder that holds it") from None


# Test-time views that keep each MedMNIST 2D flag's labels (DatasetInfo.tta); a flag not named here allows none.
# Tissue, blood cells, skin lesions and fundus photographs have no orientation: the dihedral group. Chest X-rays,
# retinal OCT scans and breast ultrasound have an up (the body's axis, the retina's layers, the probe) but their
# labels do not name a side: the mirror (random horizontal flips train CheXNet, Rajpurkar et al. 2017). Organ CT
# slices name left and right kidneys and femurs: none.
MEDMNIST_TTA = {"pathmnist": "dihedral", "bloodmnist": "dihedral", "dermamnist": "dihedral",
                "tissuemnist": "dihedral", "retinamnist": "dihedral", "chestmnist": "flip",
                "pneumoniamnist": "flip", "octmnist": "flip", "breastmnist": "flip"}


def _register_medmnist() -> None:
    medmnist = _medmnist()
    for flag, info in medmnist.INFO.items():
        cls = getattr(medmnist, info["python_class"], None)
        if cls is None or not issubclass(cls, medmnist.dataset.MedMNIST2D):
            continue  # the 3D volumes are not 28x28 images
        names = [info["label"].get(str(i)) for i in range(len(info["label"]))]
        register_dataset(DatasetInfo(flag, info["n_channels"], len(info["label"]), info["task"],
                                     _medmnist_reader(flag), tuple(getattr(cls, "available_sizes", (28,))),
                                     tuple(map(str, names)) if all(names) else None,
                                     tta=MEDMNIST_TTA.get(flag, "none")))


# --- MNIST -----------------------------------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_VAL_FRACTION = 0.1
MNIST_SPLIT_SEED = 0


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, checking its header against its length.

    torchvision's reader takes uncompressed files only and checks with asserts, so this small one is ours.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise SearchError(f"{path} is corrupt or truncated ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise SearchError(f"{path} is not an IDX file of unsigned bytes (bad header)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(dims)):
        raise SearchError(f"{path} is truncated: the header promises {dims} but the file holds "
                          f"{len(data) - offset} bytes of data")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=offset).reshape(dims)  # writable, for torch


def _find_mnist(root: Path) -> dict[str, Path] | None:
    for folder in (root, root / "MNIST" / "raw"):
        found = {}
        for key, name in MNIST_FILES.items():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def _read_mnist(root: Path, download: bool, size: int = 28) -> Arrays:
    files = _find_mnist(root)
    if files is None:
        if not download:
            raise SearchError(f"MNIST files not found in {root}")
        _mnist_download(root)
        files = _find_mnist(root)
        assert files is not None
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if arrays[f"{split}_images"].ndim != 3 or n_img != n_lab:
            raise SearchError(f"MNIST {split}: {files[f'{split}_images']} holds {n_img} images but "
                              f"{files[f'{split}_labels']} holds {n_lab} labels")
    images, labels = arrays["train_images"], arrays["train_labels"]
    # The 60,000 training images split 9:1 into train and val with a fixed seed (not the run's seed).
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(images))
    n_val = max(1, round(len(images) * MNIST_VAL_FRACTION))
    val, train = order[:n_val], order[n_val:]
    return {
        "train": (images[train], labels[train, None]),
        "val": (images[val], labels[val, None]),
        "test": (arrays["test_images"], arrays["test_labels"][:, None]),
    }


def _mnist_download(root: Path) -> None:
    from torchvision.datasets import MNIST

    try:
        with _removed_if_failed(root):
            MNIST(str(root), train=True, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError depending on the failure
        names = ", ".join(f"{n}.gz" for n in MNIST_FILES.values())
        raise SearchError(f"mnist: files not found in {root} and the download failed ({type(err).__name__}); "
                          f"place {names} (gzipped or not) in {root} or {root / 'MNIST' / 'raw'}") from None


register_dataset(DatasetInfo("mnist", 1, 10, "multi-class", _read_mnist))


# --- digits: scikit-learn's bundled 8x8 digits, the offline demo --------------------------------------------

DIGITS_SPLIT_SEED = 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits (values 0..16) and their labels: scikit-learn's copy of the UCI file, read as its
    load_digits reads it, without importing scikit-learn (which costs every worker about 1.5 s of start-up)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():  # a scikit-learn that keeps it elsewhere: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _read_digits(root: Path, download: bool, size: int = 28) -> Arrays:
    import torch

    images, target = digits_arrays()
    small = torch.from_numpy(images).float().unsqueeze(1) * (255.0 / 16.0)
    images = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = target.astype(np.int64)[:, None]
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    n_val = n_test = len(images) * 15 // 100
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {s: (images[idx], labels[idx]) for s, idx in parts.items()}


register_dataset(DatasetInfo("digits", 1, 10, "multi-class", _read_digits, bundled=True))


# --- own data: folder:, csv:, npz: (search/train/owndata.py) -----------------------------------------------

_OWN: dict[str, DatasetInfo] = {}


def _own_info(name: str) -> DatasetInfo:
    """The DatasetInfo of an own-data source (scanned once per process): its classes and their names, its channels
    (the majority's mode), its task. Every size an architecture takes is offered: images are resized to it."""
    if name not in _OWN:
        from models import SIZES

        listing = owndata.scan(name)
        _OWN[name] = DatasetInfo(name, owndata.channels_of(listing), len(listing.classes), owndata.task_of(listing),
                                 lambda root, download, size: {}, tuple(SIZES), listing.classes)
    return _OWN[name]


def _check_fits(info: DatasetInfo, arrays: Arrays, device: torch.device) -> None:
    """Own data of any size meets a device of fixed memory: one line saying how much it needs, before it is copied."""
    import torch

    need = sum(images.nbytes for images, _ in arrays.values())
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * free:
        n = sum(len(images) for images, _ in arrays.values())
        side = next(iter(arrays.values()))[0].shape[1]
        raise SearchError(f"dataset {info.name!r}: {n:,} images at {side} px need {need / 2**30:.1f} GiB on {device} "
                          f"as uint8, and it has {free / 2**30:.1f} GiB free; use a smaller size (28 or 64 px) or "
                          f"a device with more memory")


def own_info_record(info: DatasetInfo) -> dict[str, object]:
    """What model.pt keeps of an own-data source ({} for the shipped datasets): enough to predict without it."""
    if not owndata.is_own(info.name):
        return {}
    return {"dataset_info": {"name": info.name, "channels": info.channels, "classes": list(info.labels or ()),
                             "task": info.task}}


def remember_own(saved: dict) -> None:
    """The DatasetInfo of a model.pt's own-data source, from what it kept (own_info_record), where the source itself
    cannot be read here (another machine, a moved folder)."""
    record = saved.get("dataset_info")
    if not isinstance(record, dict) or record.get("name") in _OWN:
        return
    from models import SIZES

    name = str(record["name"])
    _OWN[name] = DatasetInfo(name, int(record["channels"]), len(record["classes"]), str(record["task"]),
                             lambda root, download, size: {}, tuple(SIZES), tuple(map(str, record["classes"])))
