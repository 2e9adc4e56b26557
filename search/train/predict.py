"""`search predict MODEL INPUT`: a trained run (or ensemble) applied to a user's images, one CSV row per image.

MODEL: a `search train` run folder (its model.pt), a `--seeds` folder (the seed ensemble) or an ensemble folder
(search/train/ensemble.py). INPUT:

- a MedMNIST-layout .npz (keys {train,val,test}_images, uint8 N x S x S [x C]): the ``split`` (default test); its
  labels, where the file has them, become a ``label`` column and an accuracy line;
- a folder of PNG/JPEG images (every *.png, *.jpg, *.jpeg in it, not its subfolders, by name), or one such image.

The images go through the run's own preprocessing and nothing else: they must already have the run's size and
channels (a mismatch is one line: resizing or colour conversion would feed the model images unlike its training
images). Normalisation uses the training split's statistics saved in model.pt; prediction is the engine's one path
(engine.score: the run's precision, and the test-time views its config names where it names any). The file is
written only once every image was read and scored.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.errors import SearchError
from search.train import engine, ensemble, owndata, prediction_files
from search.train.config import atomic_write
from search.train.data import SPLITS, DatasetInfo, class_names, get_info, images_tensor
from search.train.imagecache import decode
from search.train.metrics import evaluate_scores, predict

IMAGE_SUFFIXES = owndata.IMAGE_SUFFIXES  # PNG, JPEG, TIFF, BMP
# PIL modes by the channels they hold; an alpha channel is dropped (the model never saw one)
ONE_CHANNEL = ("1", "L", "LA", "I", "I;16", "F")
THREE_CHANNELS = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "RGBX")


@dataclass(frozen=True)
class Inputs:
    names: list[str]  # a file name, or the image's index in the .npz split
    images: torch.Tensor  # uint8 (N, C, S, S) on the CPU
    labels: np.ndarray | None  # from a .npz that has them


@dataclass(frozen=True)
class Predicted:
    count: int
    out: Path
    acc: float | None  # on the .npz's labels, where it had them
    members: int


def run(model_dir: Path, source: Path, out: Path, *, split: str = "test", device: str = "auto") -> Predicted:
    members, _ = ensemble.read_members(model_dir)
    ensemble.check_alike(members)
    info = get_info(members[0].cfg.dataset)
    sizes = sorted({m.cfg.size for m in members})
    if len(sizes) > 1:
        raise SearchError(f"{model_dir}: its members take images of different sizes ({', '.join(map(str, sizes))} "
                          f"pixels); one input cannot fit them all")
    if not out.parent.is_dir():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o path")
    inputs = read(source, info, sizes[0], split)
    where = engine.resolve_device(device)
    scores = torch.stack([m.probabilities(inputs.images, where) for m in members]).mean(dim=0).cpu()
    pred = predict(scores, info.task)
    names = class_names(info.name, scores.shape[1])
    text = prediction_files.table(names, scores.numpy(), task=info.task, labels=inputs.labels, predictions=pred.numpy(),
                             first={"image": inputs.names}, predicted_names=True)
    atomic_write(out, lambda p: p.write_text(text))
    acc = None
    if inputs.labels is not None:
        acc = evaluate_scores(torch.from_numpy(inputs.labels), scores, info.task)["acc"]
    return Predicted(len(inputs.names), out, acc, len(members))


def read(source: Path, info: DatasetInfo, size: int, split: str) -> Inputs:
    """The images of ``source`` as the model takes them, checked against its size and channels (one line if not)."""
    want = f"{info.channels}-channel {size}x{size} images ({info.name})"
    if not source.exists():
        raise SearchError(f"{source} not found; INPUT is a MedMNIST-layout .npz, a folder of PNG/JPEG images or one "
                          f"image")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SearchError(f"{source} holds no PNG or JPEG image (*.png, *.jpg, *.jpeg); the model takes {want}")
        return Inputs([p.name for p in files], torch.stack([_image(p, info, size, want) for p in files]), None)
    if source.suffix.lower() == ".npz":
        return _npz(source, info, size, split, want)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return Inputs([source.name], _image(source, info, size, want).unsqueeze(0), None)
    raise SearchError(f"{source}: not a .npz, PNG or JPEG file; INPUT is a MedMNIST-layout .npz, a folder of PNG/JPEG "
                      f"images or one image")


def _image(path: Path, info: DatasetInfo, size: int, want: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if owndata.is_own(info.name):  # own data was resized and converted once: the same conversion, image by image
        result = decode((str(path), size, info.channels == 1))
        if isinstance(result, str):
            raise SearchError(f"{path} cannot be read as an image ({result})")
        return images_tensor(result[0][None])[0]

    try:
        with Image.open(path) as img:
            img.load()
            mode, (w, h) = img.mode, img.size
            channels = 1 if mode in ONE_CHANNEL else 3 if mode in THREE_CHANNELS else None
            if channels != info.channels:
                raise SearchError(f"{path} has {channels or 'unknown'} channel{'s' if channels != 1 else ''} "
                                  f"(mode {mode}); the model takes {want}")
            if (w, h) != (size, size):
                raise SearchError(f"{path} is {w}x{h} pixels; the model takes {want} (resize them as its training "
                                  f"images were)")
            array = np.array(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)  # a writable copy
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SearchError(f"{path} cannot be read as an image ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    return images_tensor(array[None])[0]


def _npz(path: Path, info: DatasetInfo, size: int, split: str, want: str) -> Inputs:
    if split not in SPLITS:
        raise SearchError(f"--split {split!r} is not known; valid: {', '.join(SPLITS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            if f"{split}_images" not in keys:
                raise SearchError(f"{path} has no '{split}_images' (its keys: {', '.join(keys) or 'none'}); a "
                                  f"MedMNIST-layout .npz has {{train,val,test}}_images: choose one with --split")
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"] if f"{split}_labels" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise SearchError(f"{path} cannot be read as a .npz file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    shape = (size, size) if info.channels == 1 else (size, size, info.channels)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[1:] != shape:
        raise SearchError(f"{path}: {split}_images are {images.dtype} {tuple(images.shape)}; the model takes {want}: "
                          f"uint8 (N, {', '.join(map(str, shape))})")
    if len(images) == 0:
        raise SearchError(f"{path}: {split}_images holds no image")
    if labels is not None:
        labels = labels.astype(np.int64)
        labels = labels.reshape(-1) if not info.multi_label else labels.reshape(len(labels), -1)
        if len(labels) != len(images):
            raise SearchError(f"{path}: {split} has {len(images)} images but {len(labels)} labels")
    return Inputs([str(i) for i in range(len(images))], images_tensor(images), labels)
