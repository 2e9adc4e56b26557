"""The study store's failures: which ones pass (a lock, an outage) and are waited out, and which end the command
in one line (a full disk, a damaged file, an outage longer than $SEARCH_STORE_WAIT_S).

`patient` wraps a storage method; `storage.retrying` applies it to every call that is safe to repeat (it says
which, and why). The wait is per process: every thread's calls share one outage and one deadline.
"""
from __future__ import annotations

import errno
import functools
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

from search import env
from search.errors import StoreFault, record_fault, store_fault
from search.hpo.store import mask, mask_text

REPORT_AFTER_S = 1.0  # an outage is reported once it lasted this long
# SQLite's busy timeout (search/hpo/storage.py sets it on every connection), and how long "database is locked" is
# waited out here when a call fails at once (SQLITE_BUSY_SNAPSHOT) rather than waiting in SQLite.
SQLITE_BUSY_TIMEOUT_S = 60

# What the drivers say, anywhere in an error's chain. An outage: the server restarted, shut down or dropped the
# connection (PostgreSQL: pg_terminate_backend, a failover), or a network filesystem's blip under SQLite.
_LOCKED = ("database is locked", "database table is locked")
_OUTAGE = ("server closed the connection", "terminating connection", "connection refused", "could not connect",
           "the database system is", "connection already closed", "no connection to the server",
           "connection has been closed", "connection reset", "could not receive data", "could not send data",
           "timeout expired", "server login has been failing", "not currently accepting connections",
           "disk i/o error", "unable to open database file", "statuscode.unavailable")
_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")
_DAMAGED = ("database disk image is malformed", "file is not a database", "file is encrypted or is not a database")
# What a file store's system calls say (the journal's, search/hpo/journal.py): a network filesystem's server that
# restarted or did not answer in time (EIO, ESTALE: the file handle went stale with it, ETIMEDOUT), or a full disk.
_ERRNO = {errno.EIO: "outage", errno.ESTALE: "outage", errno.ETIMEDOUT: "outage", errno.ENOSPC: "full",
          errno.EDQUOT: "full"}


def kind(err: BaseException | None) -> str | None:
    """"locked", "outage", "full", "damaged" or None (not a store fault), from the error and its causes."""
    seen = 0
    while err is not None and seen < 20:
        if getattr(err, "connection_invalidated", False):  # SQLAlchemy's dialect saw the connection die
            return "outage"
        if isinstance(err, OSError) and err.errno in _ERRNO:
            return _ERRNO[err.errno]
        text = str(err).lower()
        for name, marks in (("damaged", _DAMAGED), ("full", _FULL), ("locked", _LOCKED), ("outage", _OUTAGE)):
            if any(m in text for m in marks):
                return name
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def first_line(err: BaseException) -> str:
    """The driver's own words: the first line of the deepest error in the chain."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def store_wait_s() -> float:
    return env.seconds("SEARCH_STORE_WAIT_S", env.STORE_WAIT_S)


def _say(text: str) -> None:
    import logging

    logging.getLogger("search").warning(text)


class _Outage:
    """This process's view of the store: since when it has been unreachable, when it last came back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None
        self.said = False  # this outage is reported
        self.back_at: float | None = None
        self.say: Callable[[str], None] = _say  # a supervised worker sends it to its supervisor instead

    def failed(self, name: str, why: str) -> float:
        """An outage seen now: when it began. Reported once, by the first failure a second or more into it (a
        dropped connection that the next try replaces is not worth a line)."""
        now = time.monotonic()
        with self.lock:
            if self.since is None:
                self.since, self.said = now, False
            since, say = self.since, not self.said and now - self.since >= REPORT_AFTER_S
            self.said = self.said or say
        if say:
            self.say(f"store {name} unreachable ({why}); retrying for up to {store_wait_s():g} s")
        return since

    def answered(self) -> None:
        if self.since is None:
            return
        with self.lock:
            if self.since is not None:
                self.since, self.back_at = None, time.monotonic()


outage = _Outage()


def on_wait(say: Callable[[str], None]) -> None:
    """Where the one "store unreachable" line goes in this process (default: the "search" log, on stderr)."""
    outage.say = say


def came_back_within(seconds: float) -> bool:
    """True while the store is unreachable, or came back less than ``seconds`` ago: a heartbeat that other
    processes could not write meanwhile says nothing about whether their trials still run."""
    back = outage.back_at
    return outage.since is not None or (back is not None and time.monotonic() - back < seconds)


def patient(fn: Callable[..., Any], place: Callable[[Any], tuple[str, Path | None]], *,
            repeated: Callable[..., Any] | None = None, outages: bool = True,
            inner: bool = False) -> Callable[..., Any]:
    """``fn`` (a storage method), run again while the store is locked or (``outages``) unreachable; a fault that
    does not pass, or an outage longer than the wait, raises the one-line StoreFault (recorded: later calls raise it
    at once). Only the outermost patient call in a thread retries: one inside it shares its transaction.

    ``place(storage)``: the store's URL and its file (None: a server), for the messages (passwords masked here).
    ``repeated(storage, err, *args)``: for a call that is not safe to repeat blindly, what an error means on a try
    after an outage (the try before may have committed as its connection died): the call's result, or it raises.
    ``inner``: a step inside a storage call that is retried on its own even within a patient call (the journal's
    file reads and appends: search/hpo/journal.py says why); the outer call then sees only its final fault.
    """

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if inner:
            return _tries(fn, place, repeated, outages, self, args, kwargs)
        if getattr(_depth, "n", 0):
            return fn(self, *args, **kwargs)
        _depth.n = 1
        try:
            return _tries(fn, place, repeated, outages, self, args, kwargs)
        finally:
            _depth.n = 0

    return call


_depth = threading.local()


def _tries(fn: Callable[..., Any], place: Callable[[Any], tuple[str, Path | None]],
           repeated: Callable[..., Any] | None, outages: bool, self: Any, args: tuple, kwargs: dict) -> Any:
    delay, locked_since, after_outage = 0.01, None, False
    while True:
        fault = store_fault()
        if fault is not None:
            raise fault
        try:
            result = fn(self, *args, **kwargs)
        except Exception as err:
            what = kind(err)
            if what == "outage" and _no_space(place(self)[1]):
                what = "full"  # SQLite says "disk I/O error" when it cannot even create its -wal or -shm file
            if what == "outage" and not outages:
                raise
            if what is None or (what == "locked" and locked_since is not None
                                and time.monotonic() - locked_since > SQLITE_BUSY_TIMEOUT_S):
                if after_outage and repeated is not None:
                    return repeated(self, err, *args, **kwargs)
                raise
            if what in ("full", "damaged"):
                raise _give_up(what, place(self), err) from None
            if what == "locked":
                locked_since = locked_since or time.monotonic()
                cap = 0.5
            else:
                url = place(self)[0]
                since = outage.failed(mask(url), mask_text(first_line(err), url))
                if time.monotonic() - since > store_wait_s():
                    raise _give_up(what, place(self), err) from None
                after_outage, cap = True, 2.0  # short steps: a worker's heartbeat resumes soon after the store
            time.sleep(min(delay, cap) * (0.5 + random.random()))  # jitter: processes that collided do not again
            delay = min(2 * delay, cap)
            continue
        outage.answered()
        return result


def _no_space(file: Path | None) -> bool:
    try:
        if file is None:
            return False
        fs = os.statvfs(file.absolute().parent)
        return fs.f_bavail * fs.f_frsize < 64 * 1024  # less than SQLite's shared-memory file needs
    except OSError:
        return False


def _give_up(what: str, place: tuple[str, Path | None], err: BaseException) -> StoreFault:
    raw, file = place
    why, url = mask_text(first_line(err), raw), mask(raw)
    if what == "outage":
        text = (f"store {url} unreachable for {store_wait_s():g} s ({why}); the running trials are left to resume: "
                f"run the same command again once it answers (a longer wait: $SEARCH_STORE_WAIT_S)")
        return record_fault(StoreFault(text))
    if what == "full":
        where = f"the store's filesystem ({file.absolute().parent})" if file else f"the database server of {url}"
        return record_fault(StoreFault(f"no space left on {where}; free space and run the same command to resume"))
    if file is None:  # a server's own damage: its administrator's to repair
        return record_fault(StoreFault(f"the database of {url} is damaged ({why})", exit_code=2))
    return record_fault(StoreFault(damaged_text(file, why), exit_code=2))


def damaged_text(path: Path, why: str) -> str:
    """The line for a damaged SQLite file: which file, SQLite's diagnosis, how to recover."""
    new = path.with_name(f"{path.stem}-recovered{path.suffix}")
    return (f"the study store {path} is damaged (SQLite: {why}); recover what it holds into a new file with "
            f"`sqlite3 {path} .recover | sqlite3 {new}` and go on with --storage sqlite:///{new}, or restore a "
            f"backup")
