"""Own data in the dataset registry: each source's DatasetInfo (search/train/data.py), the check that it fits the
device, and what model.pt keeps of it so that `search predict` runs where the source is not."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from search.errors import SearchError
from search.train import imagecache, owndata
from search.train.dataset_info import DatasetInfo
from search.train.readers import Arrays

if TYPE_CHECKING:
    import torch

_OWN: dict[str, DatasetInfo] = {}


def _no_reader(root: object, download: bool, size: int) -> Arrays:  # data._read reads own data itself
    raise AssertionError("own data is read by imagecache.read_arrays")


def info(name: str) -> DatasetInfo:
    """The DatasetInfo of an own-data source (scanned once per process): its classes and their names, its channels
    (the majority's mode), its task. Every size an architecture takes is offered: images are resized to it."""
    if name not in _OWN:
        from models import SIZES

        listing = owndata.scan(name)
        _OWN[name] = DatasetInfo(name, imagecache.channels_of(listing), len(listing.classes), owndata.task_of(listing),
                                 _no_reader, tuple(SIZES), listing.classes)
    return _OWN[name]


def check_fits(info: DatasetInfo, arrays: Arrays, device: torch.device) -> None:
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


def record(info: DatasetInfo) -> dict[str, object]:
    """What model.pt keeps of an own-data source ({} for the shipped datasets): enough to predict without it."""
    if not owndata.is_own(info.name):
        return {}
    return {"dataset_info": {"name": info.name, "channels": info.channels, "classes": list(info.labels or ()),
                             "task": info.task}}


def remember(saved: dict) -> None:
    """The DatasetInfo of a model.pt's own-data source, from what it kept (``record``), where the source itself
    cannot be read here (another machine, a moved folder)."""
    kept = saved.get("dataset_info")
    if not isinstance(kept, dict) or kept.get("name") in _OWN:
        return
    from models import SIZES

    name = str(kept["name"])
    _OWN[name] = DatasetInfo(name, int(kept["channels"]), len(kept["classes"]), str(kept["task"]), _no_reader,
                             tuple(SIZES), tuple(map(str, kept["classes"])))
