"""Per-host worker slots: which GPU a `search worker --device cuda` trains on, and how many workers share a host.

A worker claims the lowest free slot k of its host (an flock on slot-k.lock in $SEARCH_SLOTS, held for the
process's life and released by the kernel however it ends, so never stale) and trains on visible GPU k mod the
GPUs it sees, given to it as search/devices.py gives a child its card. This is how docker compose replicas, which
all get every GPU and know no index of their own, spread over the cards. The slots held also say how many
workers share the host where $SEARCH_WORKERS_PER_HOST does not (the default of `--threads`).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from search import devices, env
from search.errors import SearchError

NAME = "slot-{}.lock"


def folder() -> Path:
    """The host's slot folder: $SEARCH_SLOTS, else search-slots-UID in the system's temporary folder."""
    return env.path("SEARCH_SLOTS") or Path(tempfile.gettempdir()) / f"search-slots-{os.getuid()}"


@dataclass
class Slot:
    number: int
    path: Path
    fd: int  # open and locked: the slot is this process's until it ends or release() closes it

    def release(self) -> None:
        os.close(self.fd)


def claim(where: Path) -> Slot:
    """The lowest-numbered free slot in ``where``, locked by this process."""
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        number = 0
        while True:
            path = where / NAME.format(number)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another worker holds it
                os.close(fd)
                number += 1
                continue
            return Slot(number, path, fd)
    except OSError as err:
        raise SearchError(f"cannot take a worker slot in {where}: {err.strerror}; set $SEARCH_SLOTS to a folder "
                          f"this user can write, shared by the workers of this host") from None


def held(where: Path) -> int:
    """How many slots in ``where`` are held now, this process's own included."""
    count = 0
    for path in where.glob(NAME.format("*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a worker holds it (its own file too)
        except BlockingIOError:
            count += 1
        finally:
            os.close(fd)  # and with it the shared lock just taken, if any
    return count


# --- the GPU of a slot ------------------------------------------------------------------------------------


def chooses_gpu(device: str, visible: str | None) -> bool:
    """Whether a worker asked for ``device`` picks its GPU by its slot: `--device cuda` (no index), with
    CUDA_VISIBLE_DEVICES (``visible``) unset or naming more than one GPU. `cuda:N`, or one GPU named, is kept."""
    return device == "cuda" and (visible is None or len(devices.entries(visible)) > 1)


_mine: Slot | None = None  # this process's slot, open until it ends


def take(device: str) -> str | None:
    """`search worker`: claim this process's slot in the host's folder. With `--device cuda` and several GPUs
    visible, keep only the slot's GPU visible (CUDA_VISIBLE_DEVICES): call this before torch initialises CUDA.
    Returns what the worker says of its GPU, or None when it did not pick one."""
    global _mine
    if _mine is None:
        _mine = claim(folder())
    visible = devices.visible()
    if not chooses_gpu(device, visible):
        return None
    count = devices.gpu_count()
    if count < 2:
        return None
    gpu = devices.child_gpu(_mine.number % count, visible)  # visible GPU (slot mod count), as a child is given it
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return (f"slot {_mine.number} in {_mine.path.parent} -> {devices.physical_name(0, gpu)} of {count} "
            f"(CUDA_VISIBLE_DEVICES={gpu}: cuda:0 here)")


# --- CPU threads ------------------------------------------------------------------------------------------


def workers_per_host() -> int | None:
    """$SEARCH_WORKERS_PER_HOST: how many workers share this host (compose sets it to the replica count)."""
    return env.whole("SEARCH_WORKERS_PER_HOST", minimum=1, unit="workers")


def default_threads(available: int | None = None) -> int | None:
    """`search worker --threads`' default. None while $OMP_NUM_THREADS is set: the user chose, and torch follows
    it. Else the cores (``available``, default this process's) divided by the workers on this host:
    $SEARCH_WORKERS_PER_HOST, else the slots held now (this worker's own included); at least 1."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    workers = workers_per_host() or held(folder())
    return max(1, (available if available is not None else env.cores()) // max(1, workers))
