"""Inside a worker process: the supervised worker of `search start`, and the standalone `search worker`.

A supervised worker talks to its supervisor over one pipe, in the messages below: before each trial it asks for a
ticket (the supervisor alone keeps the budget exact; a packed worker asks for one per member and may get fewer),
says which trials it started (so the supervisor can fail them if this process dies), and reports each finished
trial.

Stopping (search/interrupt.py): a supervised worker starts with SIGINT and SIGTERM blocked; from its first line
on it ignores SIGINT, records SIGTERM and stops at the next safe point (a batch boundary, or while it waits for a
ticket). Its running trial is then FAIL with reason "interrupted" (Optuna fails a trial whose objective raised a
KeyboardInterrupt, and re-raises it).
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import optuna

from search import errors, interrupt, quiet
from search.hpo.store import Store
from search.hpo.studies import StudySpec, make_pruner, make_sampler

# --- the pipe protocol ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """worker -> supervisor: may I start up to `trials` trials (a pack)? Answered with how many (at least 1), or STOP.
    Every trial of the worker's last ticket has ended (and was reported) when it asks again."""

    trials: int = 1


@dataclass(frozen=True)
class Started:
    """worker -> supervisor: trial `number` runs in this process now."""

    number: int


@dataclass(frozen=True)
class Packed:
    """worker -> supervisor: trials `numbers` (the first one's included) run in this process now as one pack; the
    tickets it holds beyond them go back."""

    numbers: tuple[int, ...]


@dataclass(frozen=True)
class Done:
    """worker -> supervisor: trial `number` ended in `state` (a TrialState name), with the reason of a failure."""

    number: int
    state: str
    reason: str | None


@dataclass(frozen=True)
class Epoch:
    """worker -> supervisor: trial `number` finished epoch `epoch` of `epochs` (for the progress lines); `leaves`: it
    was pruned there, and leaves its pack."""

    number: int
    epoch: int
    epochs: int
    value: float
    images_per_second: float
    leaves: bool = False


@dataclass(frozen=True)
class Note:
    """worker -> supervisor: a line for the terminal (the store is unreachable and waited for)."""

    text: str


@dataclass(frozen=True)
class Say:
    """worker -> supervisor: a line for the terminal, as it is (a pack's first trial runs alone, and why)."""

    text: str


@dataclass(frozen=True)
class Fault:
    """worker -> supervisor: the store failed (search/errors.py: StoreFault); this worker exits with `exit_code`."""

    text: str
    exit_code: int


@dataclass(frozen=True)
class Crashed:
    """worker -> supervisor: this process ends on an error: its one-line reason, and its traceback for the log."""

    reason: str
    traceback: str


STOP = "stop"  # supervisor -> worker: the answer to a Ticket when no trial may start (else the number that may)
Message = Ticket | Started | Packed | Done | Epoch | Crashed | Note | Say | Fault


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


def open_study(spec: StudySpec, store: Store, seed_offset: int) -> optuna.Study:
    from search.hpo.storage import open_storage

    return optuna.load_study(study_name=spec.name, storage=open_storage(store),
                             sampler=make_sampler(spec, seed_offset), pruner=make_pruner(spec))


def set_threads(device: str, threads: int) -> None:
    if device == "cpu" and threads > 0:
        import torch

        torch.set_num_threads(threads)


def supervised(conn: Connection, spec: StudySpec, store: Store, seed_offset: int, device: str,
               threads: int) -> None:
    """A supervised worker's process: one ticket, one trial (or pack), until the supervisor says stop (or sends
    SIGTERM)."""
    interrupt.install_in_worker()  # SIGTERM is recorded from here on (it was blocked until now); SIGINT ignored
    quiet.libraries(worker=True)
    from search.hpo import faults

    lock = threading.Lock()  # the heartbeat thread sends too (a store's outage seen there first)

    def send(message: Message) -> None:
        with lock:
            conn.send(message)

    faults.on_wait(lambda text: send(Note(text)))
    try:
        from search.hpo.objective import Objective  # torch: a process short of memory may fail right here

        set_threads(device, threads)
        study = open_study(spec, store, seed_offset)

        def done(t: optuna.trial.FrozenTrial) -> None:
            send(Done(t.number, t.state.name, t.user_attrs.get("reason")))

        objective = Objective(spec, device, on_start=lambda number: send(Started(number)),
                              on_epoch=lambda *progress: send(Epoch(*progress)),
                              on_pack=lambda numbers: send(Packed(tuple(numbers))), on_done=done,
                              on_note=lambda text: send(Say(text)))
        while True:
            interrupt.check()
            send(Ticket(spec.pack))
            answer = _answer(conn)
            if answer == STOP:
                break
            objective.size = answer
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                           callbacks=[lambda _s, t: done(t)])
        # Every result is in the store and reported: skip the interpreter's teardown, which with torch loaded
        # takes seconds that the supervisor (and the user) would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except KeyboardInterrupt:  # interrupt.Stop: the running trial, if any, is already marked FAIL (interrupted)
        os._exit(130)  # skip interpreter teardown: nothing is left to save
    except (EOFError, BrokenPipeError):
        os._exit(3)  # the supervisor is gone
    except Exception as err:  # no traceback on the terminal: the supervisor logs it and says one line
        fault = errors.store_fault()  # the store failed: its trial stays RUNNING, to resume; the supervisor says why
        try:
            send(Fault(fault.message, fault.exit_code) if fault is not None
                 else Crashed(errors.reason(err), traceback.format_exc()))
        except OSError:
            pass
        os._exit(fault.exit_code if fault is not None else 1)


def _answer(conn: Connection) -> int | str:
    """The supervisor's answer to a Ticket; a stop signal that comes while waiting is seen at once."""
    while not conn.poll(0.2):
        interrupt.check()
    return conn.recv()
