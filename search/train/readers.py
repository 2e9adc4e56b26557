"""The shipped datasets' file readers: MedMNIST 2D (through medmnist's own classes), MNIST's IDX files and
scikit-learn's bundled digits. search/train/data.py registers them, loads their arrays and checks them.
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
from pathlib import Path
from typing import Callable

import numpy as np

from search.errors import SearchError

log = logging.getLogger("search")

SPLITS = ("train", "val", "test")  # what every reader returns (data.py's registry re-exports it)
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images N,H,W[,C], labels N,K)


# --- MedMNIST 2D ------------------------------------------------------------------------------------------


def medmnist_file(flag: str, size: int = 28) -> str:
    """medmnist's file name for ``flag`` at ``size`` pixels: pathmnist.npz, pathmnist_64.npz, ..."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_reader(flag: str) -> Callable[..., Arrays]:
    def read(root: Path, download: bool, size: int = 28) -> Arrays:
        medmnist = medmnist_module()
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


def medmnist_module():  # type: ignore[no-untyped-def]
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
    medmnist = medmnist_module()
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


def read_mnist(root: Path, download: bool, size: int = 28) -> Arrays:
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


def read_digits(root: Path, download: bool, size: int = 28) -> Arrays:
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
