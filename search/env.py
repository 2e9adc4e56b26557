"""Every environment variable the code reads, in one place: read when used (never at import), checked like any
other input, and a bad value is one line naming the variable. README.md lists the same variables."""
from __future__ import annotations

import math
import os
from pathlib import Path

from search.errors import SearchError

# The defaults of the variables below: each one's owner, which the code reads and the table's text quotes.
DEFAULT_STORAGE = "sqlite:///search.db"
HEARTBEAT_S = 10  # seconds between a running trial's heartbeats
GRACE_BEATS = 3  # a RUNNING trial silent for this many beats is failed and retried
STORE_WAIT_S = 120  # seconds an unreachable store is waited for
PROXY_WAIT_S = 30.0  # seconds a worker started beside its proxy (compose, a job script) waits for it to listen


def grace_s(beat: float) -> int:
    """The default grace period for heartbeats every ``beat`` seconds: GRACE_BEATS of them."""
    return int(GRACE_BEATS * beat)


#: name -> what it sets; README.md's "Environment variables" table says the same.
VARIABLES: dict[str, str] = {
    "SEARCH_STORAGE": f"the study store URL when --storage is not given (default {DEFAULT_STORAGE})",
    "SEARCH_DATA_DIR": "the folder of the dataset files when a config has no data_dir (default ~/.medmnist)",
    "SEARCH_ARTIFACTS": "the folder of the trials' files (default: artifacts/ beside a SQLite store)",
    "SEARCH_HEARTBEAT_S": f"seconds between a running trial's heartbeats (default {HEARTBEAT_S})",
    "SEARCH_GRACE_S": f"seconds without a heartbeat before a running trial is failed and retried (default "
                      f"{GRACE_BEATS} beats)",
    "SEARCH_ALLOW_NETWORK_SQLITE": "any value: use a SQLite store on a network filesystem anyway "
                                   "(--allow-network-sqlite sets it)",
    "SEARCH_STORE_WAIT_S": f"seconds an unreachable study store is waited for before the command gives up (default "
                           f"{STORE_WAIT_S})",
    "SEARCH_PROXY_WAIT_S": f"seconds a worker waits for a grpc:// storage proxy to answer (default {PROXY_WAIT_S:g})",
    "SEARCH_SLOTS": "the folder of the per-host worker slots (default search-slots-UID in the temporary folder)",
    "SEARCH_WORKERS_PER_HOST": "how many `search worker` processes share this host (default: the slots held)",
}


def text(name: str) -> str | None:
    """The variable's value; None when it is unset or empty (an empty value means "not set", as in a shell)."""
    assert name in VARIABLES, name  # a new variable must be listed (and documented) first
    return os.environ.get(name) or None


def path(name: str) -> Path | None:
    value = text(name)
    return user_path(value, what=f"${name}") if value is not None else None


def user_path(value: str | os.PathLike[str], *, what: str) -> Path:
    """``value`` with a leading ~ or ~user expanded (HOME is read here); one that cannot be is one line naming
    ``what``, not pathlib's RuntimeError."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise SearchError(f"{what} '{value}': '~' cannot be expanded (no such user, or no home folder)") from None


def seconds(name: str, default: float, *, integer: bool = False, minimum: float = 0) -> float:
    """A duration in seconds: ``default`` when unset; a value that is not a number of at least ``minimum`` (a whole
    number when ``integer``) is a SearchError naming the variable."""
    raw = text(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise SearchError(f"${name} must be {kind} of seconds, at least {minimum:g}; got {raw!r}")
    return value


def whole(name: str, *, minimum: int = 1, unit: str = "") -> int | None:
    """A whole number of at least ``minimum`` (``unit``: what it counts, for the message); None when unset; any
    other value is a SearchError naming the variable."""
    raw = text(name)
    if raw is None:
        return None
    try:
        value: int | None = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise SearchError(f"${name} must be a whole number{f' of {unit}' if unit else ''}, at least {minimum}; "
                          f"got {raw!r}")
    return value


def cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
