"""The supervisor of `search start`: N worker processes (search/hpo/worker.py) on one study store, their
progress lines (search/hpo/progress.py), and what happens when one dies or the user stops them.

The one thing to know: the supervisor alone keeps the budget. A worker asks it for a ticket before each trial (a
packed worker for one per member of its pack: it gets at most what the budget leaves), so the study ends with
exactly the requested number of finished trials; a failed trial gives its ticket back,
and a trial whose worker died or was stopped is failed with its reason and queued once more, to resume from its
checkpoint. Stopping follows search/interrupt.py: Ctrl-C is the supervisor's alone, and each worker gets one SIGTERM.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from search import interrupt
from search.devices import Placement, placements
from search.devices import choose as choose_devices
from search.errors import Interrupted, ProcessFailed, SearchError, StoreFault
from search.hpo import faults, folds, goals, progress, queue, trial_log, worker
from search.hpo.storage import FINISHED, fail_running, open_storage, retry_once
from search.hpo.store import Store, locate
from search.hpo.studies import StudySpec
from search.hpo.urls import worker_id

# Give up when more trials than this fail in a row: a few failures are a search's normal cost (a diverging lr, a
# batch too large for the card); a streak longer than every worker failing twice means the cause is not the
# configurations (a broken data folder, a full disk), and going on would only burn the budget.
FAIL_STREAK_BASE, FAIL_STREAK_PER_WORKER = 3, 2
# Give up when workers died more than this many times each: a crash loop (out of memory at start, a lost GPU).
DEATHS_PER_WORKER = 3


@dataclass
class WorkerProcess:
    """The supervisor's record of one worker process."""

    index: int  # the worker's number; its sampler seed is the study seed + this
    place: Placement  # its device, CUDA_VISIBLE_DEVICES and threads
    process: Any = None
    conn: Connection | None = None
    tickets: int = 0  # tickets it holds: trials (about to be) running
    want: int = 1  # tickets it asked for (a pack's size)
    waiting: bool = False  # asked for a ticket, not answered yet
    trials: list[int] = field(default_factory=list)  # numbers of the trials it runs now (a pack's members)
    stopped: bool = False  # was told to stop
    ready: bool = False  # has asked for its first ticket: it runs our code, with its SIGTERM handler set
    crash: worker.Crashed | None = None  # the error it ended on, as it told us before exiting
    line: progress.WorkerLine = field(default_factory=progress.WorkerLine)  # what it does now, for the display


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
    def __init__(self, spec: StudySpec, store: Store | str, *, workers: int, trials: int, timeout: float | None,
                 devices: str | list[str] | None, seed_offset: int, echo: Callable[[str], None]) -> None:
        self.spec, self.store = spec, locate(store)
        self.board = progress.Board(echo)  # the workers' lines, redrawn in place on a terminal
        self.echo = self.board.say  # permanent lines go above them
        self.storage = open_storage(self.store)
        self.study = optuna.load_study(study_name=spec.name, storage=self.storage)
        self.already = len(self.study.get_trials(deepcopy=False, states=FINISHED))
        self.budget = trials - self.already
        self.trials, self.timeout, self.seed_offset = trials, timeout, seed_offset
        self.slots = [WorkerProcess(i, place) for i, place in enumerate(placements(devices, workers))]
        self.next_index = len(self.slots)
        self.progress = Progress()
        self.abort: str | None = None
        self.abort_error: type[SearchError] = SearchError
        self.fault: StoreFault | None = None  # the store failed: no new trial; the running ones stay to resume
        self._noted: float | None = None  # when the store's outage was last reported
        faults.on_wait(self._note_outage)
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA or thread state forked from the parent

    # -- worker lifecycle

    def _spawn(self, slot: WorkerProcess) -> None:
        parent, child = self.ctx.Pipe()
        slot.process = self.ctx.Process(
            target=worker.supervised, name=f"search-worker-{slot.index}", daemon=True,
            args=(child, self.spec, self.store, self.seed_offset + slot.index, slot.place.device,
                  slot.place.threads))
        # Its own CUDA_VISIBLE_DEVICES; it starts deaf to Ctrl-C, and SIGTERM waits for its handler.
        interrupt.start_shielded(slot.process, slot.place.env)
        child.close()
        slot.conn, slot.tickets, slot.waiting, slot.trials, slot.stopped = parent, 0, False, [], False

    def _replace(self, dead: WorkerProcess) -> WorkerProcess:
        slot = WorkerProcess(self.next_index, dead.place)
        self.next_index += 1
        self.slots[self.slots.index(dead)] = slot
        self._spawn(slot)
        return slot

    def _worker_name(self, slot: WorkerProcess) -> str:
        return f"worker {slot.index} (pid {slot.process.pid})"

    def _fail_trial(self, number: int, reason: str, *, interrupted: bool = False) -> None:
        """Mark a RUNNING trial FAIL with `reason` (a FAIL one stays as it is); queue it to run again, resuming from
        its checkpoint."""
        trial = fail_running(self.storage, self.study, number, reason)
        if trial is not None and trial.state == TrialState.FAIL:
            retry_once(self.study, trial, interrupted=interrupted)

    # -- the loop

    def _timed_out(self) -> bool:
        return self.timeout is not None and time.monotonic() - self.progress.started >= self.timeout

    def _closing(self) -> bool:
        return (self.progress.finished >= self.budget or self._timed_out() or self.abort is not None
                or self.fault is not None or interrupt.requested() is not None)

    def _note_outage(self, text: str) -> None:
        """The store's outage, once on the terminal however many processes wait for it."""
        now = time.monotonic()
        if self._noted is None or now - self._noted > faults.store_wait_s():
            self._noted = now
            self.echo(text)

    def _dispatch(self) -> None:
        in_flight = sum(s.tickets for s in self.slots)
        # The end of the budget is shared among the workers rather than taken by the first to ask.
        share = max(1, -(-(self.budget - self.progress.finished - in_flight) // len(self.slots)))
        for slot in self.slots:
            if not slot.waiting:
                continue
            if self._closing():
                slot.conn.send(worker.STOP)
                slot.waiting, slot.stopped = False, True
            elif self.progress.finished + in_flight < self.budget:
                grant = min(slot.want, self.budget - self.progress.finished - in_flight, share)
                slot.conn.send(grant)
                slot.waiting, slot.tickets = False, grant
                in_flight += grant

    def _on_message(self, slot: WorkerProcess, msg: worker.Message) -> None:
        p = self.progress
        if isinstance(msg, worker.Ticket):  # every trial of its last ticket has ended
            slot.waiting = slot.ready = True
            slot.want, slot.tickets, slot.trials = msg.trials, 0, []
        elif isinstance(msg, worker.Crashed):
            slot.crash = msg
        elif isinstance(msg, worker.Started):
            slot.trials = [msg.number]
            slot.line.start(msg.number)
        elif isinstance(msg, worker.Packed):
            slot.trials, slot.tickets = list(msg.numbers), len(msg.numbers)  # the tickets it did not use go back
            if len(msg.numbers) > 1:
                slot.line.pack(msg.numbers)
        elif isinstance(msg, worker.Say):
            self.echo(msg.text)
        elif isinstance(msg, worker.Note):
            self._note_outage(msg.text)
        elif isinstance(msg, worker.Fault):
            self.fault = self.fault or StoreFault(msg.text, msg.exit_code)
        elif isinstance(msg, worker.Epoch):
            slot.line.update(msg.number, msg.epoch, msg.epochs, msg.value, msg.images_per_second, msg.leaves)
        elif isinstance(msg, worker.Done):
            slot.tickets = max(0, slot.tickets - 1)
            slot.trials = [n for n in slot.trials if n != msg.number]
            slot.line.ended(msg.number)
            if msg.state in ("COMPLETE", "PRUNED"):
                p.finished += 1
                p.fail_streak = 0
                p.pruned += msg.state == "PRUNED"
                if msg.state == "COMPLETE":
                    p.best = goals.best_text(self.study)
            else:
                p.failed += 1
                p.fail_streak += 1
                self.echo(f"trial {msg.number} failed: {msg.reason or 'no reason recorded'} "
                          f"(details: {self._status_command(msg.number)})")
                if p.fail_streak >= FAIL_STREAK_BASE + FAIL_STREAK_PER_WORKER * len(self.slots):
                    self.abort = f"{p.fail_streak} trials in a row failed; the last: {msg.reason}"
            self._show()

    def _where(self) -> str:
        """The --storage a follow-up command needs: none for the default store."""
        return self.store.option()

    def _status_command(self, number: int) -> str:
        return f"search status --study {self.spec.name}{self._where()} --trial {number}"

    def _on_death(self, slot: WorkerProcess) -> None:
        slot.process.join()
        code = slot.process.exitcode
        if (slot.stopped and code == 0) or self.fault is not None:  # a store fault: its trial stays, to resume
            return
        if interrupt.requested() is not None:
            return
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        self.progress.deaths += 1
        reason = f"{self._worker_name(slot)} " + (f"failed: {slot.crash.reason}" if slot.crash else f"died ({how})")
        logged = self._log_death(slot, reason)
        if len(slot.trials) == 1:
            self._fail_trial(slot.trials[0], reason)
            self.progress.failed += 1
            self.echo(f"trial {slot.trials[0]} failed: {reason}{logged}; it is queued once more and will resume from "
                      f"its last finished epoch")
        elif slot.trials:  # a pack: each member is failed, and retried from its own checkpoint
            for number in slot.trials:
                self._fail_trial(number, reason)
            self.progress.failed += len(slot.trials)
            self.echo(f"trials {', '.join(map(str, slot.trials))} (a pack) failed: {reason}{logged}; each is queued "
                      f"once more and will resume from its last finished epoch")
        else:
            self.echo(f"{reason}{logged}")
        if self.progress.deaths > DEATHS_PER_WORKER * len(self.slots):
            self.abort = f"workers keep dying ({self.progress.deaths} so far); the last: {reason}"
            self.abort_error = ProcessFailed  # not the configurations: the processes (exit status 1)
            slot.stopped = True
            return
        if not self._closing():
            self.echo(f"started replacement {self._worker_name(self._replace(slot))}")

    def _log_death(self, slot: WorkerProcess, reason: str) -> str:
        """Its traceback in its trial's log, or in search-worker-<id>.log when it ran none; the terminal gets only
        where (a worker killed by a signal, outside a trial, left nothing more to say than the line)."""
        from search.hpo import artifacts

        trial = slot.trials[0] if slot.trials else None
        if slot.crash is None and trial is None:
            return ""
        text = slot.crash.traceback if slot.crash else f"{reason}: it left no Python traceback\n"
        where = trial_log.record_crash(text, study=self.study, trial=trial, worker=worker_id(slot.process.pid),
                                       folder=artifacts.artifact_dir(self.store.url))
        return f"; traceback in {where}" if where is not None else f"; details: {self._status_command(trial)}"

    def _totals(self) -> str:
        p = self.progress
        running = sum(max(s.tickets, len(s.trials)) for s in self.slots)
        seconds = max(time.monotonic() - p.started, 1e-9)
        return (f"[{seconds:6.0f} s] finished {self.already + p.finished}/{self.trials} (pruned {p.pruned}), "
                f"failed {p.failed}, running {running} | best {p.best} | {p.finished * 3600 / seconds:.0f} trials/h"
                f" | ETA {progress.eta(p.finished, self.budget - p.finished, seconds)}")

    def _show(self) -> None:
        self.echo(self._totals())

    def _show_workers(self) -> None:
        self.board.show([s.line.text(f"worker {s.index}", self.spec.metric) for s in self.slots], self._totals())

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.board.close()

    def _run(self) -> int:
        beyond = queue.beyond_budget(self.study, self.trials)
        if self.budget <= 0:
            self.echo(beyond or f"study '{self.spec.name}' already has {self.already} finished trials "
                                f"(budget {self.trials}); nothing to do")
            return 0
        if beyond is not None:
            self.echo(beyond)
        for slot in self.slots:
            if interrupt.requested():
                return self._shutdown()
            self._spawn(slot)
        names = sorted({s.place.name.replace(" threads)", " threads each)") for s in self.slots})
        self.echo(f"study '{self.spec.name}': {len(self.slots)} workers on {', '.join(names)}; "
                  f"{self.already} finished before, {self.budget} to go")
        while any(s.process.is_alive() or s.conn is not None for s in self.slots):
            if interrupt.requested() and self.fault is None:
                return self._shutdown()
            self._dispatch()
            try:
                self._poll(timeout=0.5)
            except StoreFault as fault:  # one of our own calls: the workers end their trials or meet it too
                self.fault = self.fault or fault
            self._show_workers()
        self.board.close()
        if self.fault is not None:
            raise self.fault
        if interrupt.requested():  # it came as the last workers finished: report it the same way
            return self._shutdown()
        if self.abort is not None:
            raise self.abort_error(f"search stopped: {self.abort}")
        done = self.already + self.progress.finished
        if self._timed_out() and done < self.trials:
            self.echo(f"timeout of {self.timeout:g} s reached with {done}/{self.trials} finished trials")
        self.echo(self._summary())
        self.echo(f"next: search export --study {self.spec.name}{self._where()}")
        return 0

    def _summary(self) -> str:
        """The search's one closing line: finished, pruned, failed, wall time, the best trial."""
        p = self.progress
        if self.spec.multi:
            best = goals.best_text(self.study)
        else:
            complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            best = f"trial {self.study.best_trial.number}, {self.spec.metric} {self.study.best_value:.4f}" \
                if complete else "none (no trial completed)"
        took = progress.duration(time.monotonic() - p.started)
        return (f"study '{self.spec.name}': {self.already + p.finished}/{self.trials} finished ({p.finished} in this "
                f"run, {p.pruned} of them pruned), {p.failed} failed, in {took}; best: {best}")

    def _poll(self, timeout: float) -> None:
        live = [s for s in self.slots if s.conn is not None]
        ready = wait([s.conn for s in live] + [s.process.sentinel for s in live], timeout=timeout)
        for slot in live:
            for msg in worker.drain(slot.conn) if slot.conn in ready else []:
                self._on_message(slot, msg)
            if slot.process.sentinel in ready or not slot.process.is_alive():
                for msg in worker.drain(slot.conn):  # what it sent before it died
                    self._on_message(slot, msg)
                slot.conn.close()
                slot.conn = None
                self._on_death(slot)

    def _shutdown(self) -> int:
        """Ctrl-C / SIGTERM: stop every worker, fail what they left RUNNING as 'interrupted', report."""
        signame = interrupt.requested()
        started = [s for s in self.slots if s.process is not None]
        live = [s for s in started if s.process.is_alive()]
        if live:
            self.echo(f"{signame}: stopping {len(live)} workers...")
        # A worker still starting (importing torch, opening the study) holds no trial and no write: it is killed
        # rather than waited for; one stuck past the grace period is killed, and its trial failed below.
        interrupt.stop_children([s.process for s in started], starting=[s.process for s in started if not s.ready])
        mine = {worker_id(s.process.pid) for s in started}
        stopped = {n for s in started for n in s.trials}  # a worker failed its own, or we do below
        stopped |= {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if t.user_attrs.get("worker") in mine}
        for number in sorted(stopped):  # each is queued again and resumes from its last finished epoch
            self._fail_trial(number, "interrupted", interrupted=True)
        done = self.already + self.progress.finished
        if stopped:
            numbers = ", ".join(map(str, sorted(stopped)))
            what = (f"trial {numbers} was stopped and will resume from its last finished epoch" if len(stopped) == 1
                    else f"trials {numbers} were stopped and will resume from their last finished epochs")
        else:
            what = "no trial was running" if self.progress.finished or self.progress.failed else "no trial had started"
        raise Interrupted(f"interrupted ({signame}); {what}; {done}/{self.trials} finished. "
                          f"Run the same command again to resume.")


# --- entry points for the CLI ----------------------------------------------------------------------------


def ensure_study(spec: StudySpec, store: Store | str, *, allow_changes: bool = False) -> optuna.Study:
    """Create the study in the store, or load it; record what `status` and `export` need to read it alone.

    The first process to meet the study queues its file's ``enqueue`` entries (search/hpo/queue.py), once.

    The study's definition is stored with it. Starting it again from a file that differs would mix two searches
    in one study: refused with the keys that changed, before anything is written, unless ``allow_changes`` (the
    new definition is then stored, and the change recorded with its time in `definition_changes`).
    """
    new = spec.definition()
    if spec.cv_folds is not None:  # made (or refused in one line) before anything is written
        new["cv_folds"] = folds.make(spec)
    storage = open_storage(store)
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions,
                                load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != spec.directions:
        raise SearchError(f"study '{spec.name}' exists in the store with directions {', '.join(stored)}, but "
                          f"{spec.path} says {', '.join(spec.directions)}; give the study a new name")
    old = study.user_attrs.get("definition")
    changed = sorted(k for k in {**new, **(old or {})} if old is not None and old.get(k) != new.get(k))
    if changed and not allow_changes:
        raise SearchError(f"{spec.path} differs from the definition study '{spec.name}' was created with "
                          f"({', '.join(changed)} changed); give the study a new name to start a new one, or add "
                          f"--allow-changes to go on with this one knowingly")
    if changed:
        log = study.user_attrs.get("definition_changes", [])
        study.set_user_attr("definition_changes",
                            [*log, {"at": datetime.now().isoformat(timespec="seconds"), "changed": changed}])
    if old != new:
        study.set_user_attr("definition", new)
    objectives = [list(o) for o in spec.objectives] if spec.multi else None
    for key, value in (("dataset", spec.dataset), ("metric", spec.metric), ("epochs", spec.epochs),
                       ("objectives", objectives), (queue.BUDGET, spec.trials)):
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    queue.warm_start(storage, study, spec.enqueue)  # the file's `enqueue:` entries, once per study
    return study


def prepare_data(spec: StudySpec) -> None:
    """Download or check the dataset once for each image size the study uses, before any worker starts."""
    from search.train import data

    with interrupt.raising():  # a download cannot poll: Ctrl-C stops it at once
        for size in spec.sizes():
            data.fetch(spec.dataset, spec.data_dir, size=size, own=data.OwnOptions.of(spec.base_config()))


def start(spec: StudySpec, store: Store, *, workers: int, devices: str | None,
          echo: Callable[[str], None], allow_changes: bool = False) -> int:
    """`search start`: check the data once, create or resume the study, run the supervised workers."""
    try:
        with interrupt.raising():  # may load torch (a GPU machine): seconds, and nothing written yet
            chosen = choose_devices(devices)  # a bad --devices fails before anything is written
        prepare_data(spec)
        ensure_study(spec, store, allow_changes=allow_changes)
        interrupt.check()
    except KeyboardInterrupt:  # interrupt.Stop
        raise Interrupted.before_start(interrupt.requested()) from None
    return Supervisor(spec, store, workers=workers, trials=spec.trials, timeout=spec.timeout,
                      devices=chosen, seed_offset=0, echo=echo).run()
