"""Ctrl-C and SIGTERM, handled one way in every `search` process, from its first instant to its last.

The handler only records the first signal (a second one sees the record and does nothing): it never switches
handlers, so no signal can arrive while a Python handler is being replaced (CPython then raises "OSError: Signal N
ignored due to race condition"), and it never raises inside a storage call, an import or a library's cleanup.
Long work polls instead, at safe points: the training loop checks once per batch (`check`), the supervisor once
per loop turn, a worker between trials. Blocking calls that cannot poll (serving the dashboard, a download) run
inside `raising()`, where the first signal raises at once.

Worker processes start with SIGINT ignored (`shielded_children`): the terminal's Ctrl-C reaches the whole
process group, and the supervisor alone decides how its workers stop (SIGTERM, which they record like this). A
worker therefore never sees two signals for one Ctrl-C, and never prints a traceback for one.

This module imports nothing of the project: every floor may use it.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(KeyboardInterrupt):
    """Raised at a safe point after SIGINT or SIGTERM. A KeyboardInterrupt, so that Optuna fails the running
    trial and re-raises it (an Exception would be caught as a trial failure and the worker would go on)."""


_received: str | None = None  # the first signal's name, e.g. "SIGINT"
_raising = 0  # > 0 inside raising(): the first signal raises at once


def _on_signal(signum: int, _frame: Any) -> None:
    global _received
    if _received is not None:
        return  # the first signal's stop is under way; a second Ctrl-C must not interrupt its cleanup
    _received = signal.Signals(signum).name
    if _raising:
        raise Stop(_received)


def install() -> None:
    """Record SIGINT and SIGTERM from now on. A signal the process inherited as ignored stays ignored: a worker
    started by the supervisor (SIGINT), or a command started in the background by a shell. A stop signal that
    the process inherited as blocked (a worker: see `shielded_children`) is unblocked once its handler is set,
    so one that came during start-up is recorded now."""
    installed = set()
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
            installed.add(signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)


def requested() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _received


def check() -> None:
    """Raise :class:`Stop` if a stop signal arrived: call it where stopping is safe."""
    if _received is not None:
        raise Stop(_received)


@contextmanager
def raising() -> Iterator[None]:
    """Inside this block the first stop signal raises :class:`Stop` at once (and one that came before raises on
    entry): for blocking calls that cannot poll. Nothing inside may need cleanup that a KeyboardInterrupt skips."""
    global _raising
    _raising += 1
    try:
        check()
        yield
    finally:
        _raising -= 1


@contextmanager
def shielded_children() -> Iterator[None]:
    """Processes started inside this block begin with SIGINT ignored: an ignored signal stays ignored across
    exec (Python then installs no KeyboardInterrupt handler), so the terminal's Ctrl-C never reaches a worker.
    (SIGTERM is not shielded: a multiprocessing spawn child does not inherit the blocked mask, so a SIGTERM while a
    worker still imports ends it by the default action, silently; the supervisor kills such workers anyway.) Both
    signals are blocked in this process meanwhile, so one that comes during the switch waits in the kernel and
    reaches this process's own handler afterwards. Known gap: a SIGINT that arrives between the block and the
    switch to SIG_IGN is discarded by that switch (POSIX discards a pending signal set to SIG_IGN).
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
