"""`search worker`: one worker without a supervisor, e.g. on another machine, joining a study in a shared store.

The one thing to know: without a supervisor nobody hands out tickets, so the budget is Optuna's
MaxTrialsCallback, and workers that started a trial as the budget filled may overshoot it by that trial. A packed
worker asks for no more members than the budget leaves beside the trials running now (`room`). A worker
takes its host's slot first (search/hpo/slots.py), which may choose its GPU. A failure that is not the user's
input ends it with one line; the traceback goes to the trial's log or to search-worker-<id>.log.
"""
from __future__ import annotations

import time
import traceback
import zlib
from typing import Callable

import optuna
from optuna.trial import TrialState

from search import interrupt, quiet
from search.errors import Interrupted, ProcessFailed, SearchError, reason, store_fault
from search.hpo import goals, progress, queue, slots, supervisor, trial_log
from search.hpo.storage import FINISHED, fail_running, retry_once
from search.hpo.store import Store, locate
from search.hpo.studies import StudySpec
from search.hpo.urls import worker_id
from search.hpo.worker import open_study, set_threads


def standalone(spec: StudySpec, storage: Store | str | None, *, device: str, threads: int | None, seeded: bool,
               allow_changes: bool, echo: Callable[[str], None]) -> int:
    """`search worker`: take this host's slot (and with it maybe a GPU), check the data, join or create the study
    and run its trials. ``seeded``: the spec's sampler seed is the worker's own (--seed); else the worker adds a
    number derived from its id, so that workers do not draw the same trials."""
    store = locate(storage)
    try:
        from search.devices import resolve_device  # loads torch: a process short of memory may fail right here

        slots.workers_per_host()  # a bad $SEARCH_WORKERS_PER_HOST: one line, before anything is written
        gpu = slots.take(device)  # this host's lowest free slot; its GPU is set before CUDA starts (resolve_device)
        if gpu is not None:
            echo(f"worker {worker_id()}: {gpu}")
        dev = str(resolve_device(device))
        supervisor.prepare_data(spec)
        supervisor.ensure_study(spec, store, allow_changes=allow_changes)
    except (SearchError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise _failed(err, store, None, []) from None
    # Not the pid alone: in containers every worker has the same one; the worker id holds the host name too.
    offset = 0 if seeded else zlib.crc32(worker_id().encode())
    return run_worker(spec, store, trials=spec.trials, device=dev, threads=threads, seed_offset=offset, echo=echo)


def _failed(err: Exception, store: Store, study: optuna.Study | None, numbers: list[int]) -> SearchError:
    """The one line of a worker that failed on ``err`` (being handled); its traceback goes to the log of its trial
    (a pack's first) while its trials run (then failed, and queued to run again), else to search-worker-<id>.log.
    After a store fault, the fault's line: nothing more can be written, and the trials stay RUNNING, to resume."""
    from search.hpo import artifacts

    fault = store_fault()
    if fault is not None:
        return fault

    text = traceback.format_exc()
    folder = artifacts.artifact_dir(store.url)
    trial = numbers[0] if numbers else None
    log = trial_log.record_crash(text, study=study, trial=trial, folder=folder, worker=worker_id())
    where = log if log is not None else f"trial {trial}'s log (search status --trial {trial})"
    for number in numbers if study is not None else []:
        try:  # the next worker resumes it; a store that is what failed leaves it to the heartbeat's grace period
            failed = fail_running(study._storage, study, number, f"worker {worker_id()} failed: {reason(err)}")
            if failed is not None and failed.state == TrialState.FAIL:
                retry_once(study, failed)
        except Exception:
            pass
    return ProcessFailed(f"worker {worker_id()} failed: {reason(err)}; traceback in {where}")


def _where(device: str) -> str:
    if device != "cpu":
        return device
    import torch

    return f"cpu ({torch.get_num_threads()} threads)"


def _interrupted(study: optuna.Study, numbers: list[int]) -> Interrupted:
    """The line of a worker stopped by a signal; its interrupted trials are queued again, to resume from their
    checkpoints in the next worker."""
    stopped = []
    for number in numbers:
        trial = study.get_trials(deepcopy=False)[number]
        if trial.state == TrialState.FAIL and trial.user_attrs.get("reason") == "interrupted":
            retry_once(study, trial, interrupted=True)
            stopped.append(number)
    what = "no trial was running"
    if len(stopped) == 1:
        what = f"trial {stopped[0]} was stopped and will resume from its last finished epoch"
    elif stopped:
        what = f"trials {', '.join(map(str, stopped))} were stopped and will each resume from its last finished epoch"
    return Interrupted(f"interrupted ({interrupt.requested()}): {what}; run the same command to go on")


def run_worker(spec: StudySpec, store: Store, *, trials: int, device: str, seed_offset: int,
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
    try:
        study = open_study(spec, store, seed_offset)
    except (SearchError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise _failed(err, store, None, []) from None
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done >= trials:
        echo(queue.beyond_budget(study, trials)
             or f"study '{spec.name}' already has {done} finished trials (budget {trials}); nothing to do")
        return 0
    echo(f"worker {worker_id()} on {_where(device)}: joining study '{spec.name}' ({done}/{trials} finished)")

    board = progress.Board(echo)  # this worker's line: redrawn on a terminal, every 30 s elsewhere
    began = time.monotonic()

    line = progress.WorkerLine()

    def show() -> None:
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

    def start(number: int) -> None:
        line.start(number)
        show()

    def pack(numbers: list[int]) -> None:
        if len(numbers) > 1:
            line.pack(numbers)
        show()

    def epoch(*progress: object) -> None:
        line.update(*progress)  # type: ignore[arg-type]
        show()

    objective = Objective(spec, device, on_start=start, on_epoch=epoch, on_pack=pack,
                          on_done=lambda t: report(study, t), on_note=board.say)
    objective.size = lambda s: room(s, trials, spec.pack)
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
        raise _interrupted(study, objective.trial_numbers) from None
    except SearchError:
        raise
    except Exception as err:  # outside the objective (which records its own failures): Optuna's or the store's
        board.close()
        raise _failed(err, store, study, objective.trial_numbers) from None
    return 0


def room(study: optuna.Study, trials: int, pack: int) -> int:
    """The members of this worker's next pack: at most ``pack``, and no more than the budget leaves beside the trials
    finished and running (this pack's first among them); at least the one trial already asked for."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(s in FINISHED for s in states)
    running = sum(s == TrialState.RUNNING for s in states)
    return max(1, min(pack, trials - finished - running + 1))
