"""Per-host worker slots: which GPU a `search worker --device cuda` trains on, and how many workers share a host.

Why: docker compose cannot give each replica of a service its own GPU. A device reservation of `count: 1` gives
every replica the *first* GPU (docker/compose#11863), and a replica does not know its index. So the worker service
gets every GPU (`count: all`) and each worker picks one itself: it claims the lowest free slot k of its host, a
lock file slot-k.lock in a folder all the host's workers share ($SEARCH_SLOTS; in compose, a volume the replicas
mount), and trains on visible GPU k mod (number of visible GPUs). The same holds for workers started by hand.

A slot is an flock on an open file, held for the worker's whole life: the kernel releases it when the process
ends, however it ends (kill -9 included), so no slot is ever left stale and a worker that comes back after a crash
takes the lowest free one again. Nothing is written in the files.

The worker then sets CUDA_VISIBLE_DEVICES to that one GPU before torch initialises CUDA, and knows it as cuda:0,
as the workers of `search start` do (a trial's `device` attribute names the physical card: engine.device_label).
The GPUs are counted through NVML, as torch counts them before CUDA starts, which does not start CUDA here.

The slots held also say how many workers share the host where $SEARCH_WORKERS_PER_HOST does not: `--threads`
defaults to this process's cores divided by that number.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from search import env
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


def _entries(visible: str) -> list[str]:
    return [e.strip() for e in visible.split(",") if e.strip()]


def chooses_gpu(device: str, visible: str | None) -> bool:
    """Whether a worker asked for ``device`` picks its GPU by its slot: `--device cuda` (no index), with
    CUDA_VISIBLE_DEVICES (``visible``) unset or naming more than one GPU. `cuda:N`, or one GPU named, is kept."""
    return device == "cuda" and (visible is None or len(_entries(visible)) > 1)


def choose_gpu(slot: int, count: int, visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES of the worker in ``slot``: the (slot mod count)-th of the ``count`` GPUs it sees
    (``visible``: CUDA_VISIBLE_DEVICES before, indices or UUIDs; None: every GPU, in CUDA's order)."""
    entries = _entries(visible)[:count] if visible is not None else [str(i) for i in range(count)]
    if not entries:
        raise ValueError("no GPU to choose from")
    return entries[slot % len(entries)]


def gpu_count() -> int:
    """The GPUs CUDA would show this process (CUDA_VISIBLE_DEVICES applied), counted without starting CUDA here."""
    import torch

    if not torch.backends.cuda.is_built():
        return 0
    nvml = getattr(torch.cuda, "_device_count_nvml", None)  # what torch.cuda.device_count() asks before CUDA runs
    if nvml is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Can't initialize NVML": answered below
            count = nvml()
        if count >= 0:
            return count
    # No NVML here: count in a child process, so that CUDA starts there and not in this one.
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120, start_new_session=True)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


_mine: Slot | None = None  # this process's slot, open until it ends


def take(device: str) -> str | None:
    """`search worker`: claim this process's slot in the host's folder. With `--device cuda` and several GPUs
    visible, keep only the slot's GPU visible (CUDA_VISIBLE_DEVICES): call this before torch initialises CUDA.
    Returns what the worker says of its GPU, or None when it did not pick one."""
    global _mine
    if _mine is None:
        _mine = claim(folder())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not chooses_gpu(device, visible):
        return None
    count = gpu_count()
    if count < 2:
        return None
    gpu = choose_gpu(_mine.number, count, visible)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    from search.train.engine import physical_gpu

    return (f"slot {_mine.number} in {_mine.path.parent} -> {physical_gpu(0, gpu)} of {count} "
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
