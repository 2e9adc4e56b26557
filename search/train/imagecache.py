"""The pixels of a lab's own images: decoded, converted and resized once, kept as one uint8 array beside the data.

The first reader of a source (`search init`, `search start` before its workers, or the first worker) decodes every
file with Pillow on all the cores it may use, converts it to the majority's mode (grey or RGB; one line says how
many were converted), resizes it to the study's side with Lanczos filtering (antialiased when shrinking; the whole
image, as MedMNIST's own preprocessing resizes whole images) and writes
``.search-cache/<source>-<size>px-<key>.npy`` and its ``.json`` beside the data (a stale one of the same source and
size goes). The key hashes what the pixels came from: each file's path, size and modification time (an .npz
source: the file's), so a changed, added or removed file makes a new cache and a stale one is never read. Later
readers load the array in a fraction of a second. Two processes that miss the cache at once (a SLURM array's tasks,
say) take a lock on the key: one converts, the others wait for it and read its result. A folder that cannot be
written to keeps its cache under ~/.cache/search instead.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import current_process, get_context
from pathlib import Path

import numpy as np

from search import env
from search.errors import SearchError
from search.train import owndata
from search.train.owndata import Listing

log = logging.getLogger("search")

FORMAT = 1  # bump when the conversion changes: old caches are then rebuilt, never misread
CACHE_FOLDER = ".search-cache"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
IN_PROCESS = 256  # fewer files than this decode in the calling process: starting a pool costs more


@dataclass
class Pixels:
    images: np.ndarray  # (N, S, S) grey or (N, S, S, 3) RGB, uint8: the kept images, in the listing's order
    kept: np.ndarray  # (len(listing),) bool: False for a bad image skipped (skip_bad)
    digests: list[str]  # each kept image's content hash (duplicates across splits)
    converted: int  # images converted to the majority's mode

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else 3


def cache_key(listing: Listing, size: int) -> str:
    """What the pixels at ``size`` come from: the format, the size, and each file's path, byte size and mtime."""
    h = hashlib.sha256(f"{FORMAT}|{size}|{listing.source.kind}".encode())
    for path in listing.files or [listing.source.path]:
        try:
            st = path.stat()
        except OSError:
            h.update(f"{path}|missing".encode())  # the decoding names the file
            continue
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cache_folder(listing: Listing) -> Path:
    """The source's own folder, else (read-only data) ~/.cache/search/<hash of the source's path>."""
    home = listing.source.home / CACHE_FOLDER
    try:
        home.mkdir(exist_ok=True)
        probe = home / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return home
    except OSError:
        tag = hashlib.sha256(str(listing.source.home.resolve()).encode()).hexdigest()[:12]
        other = Path.home() / ".cache" / "search" / tag
        other.mkdir(parents=True, exist_ok=True)
        return other


def load_pixels(listing: Listing, size: int, *, skip_bad: bool = False) -> Pixels:
    """The source's images at ``size`` pixels: from the cache when it holds them, else converted and cached."""
    folder = cache_folder(listing)
    prefix = f"{listing.source.kind}-{listing.source.path.name}-{size}px-"
    stem = folder / f"{prefix}{cache_key(listing, size)}"
    cached = _read_cache(stem, skip_bad, listing)
    if cached is not None:
        return cached
    with _locked(stem.with_suffix(".lock"), listing.source.spec):
        cached = _read_cache(stem, skip_bad, listing)  # built by the process that held the lock before us
        if cached is not None:
            return cached
        pixels = _convert(listing, size, skip_bad=skip_bad)
        if _write_cache(stem, pixels):
            _remove_stale(folder, prefix, keep=stem.name)
        return pixels


def _read_cache(stem: Path, skip_bad: bool, listing: Listing) -> Pixels | None:
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(stem.with_suffix(".npy"), mmap_mode="r")
        images = np.array(images)  # one read into memory; the file may be replaced later
    except (OSError, ValueError) as err:
        log.warning("%s: the image cache %s is unreadable (%s); converting again", listing.source.spec, stem, err)
        return None
    kept = np.asarray(meta["kept"], dtype=bool)
    if not kept.all() and not skip_bad:
        bad = [str(listing.files[i]) for i in np.flatnonzero(~kept)]
        raise SearchError(f"dataset {listing.source.spec!r}: {bad[0]} cannot be read as an image ({len(bad)} bad "
                          f"file(s) in all); fix or remove it, or pass --skip-bad-images to leave them out")
    return Pixels(images, kept, meta["digests"], meta["converted"])


def _remove_stale(folder: Path, prefix: str, *, keep: str) -> None:
    """The same source's caches at the same size from before a change: never read again (their key is gone)."""
    for path in folder.glob(f"{prefix}*"):
        if path.stem != keep and path.suffix in (".npy", ".json", ".lock"):
            path.unlink(missing_ok=True)


def _write_cache(stem: Path, pixels: Pixels) -> bool:
    """The array first, then the .json that says it is whole: a reader never sees half a cache."""
    tmp = stem.with_name(f".{stem.name}.{os.getpid()}.npy")
    try:
        np.save(tmp, pixels.images)
        tmp.replace(stem.with_suffix(".npy"))
        meta = {"format": FORMAT, "kept": pixels.kept.tolist(), "digests": pixels.digests,
                "converted": pixels.converted, "shape": list(pixels.images.shape)}
        tmp_meta = stem.with_name(f".{stem.name}.{os.getpid()}.json")
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(stem.with_suffix(".json"))
        return True
    except OSError as err:
        tmp.unlink(missing_ok=True)
        log.warning("the image cache could not be written to %s (%s); the next run converts again", stem.parent, err)
        return False


class _locked:
    """An exclusive lock on ``path`` (flock: released by the kernel if the holder dies), with one line while it
    waits for another process's conversion."""

    def __init__(self, path: Path, spec: str) -> None:
        self.path, self.spec = path, spec

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is converting these images; waiting for its cache", self.spec)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _convert(listing: Listing, size: int, *, skip_bad: bool) -> Pixels:
    if listing.source.kind == "npz":
        return _convert_npz(listing, size)
    started = time.perf_counter()
    modes = _map(_mode_of, listing.files, "reading headers", unit="file", pooled=False)  # headers are cheap
    grey_votes = sum(1 for m in modes if m is not None and m in GREY_MODES)
    colour_votes = sum(1 for m in modes if m is not None and m not in GREY_MODES)
    grey = grey_votes >= colour_votes
    _check_memory(listing, size, 1 if grey else 3)
    converted = colour_votes if grey else grey_votes
    if converted:
        log.warning("%s: %d of %d images are %s; converted to %s like the rest", listing.source.spec, converted,
                    len(modes), "colour" if grey else "grey", "grey" if grey else "RGB")
    results = _map(decode, [(str(p), size, grey) for p in listing.files], f"converting to {size} px", unit="image")
    kept = np.asarray([isinstance(r, tuple) for r in results], dtype=bool)
    bad = [(listing.files[i], results[i]) for i in np.flatnonzero(~kept)]
    if bad and not skip_bad:
        path, why = bad[0]
        raise SearchError(f"dataset {listing.source.spec!r}: {path} cannot be read as an image ({why}; {len(bad)} bad "
                          f"file(s) in all); fix or remove it, or pass --skip-bad-images to leave them out")
    if bad:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", listing.source.spec, len(bad), bad[0][0])
    good = [r for r in results if isinstance(r, tuple)]
    shape = (0, size, size) if grey else (0, size, size, 3)
    images = np.stack([a for a, _ in good]) if good else np.zeros(shape, np.uint8)
    seconds = time.perf_counter() - started
    log.warning("%s: %d images converted in %.1f s (%.0f images/s), cached", listing.source.spec, len(good), seconds,
                len(good) / max(seconds, 1e-9))
    return Pixels(images, kept, [d for _, d in good], converted)


def _convert_npz(listing: Listing, size: int) -> Pixels:
    with np.load(listing.source.path) as npz:
        parts = [np.asarray(npz[f"{s}_images"]) for s in ("train", "val", "test")]
    images = np.concatenate(parts)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise SearchError(f"dataset {listing.source.spec!r}: images are {images.dtype} {images.shape}; MedMNIST's "
                          f"layout is uint8 (N, S, S) or (N, S, S, 3)")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.shape[1:3] != (size, size):
        images = _resize_array(images, size)
    digests = [hashlib.sha1(row.tobytes()).hexdigest() for row in images]
    return Pixels(np.ascontiguousarray(images), np.ones(len(images), dtype=bool), digests, 0)


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS))
                     for im in images])


def _map(fn, items: list, what: str, *, unit: str, pooled: bool = True) -> list:  # type: ignore[no-untyped-def]
    """``fn`` over ``items`` on the cores this process may use (in order), with a progress bar on a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=what, unit=unit, disable=not sys.stderr.isatty(), leave=False)
    try:
        # A supervised worker is a daemonic process, which may start none: it converts alone (the supervisor's
        # own fetch converts first, on every core, so a worker only reads the cache).
        if len(items) < IN_PROCESS or env.cores() == 1 or current_process().daemon or not pooled:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update(1)
            return out
        # spawn, not fork: the caller may be a worker whose torch threads a fork would copy mid-lock
        with ProcessPoolExecutor(env.cores(), mp_context=get_context("spawn")) as pool:
            out = []
            for result in pool.map(fn, items, chunksize=64):
                out.append(result)
                bar.update(1)
            return out
    finally:
        bar.close()


def _mode_of(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode
    except Exception:  # any failure is the decoding's to name
        return None


def decode(job: tuple[str, int, bool]) -> tuple[np.ndarray, str] | str:
    """(pixels, content hash) of one file, or why it cannot be read (a string: the caller names the file)."""
    from PIL import Image, UnidentifiedImageError

    path, size, grey = job
    try:
        data = Path(path).read_bytes()
        if not data:
            return "the file is empty"
        import io

        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = _eight_bit(img)
            img = img.convert("L" if grey else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8).copy(), hashlib.sha1(data).hexdigest()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return f"{type(err).__name__}: {err}".splitlines()[0][:200]


def _eight_bit(img):  # type: ignore[no-untyped-def]
    """16-bit and float images (microscopy TIFFs) scaled to 8 bits: 16-bit by its full range, I and F clipped."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    if img.mode in ("I", "F"):
        return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8))
    return img


def duplicates_across(digests: list[str], split: np.ndarray) -> int:
    """How many images have a byte-identical copy in another split (a leak from test into train, say)."""
    where: dict[str, set[int]] = {}
    for digest, s in zip(digests, split.tolist()):
        where.setdefault(digest, set()).add(s)
    counts = Counter(digests)
    return sum(counts[d] for d, splits in where.items() if len(splits) > 1)


def _check_memory(listing: Listing, size: int, channels: int) -> None:
    """Before hours of conversion: the array must fit this machine's memory (the device is checked at load)."""
    need = len(listing.files) * size * size * channels
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * free:
        raise SearchError(f"dataset {listing.source.spec!r}: {len(listing.files):,} images at {size} px need "
                          f"{need / 2**30:.1f} GiB as uint8, and this machine has {free / 2**30:.1f} GiB free; use a "
                          f"smaller size (28 or 64 px) or a machine with more memory")


def read_arrays(spec: str, size: int, rule: owndata.SplitRule, *, skip_bad: bool = False
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], owndata.Listing]:
    """The source's splits as the shipped datasets' readers give them: split -> (uint8 images, labels (N, 1) or
    (N, K)), and the listing of the images kept."""
    listing = owndata.scan(spec)
    pixels = load_pixels(listing, size, skip_bad=skip_bad)
    keep = pixels.kept
    if not keep.all():
        listing = owndata.Listing(listing.source, listing.classes, listing.labels[keep],
                          None if listing.split is None else listing.split[keep],
                          [f for f, k in zip(listing.files, keep) if k])
        owndata.check_classes(listing)
    split = owndata.assign_splits(listing, rule)
    copies = duplicates_across(pixels.digests, split)
    if copies:
        log.warning("%s: %d images have an identical copy in another split (train, val, test); a copy in test "
                    "flatters the test score", spec, copies)
    labels = listing.labels if listing.multi_label else listing.labels[:, None]
    arrays = {s: (pixels.images[split == i], labels[split == i]) for i, s in enumerate(owndata.SPLITS)}
    for s, (images, _) in arrays.items():
        if len(images) == 0:
            raise SearchError(f"dataset {spec!r}: the {s} split is empty; give the source a {s} split, or set "
                              f"{'val_fraction' if s == 'val' else 'test_fraction'} above 0")
    return arrays, listing


def channels_of(listing: owndata.Listing) -> int:
    """1 or 3: the mode most of the source's images have (an .npz: its arrays' shape)."""
    if listing.source.kind == "npz":
        with np.load(listing.source.path) as npz:
            shape = npz["train_images"].shape
        return 3 if len(shape) == 4 and shape[3] == 3 else 1
    modes = [m for m in _map(_mode_of, listing.files, "reading headers", unit="file", pooled=False) if m is not None]
    grey = sum(1 for m in modes if m in GREY_MODES)
    return 1 if grey >= len(modes) - grey else 3
