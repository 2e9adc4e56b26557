"""Inside a worker process: the supervised worker of `search start`, and the standalone `search worker`.

A supervised worker talks to its supervisor over one pipe, in the messages below: before each trial it asks for a
ticket (the supervisor alone keeps the budget exact), says which trial it started (so the supervisor can fail that
trial if this process dies), and reports each finished trial.

Stopping (search/interrupt.py): a supervised worker starts with SIGINT and SIGTERM blocked; from its first line
on it ignores SIGINT, records SIGTERM and stops at the next safe point (a batch boundary, or while it waits for a
ticket). Its running trial is then FAIL with reason "interrupted" (Optuna fails a trial whose objective raised a
KeyboardInterrupt, and re-raises it).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable

import optuna
from optuna.trial import TrialState

from search import interrupt, quiet
from search.errors import Interrupted
from search.hpo import objectives as goals
from search.hpo import progress, slots
from search.hpo.storage import FINISHED, retry_once
from search.hpo.studies import StudySpec, make_pruner, make_sampler
from search.hpo.urls import worker_id

# --- the pipe protocol ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """worker -> supervisor: may I start a trial? Answered with GO or STOP."""


@dataclass(frozen=True)
class Started:
    """worker -> supervisor: trial `number` runs in this process now."""

    number: int


@dataclass(frozen=True)
class Done:
    """worker -> supervisor: trial `number` ended in `state` (a TrialState name), with the reason of a failure."""

    number: int
    state: str
    reason: str | None


@dataclass(frozen=True)
class Epoch:
    """worker -> supervisor: trial `number` finished epoch `epoch` of `epochs` (for the progress lines)."""

    number: int
    epoch: int
    epochs: int
    value: float
    images_per_second: float


GO, STOP = "go", "stop"  # supervisor -> worker, the answers to a Ticket
Message = Ticket | Started | Done | Epoch


def drain(conn: Connection) -> list[Message]:
    """Every message waiting in the pipe; none more once the other end is gone (its exit is seen elsewhere)."""
    messages: list[Message] = []
    try:
        while conn.poll():
            messages.append(conn.recv())
    except (EOFError, OSError):
        pass
    return messages


# --- a worker process -----------------------------------------------------------------------------------


def open_study(spec: StudySpec, storage_url: str, seed_offset: int) -> optuna.Study:
    from search.hpo.storage import open_storage

    return optuna.load_study(study_name=spec.name, storage=open_storage(storage_url),
                             sampler=make_sampler(spec, seed_offset), pruner=make_pruner(spec))


def set_threads(device: str, threads: int) -> None:
    if device == "cpu" and threads > 0:
        import torch

        torch.set_num_threads(threads)


def supervised(conn: Connection, spec: StudySpec, storage_url: str, seed_offset: int, device: str,
               threads: int) -> None:
    """A supervised worker's process: one ticket, one trial, until the supervisor says stop (or sends SIGTERM)."""
    interrupt.install_in_worker()  # SIGTERM is recorded from here on (it was blocked until now); SIGINT ignored
    quiet.libraries(worker=True)
    from search.hpo.objective import Objective

    try:
        set_threads(device, threads)
        study = open_study(spec, storage_url, seed_offset)
        objective = Objective(spec, device, on_start=lambda number: conn.send(Started(number)),
                              on_epoch=lambda *progress: conn.send(Epoch(*progress)))
        while True:
            interrupt.check()
            conn.send(Ticket())
            if _answer(conn) != GO:
                break
            done: list[optuna.trial.FrozenTrial] = []
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                           callbacks=[lambda _s, t, done=done: done.append(t)])
            t = done[-1]
            conn.send(Done(t.number, t.state.name, t.user_attrs.get("reason")))
        # Every result is in the store and reported: skip the interpreter's teardown, which with torch loaded
        # takes seconds that the supervisor (and the user) would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except KeyboardInterrupt:  # interrupt.Stop: the running trial, if any, is already marked FAIL (interrupted)
        os._exit(130)  # skip interpreter teardown: nothing is left to save
    except (EOFError, BrokenPipeError):
        os._exit(3)  # the supervisor is gone


def _answer(conn: Connection) -> str:
    """The supervisor's answer to a Ticket; a stop signal that comes while waiting is seen at once."""
    while not conn.poll(0.2):
        interrupt.check()
    return conn.recv()


def run_worker(spec: StudySpec, storage_url: str, *, trials: int, device: str, seed_offset: int,
               echo: Callable[[str], None], threads: int | None = None) -> int:
    """`search worker`: no supervisor. Stops once the study holds `trials` finished trials (Optuna's
    MaxTrialsCallback; workers that already started a trial may overshoot by that trial)."""
    from search.hpo.objective import Objective

    interrupt.install()  # the CLI did already; a no-op then
    quiet.libraries(worker=True)
    if threads is None and device == "cpu":
        threads = slots.default_threads()  # None while $OMP_NUM_THREADS is set: torch follows it
    if threads is not None:
        set_threads(device, threads)
    study = open_study(spec, storage_url, seed_offset)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done >= trials:
        echo(f"study '{spec.name}' already has {done} finished trials (budget {trials}); nothing to do")
        return 0
    where = device
    if device == "cpu":
        import torch

        where = f"cpu ({torch.get_num_threads()} threads)"
    echo(f"worker {worker_id()} on {where}: joining study '{spec.name}' ({done}/{trials} finished)")

    board = progress.Board(echo)  # this worker's line: redrawn on a terminal, every 30 s elsewhere
    began = time.monotonic()

    def show(line: progress.WorkerLine) -> None:
        board.show([line.text(f"worker {worker_id()}", spec.metric)],
                   f"[{time.monotonic() - began:6.0f} s] study '{spec.name}'")

    def report(_study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        value = goals.values_text(spec.objectives, t.values) if spec.multi else (
            f"{t.value:.4f}" if t.value is not None else "-")
        extra = f" ({t.user_attrs['reason']})" if t.state == TrialState.FAIL and "reason" in t.user_attrs else ""
        board.say(f"trial {t.number}: {t.state.name.lower()} {value}{extra}")

    def stop_between_trials(study: optuna.Study, _t: optuna.trial.FrozenTrial) -> None:
        if interrupt.requested():
            study.stop()

    objective = Objective(spec, device, on_start=lambda n: show(progress.WorkerLine(trial=n)),
                          on_epoch=lambda *p: show(progress.WorkerLine(*p)))
    try:
        interrupt.check()
        study.optimize(objective, n_trials=None, timeout=spec.timeout, catch=(Exception,),
                       gc_after_trial=False, callbacks=[
                           optuna.study.MaxTrialsCallback(trials, states=FINISHED), report, stop_between_trials])
        interrupt.check()
        board.close()
        if spec.timeout is not None and time.monotonic() - began >= spec.timeout:
            done = len(study.get_trials(deepcopy=False, states=FINISHED))
            echo(f"timeout of {spec.timeout:g} s reached with {done}/{trials} finished trials")
    except KeyboardInterrupt:  # interrupt.Stop, from the training loop or between trials
        board.close()
        what = "no trial was running"
        number = objective.trial_number
        if number is not None:
            trial = study.get_trials(deepcopy=False)[number]
            if trial.state == TrialState.FAIL and trial.user_attrs.get("reason") == "interrupted":
                retry_once(study, trial, interrupted=True)  # the next worker resumes it from its checkpoint
                what = f"trial {number} was stopped and will resume from its last finished epoch"
        raise Interrupted(f"interrupted ({interrupt.requested()}): {what}; run the same command to go on") from None
    return 0
