"""Ctrl-C and SIGTERM, handled one way in every `search` process, from its first instant to its last.

The handler only records the first signal (a second one sees the record and does nothing): it never switches
handlers, so no signal can arrive while a Python handler is being replaced (CPython then raises "OSError: Signal N
ignored due to race condition"), and it never raises inside a storage call, an import or a library's cleanup.
Long work polls instead, at safe points: the training loop checks once per batch (`check`), the supervisor once
per loop turn, a worker between trials. Blocking calls that cannot poll (serving the dashboard, a download) run
inside `raising()`, where the first signal raises at once.

Worker processes start with both signals blocked (`shielded_children`) and then ignore SIGINT
(`install_in_worker`): the terminal's Ctrl-C reaches the whole process group, and the supervisor alone decides
how its workers stop (SIGTERM, which they record like this). A worker never prints a traceback for a Ctrl-C.

This module imports nothing of the project: every floor may use it.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

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


def install(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """Record ``signals`` (SIGINT and SIGTERM) from now on. A signal the process inherited as ignored stays ignored
    (a command started in the background by a shell). A recorded signal that the process inherited as blocked (a
    worker: see `shielded_children`) is unblocked once its handler is set, so one that came during start-up is
    recorded now."""
    installed = set()
    for signum in signals:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
            installed.add(signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)


def install_in_worker() -> None:
    """A worker process's first line: deaf to SIGINT (the terminal's Ctrl-C is the supervisor's to handle; one
    that came during start-up is discarded), SIGTERM recorded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install((signal.SIGTERM,))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
    """Processes started inside this block begin with SIGINT and SIGTERM blocked, and a worker's first line
    (`install_in_worker`) ignores SIGINT and records SIGTERM: until then neither can interrupt its start-up (torch
    and Optuna loading), so it never prints a traceback for a Ctrl-C. Both are blocked in this thread meanwhile:
    one that comes now is taken by another thread (whose C-level handler flags it for this one) or waits in the
    kernel until the block ends; either way this process's handler records it. No
    handler is changed here: setting SIG_IGN, even briefly, would discard a signal already pending (POSIX), and a
    Ctrl-C would be lost: this process has other threads (torch's), and a signal that one of them takes while
    the handler is SIG_IGN is dropped.

    multiprocessing's resource tracker unblocks both signals in the calling thread when it starts (on the first
    spawn of a process's life), which would end the block before the worker is spawned: it is started first.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_shielded(process: Any, env: dict[str, str]) -> None:
    """Start ``process`` (a spawn-context multiprocessing Process, whose child inherits ``os.environ`` as it is at
    start()) with ``env`` added to its environment, inside `shielded_children`; this process's environment is
    restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with shielded_children():
            process.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# A child that has not stopped this long after its SIGTERM is killed: the user is promised a stop within 30 s.
STOP_GRACE_S = 20


def stop_children(processes: Sequence[Any], *, starting: Sequence[Any] = ()) -> None:
    """Stop ``processes`` (multiprocessing Processes) the one way: one SIGTERM to each live one, which it sees at its
    next safe point; SIGKILL at once to those still ``starting`` (importing, opening the store: they hold no trial
    and no write); each joined, and one still alive STOP_GRACE_S after the signals (stuck in a call that never
    returns to Python) is killed. One that already exited is simply joined."""
    import time

    for proc in processes:
        if proc.is_alive():
            if any(proc is s for s in starting):
                proc.kill()
            else:
                proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
