"""Is a folder on a network filesystem? Read from the kernel's answer to statfs(2): its ``f_type`` magic number.

SQLite relies on POSIX advisory locks, which NFS, Lustre, GPFS, BeeGFS and CIFS/SMB implement loosely or not at
all across hosts: several workers writing one SQLite file there can corrupt it without an error (SQLite's "How To
Corrupt An SQLite Database File", section 2.1; Optuna's RDBStorage docs). `os.statvfs` does not report the type,
so libc's statfs is called through ctypes. Linux only: elsewhere nothing is detected (None).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Callable

# From linux/magic.h and the filesystems' own sources (statfs(2) lists most of them).
NETWORK: dict[int, str] = {
    0x6969: "NFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x19830326: "BeeGFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x00C36400: "CephFS",
    0x5346414F: "AFS",
}

# The seam: a statfs(path, buffer) -> int with libc's signature. Tests put a function here that fills the buffer
# with another filesystem's answer; everything after the call runs as it does on the real one.
StatFs = Callable[[bytes, ctypes.Array], int]
STATFS: StatFs | None = None
_BUFFER = 512  # larger than struct statfs on every Linux architecture (120 bytes on x86_64)


def _libc_statfs() -> StatFs:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.statfs
    fn.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


def type_of(folder: Path) -> int | None:
    """The ``f_type`` magic number of the filesystem holding ``folder``; None off Linux or when statfs fails."""
    if not sys.platform.startswith("linux"):
        return None
    call = STATFS or _libc_statfs()
    buffer = ctypes.create_string_buffer(_BUFFER)
    if call(os.fsencode(folder), buffer) != 0:
        return None
    # struct statfs begins with f_type, a __fsword_t: a C long on Linux's 64-bit and 32-bit ABIs alike.
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def network_filesystem(folder: Path) -> str | None:
    """The name of the network filesystem holding ``folder`` (NFS, Lustre, GPFS, ...), or None when it is local."""
    magic = type_of(folder)
    return NETWORK.get(magic) if magic is not None else None
