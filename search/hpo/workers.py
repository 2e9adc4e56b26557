"""Worker processes and the supervisor that runs them (`search start`), and the standalone `search worker`.

The supervisor is the only authority on the budget: a worker asks it for a ticket before each trial, so the
study ends with exactly the requested number of finished (complete or pruned) trials. A failed trial gives its
ticket back. The supervisor watches every worker's process sentinel, so a worker that dies (SIGKILL, out of
memory, crash) is noticed at once: its RUNNING trial is marked FAIL with the reason, its parameters are queued
once more, and a replacement worker starts. On Ctrl-C or SIGTERM it stops the workers, marks every trial they
left RUNNING as FAIL ("interrupted") and exits; the same command resumes the study.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from search.errors import SearchError
from search.hpo.studies import StudySpec, make_pruner, make_sampler

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STOP_GRACE_S = 20  # after this, workers that did not stop on SIGTERM are killed (the issue allows 30 s)


# --- inside a worker process ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: Any) -> None:
    # Ctrl-C reaches the worker directly and again through the supervisor's SIGTERM: the second signal must not
    # interrupt the cleanup (recording "interrupted" on the trial) that the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_on_signals() -> None:
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _quiet_logs() -> None:
    # The supervisor prints progress and each failure's reason (kept in the trial's `reason`); Optuna's per-trial
    # lines and tracebacks from N workers would bury it. SQLAlchemy logs a traceback ("Error closing cursor")
    # when Ctrl-C lands inside a query; the interrupt itself is handled, so that log is noise.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
    # Study files opt into experimental sampler options knowingly (pathmnist: TPE group=True); say it once, not per worker.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _open_study(spec: StudySpec, storage_url: str, seed_offset: int) -> optuna.Study:
    from search.hpo.storage import open_storage

    return optuna.load_study(study_name=spec.name, storage=open_storage(storage_url),
                             sampler=make_sampler(spec, seed_offset), pruner=make_pruner(spec))


def _set_threads(device: str, threads: int) -> None:
    if device == "cpu" and threads > 0:
        import torch

        torch.set_num_threads(threads)


def _worker_process(conn: Connection, spec: StudySpec, storage_url: str, seed_offset: int, device: str,
                    threads: int) -> None:
    """A supervised worker: one ticket, one trial, until the supervisor says stop."""
    _stop_on_signals()
    _quiet_logs()
    from search.hpo.objective import Objective

    try:
        _set_threads(device, threads)
        study = _open_study(spec, storage_url, seed_offset)
        objective = Objective(spec, device, on_start=lambda number: conn.send(("start", number)))
        while True:
            conn.send(("ticket",))
            if conn.recv() != "go":
                break
            done: list[optuna.trial.FrozenTrial] = []
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                           callbacks=[lambda _s, t: done.append(t)])
            t = done[-1]
            conn.send(("done", t.number, t.state.name, t.user_attrs.get("reason")))
    except KeyboardInterrupt:
        os._exit(130)  # the trial is already marked FAIL (interrupted); skip interpreter teardown
    except (EOFError, BrokenPipeError):
        os._exit(3)  # the supervisor is gone


def run_worker(spec: StudySpec, storage_url: str, *, trials: int, device: str, seed_offset: int,
               echo: Callable[[str], None]) -> int:
    """`search worker`: no supervisor. Stops once the study holds `trials` finished trials (Optuna's
    MaxTrialsCallback; workers that already started a trial may overshoot by that trial)."""
    from search.hpo.objective import Objective, worker_id

    _stop_on_signals()
    _quiet_logs()
    if "OMP_NUM_THREADS" not in os.environ:  # set, it is the user's choice (N workers on one host) and torch follows it
        _set_threads(device, os.cpu_count() or 1)
    study = _open_study(spec, storage_url, seed_offset)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done >= trials:
        echo(f"study '{spec.name}' already has {done} finished trials (budget {trials}); nothing to do")
        return 0
    echo(f"worker {worker_id()} on {device}: joining study '{spec.name}' ({done}/{trials} finished)")

    def report(_study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        extra = f" ({t.user_attrs['reason']})" if t.state == TrialState.FAIL and "reason" in t.user_attrs else ""
        echo(f"trial {t.number}: {t.state.name.lower()} {value}{extra}")

    try:
        study.optimize(Objective(spec, device), n_trials=None, timeout=spec.timeout, catch=(Exception,),
                       gc_after_trial=False, callbacks=[
                           optuna.study.MaxTrialsCallback(trials, states=FINISHED), report])
    except KeyboardInterrupt:
        echo("interrupted: the running trial was marked FAIL (interrupted); run the same command to resume")
        return 130
    return 0


# --- the supervisor --------------------------------------------------------------------------------------


@dataclass
class Slot:
    index: int  # the worker's number; its sampler seed is the study seed + this
    device: str
    env: dict[str, str]
    threads: int
    process: Any = None
    conn: Connection | None = None
    ticket: bool = False  # holds a ticket: a trial is (about to be) running
    waiting: bool = False  # asked for a ticket, not answered yet
    trial: int | None = None  # number of the trial it runs now
    stopped: bool = False  # was told to stop


def plan_devices(workers: int, devices: str | None) -> list[tuple[str, dict[str, str], int]]:
    """(device, environment, CPU threads) per worker: visible GPUs round-robin, else the CPU cores split evenly."""
    import torch

    if devices == "cpu":
        ids: list[str] = []
    elif devices:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        count = torch.cuda.device_count()
        bad = [d for d in ids if not d.isdigit() or int(d) >= count]
        if bad:
            valid = f"0..{count - 1}" if count else "none here (no CUDA GPU is visible); use --devices cpu"
            raise SearchError(f"--devices {devices}: no GPU {bad[0]}; valid GPU indices: {valid}")
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if ids:
        # Each worker sees only its own GPU, which it knows as cuda:0.
        return [("cuda:0", {"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]}, 0) for i in range(workers)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    return [("cpu", {"CUDA_VISIBLE_DEVICES": ""}, threads) for _ in range(workers)]


@dataclass
class Progress:
    finished: int = 0  # complete + pruned in this run
    pruned: int = 0
    failed: int = 0
    deaths: int = 0
    fail_streak: int = 0
    best: str = "-"
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, spec: StudySpec, storage_url: str, *, workers: int, trials: int, timeout: float | None,
                 devices: str | None, seed_offset: int, echo: Callable[[str], None]) -> None:
        from search.hpo.storage import open_storage

        self.spec, self.storage_url, self.echo = spec, storage_url, echo
        self.storage = open_storage(storage_url)
        self.study = optuna.load_study(study_name=spec.name, storage=self.storage)
        self.already = len(self.study.get_trials(deepcopy=False, states=FINISHED))
        self.budget = trials - self.already
        self.trials, self.timeout, self.seed_offset = trials, timeout, seed_offset
        self.slots = [Slot(i, dev, env, threads) for i, (dev, env, threads) in
                      enumerate(plan_devices(workers, devices))]
        self.next_index = len(self.slots)
        self.progress = Progress()
        self.interrupted: str | None = None
        self.abort: str | None = None
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA or thread state forked from the parent

    # -- worker lifecycle

    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe()
        saved = {k: os.environ.get(k) for k in slot.env}
        os.environ.update(slot.env)  # a spawned child inherits os.environ as it is at start()
        try:
            slot.process = self.ctx.Process(
                target=_worker_process, name=f"search-worker-{slot.index}", daemon=True,
                args=(child, self.spec, self.storage_url, self.seed_offset + slot.index, slot.device, slot.threads))
            slot.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        slot.conn, slot.ticket, slot.waiting, slot.trial, slot.stopped = parent, False, False, None, False

    def _replace(self, dead: Slot) -> Slot:
        slot = Slot(self.next_index, dead.device, dead.env, dead.threads)
        self.next_index += 1
        self.slots[self.slots.index(dead)] = slot
        self._spawn(slot)
        return slot

    def _worker_name(self, slot: Slot) -> str:
        return f"worker {slot.index} (pid {slot.process.pid})"

    def _fail_trial(self, number: int, reason: str, *, retry: bool) -> None:
        """Mark a RUNNING trial FAIL with `reason`; queue its parameters once more if `retry`."""
        trial = self.study.trials[number] if number < len(self.study.trials) else None
        if trial is None:
            return
        if trial.state == TrialState.RUNNING:
            self.storage.set_trial_user_attr(trial._trial_id, "reason", reason)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            trial = self.study.trials[number]
        if retry and trial.state == TrialState.FAIL:
            from search.hpo.storage import retry_once

            retry_once(self.study, trial)

    # -- the loop

    def _timed_out(self) -> bool:
        return self.timeout is not None and time.monotonic() - self.progress.started >= self.timeout

    def _closing(self) -> bool:
        return (self.progress.finished >= self.budget or self._timed_out() or self.abort is not None
                or self.interrupted is not None)

    def _dispatch(self) -> None:
        in_flight = sum(s.ticket for s in self.slots)
        for slot in self.slots:
            if not slot.waiting:
                continue
            if self._closing():
                slot.conn.send("stop")
                slot.waiting, slot.stopped = False, True
            elif self.progress.finished + in_flight < self.budget:
                slot.conn.send("go")
                slot.waiting, slot.ticket = False, True
                in_flight += 1

    def _on_message(self, slot: Slot, msg: tuple) -> None:
        p = self.progress
        if msg[0] == "ticket":
            slot.waiting = True
        elif msg[0] == "start":
            slot.trial = msg[1]
        elif msg[0] == "done":
            _, number, state, reason = msg
            slot.ticket, slot.trial = False, None
            if state in ("COMPLETE", "PRUNED"):
                p.finished += 1
                p.fail_streak = 0
                p.pruned += state == "PRUNED"
                if state == "COMPLETE":
                    best = self.study.best_trial
                    p.best = f"{best.value:.4f} (trial {best.number})"
            else:
                p.failed += 1
                p.fail_streak += 1
                self.echo(f"trial {number} failed: {reason or 'no reason recorded'}")
                if p.fail_streak >= 3 + 2 * len(self.slots):
                    self.abort = f"{p.fail_streak} trials in a row failed; the last: {reason}"
            self._show()

    def _on_death(self, slot: Slot) -> None:
        slot.process.join()
        code = slot.process.exitcode
        if slot.stopped and code == 0:
            return
        if self.interrupted is not None:
            return
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        self.progress.deaths += 1
        reason = f"{self._worker_name(slot)} died ({how})"
        if slot.trial is not None:
            self._fail_trial(slot.trial, reason, retry=True)
            self.progress.failed += 1
            self.echo(f"trial {slot.trial} failed: {reason}; its parameters are queued once more")
        else:
            self.echo(f"{reason}")
        if self.progress.deaths > 3 * len(self.slots):
            self.abort = f"workers keep dying ({self.progress.deaths} so far); the last: {reason}"
            slot.stopped = True
            return
        if not self._closing():
            self.echo(f"started replacement {self._worker_name(self._replace(slot))}")

    def _show(self) -> None:
        p = self.progress
        running = sum(s.ticket for s in self.slots)
        hours = max(time.monotonic() - p.started, 1e-9) / 3600
        self.echo(f"[{time.monotonic() - p.started:6.0f} s] finished {self.already + p.finished}/{self.trials} "
                  f"(pruned {p.pruned}), failed {p.failed}, running {running} | best {p.best} | "
                  f"{p.finished / hours:.0f} trials/h")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.interrupted = signal.Signals(signum).name

    def run(self) -> int:
        if self.budget <= 0:
            self.echo(f"study '{self.spec.name}' already has {self.already} finished trials "
                      f"(budget {self.trials}); nothing to do")
            return 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in self.slots:
                self._spawn(slot)
            devices = sorted({f"GPU {s.env['CUDA_VISIBLE_DEVICES']}" if s.device.startswith("cuda")
                              else f"cpu ({s.threads} threads each)" for s in self.slots})
            self.echo(f"study '{self.spec.name}': {len(self.slots)} workers on {', '.join(devices)}; "
                      f"{self.already} finished before, {self.budget} to go")
            while any(s.process.is_alive() or s.conn is not None for s in self.slots):
                if self.interrupted is not None:
                    return self._shutdown()
                self._dispatch()
                self._poll(timeout=0.5)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        if self.abort is not None:
            raise SearchError(f"search stopped: {self.abort}")
        done = self.already + self.progress.finished
        if self._timed_out() and done < self.trials:
            self.echo(f"timeout of {self.timeout:g} s reached with {done}/{self.trials} finished trials")
        return 0

    def _poll(self, timeout: float) -> None:
        live = [s for s in self.slots if s.conn is not None]
        ready = wait([s.conn for s in live] + [s.process.sentinel for s in live], timeout=timeout)
        for slot in live:
            if slot.conn in ready:
                try:
                    while slot.conn.poll():
                        self._on_message(slot, slot.conn.recv())
                except (EOFError, OSError):
                    pass  # the process is gone; its sentinel says how
            if slot.process.sentinel in ready or not slot.process.is_alive():
                try:  # read what it sent before it died
                    while slot.conn.poll():
                        self._on_message(slot, slot.conn.recv())
                except (EOFError, OSError):
                    pass
                slot.conn.close()
                slot.conn = None
                self._on_death(slot)

    def _shutdown(self) -> int:
        """Ctrl-C / SIGTERM: stop every worker, fail what they left RUNNING as 'interrupted', report."""
        self.echo(f"{self.interrupted}: stopping {sum(s.process.is_alive() for s in self.slots)} workers...")
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
        mine = {f"{socket.gethostname()}:{s.process.pid}" for s in self.slots}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker") in mine or t.number in {s.trial for s in self.slots}:
                self._fail_trial(t.number, "interrupted", retry=False)
        raise Interrupted(f"interrupted ({self.interrupted}); running trials were marked FAIL "
                          f"(interrupted); {self.already + self.progress.finished}/{self.trials} finished. "
                          f"Run the same command again to resume.")


class Interrupted(SearchError):
    exit_code = 130


# --- entry points for the CLI ----------------------------------------------------------------------------


def ensure_study(spec: StudySpec, storage_url: str) -> optuna.Study:
    """Create the study in the store, or load it; record what `status` and `export` need to read it alone."""
    from search.hpo.storage import open_storage

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise SearchError(f"study '{spec.name}' exists in the store with direction "
                          f"{study.direction.name.lower()}, but {spec.path} says {spec.direction}")
    for key, value in (("dataset", spec.dataset), ("metric", spec.metric), ("epochs", spec.epochs)):
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def start(spec: StudySpec, storage_url: str, *, workers: int, devices: str | None,
          echo: Callable[[str], None]) -> int:
    """`search start`: check the data once, create or resume the study, run the supervised workers."""
    from search.train import data

    plan_devices(workers, devices)  # a bad --devices fails before anything is written
    data.prepare(spec.dataset, spec.data_dir)  # download or check once, before any worker starts
    ensure_study(spec, storage_url)
    return Supervisor(spec, storage_url, workers=workers, trials=spec.trials, timeout=spec.timeout,
                      devices=devices, seed_offset=0, echo=echo).run()
