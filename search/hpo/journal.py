"""The journal store: Optuna's JournalStorage on one append-only file, for folders on a network filesystem.

SQLite's locking is unsafe on NFS, Lustre, GPFS and the like (Optuna's and SQLite's own docs say so): a study kept
there can be corrupted silently. Optuna's JournalFileBackend appends each operation as one JSON line under a lock
made for those filesystems (`JournalFileOpenLock`: an O_EXCL create, atomic on NFSv3 and later), and every
process replays the log. URL: ``journal:///abs/path/study.log`` or ``journal:study.log`` (search/hpo/store.py).

What the RDB stores do in SQL is done here through the log:
- Taking a queued trial (WAITING -> RUNNING) is Optuna's own: the log's order decides, and only the process whose
  line came first owns the trial (JournalStorage.set_trial_state_values).
- A study attribute set once (`claim_study_attr`), and the finishing of a trial (two workers may both find the
  same stale trial), are decided under a second lock file, ``<file>.claim.lock``: read, check and append while
  holding it.
- Heartbeats, which JournalStorage lacks: each beat of a running trial is a trial system attribute holding the
  wall-clock time; a RUNNING trial whose last beat (or start) is older than the grace period is stale. The clocks
  of the hosts that share the file are compared, as NTP keeps them on a cluster; the grace period (search/env.py:
  GRACE_BEATS heartbeats by default) is far above their usual skew.
- A network filesystem's hiccup (EIO, ESTALE, ETIMEDOUT from a read or an append) is waited out as a database
  outage is (search/hpo/faults.py), each read and each append on its own: `PatientFile` says why.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from search.hpo import faults
from search.hpo.store import Store

BEAT = "search:heartbeat"  # trial system attribute: the wall-clock time (s) of the last heartbeat
CLAIM_SUFFIX = ".claim"  # the lock file of claim_study_attr: <file>.claim.lock


class JournalStore(JournalStorage, BaseHeartbeat):
    """JournalStorage with heartbeats, so that Optuna fails a dead worker's trial and retries it, as on RDB stores
    (`heartbeat_interval` None: no heartbeat, as RDBStorage without one)."""

    def __init__(self, path: Path, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 backend: BaseJournalBackend | None = None) -> None:
        """``backend``: the file's own (Optuna's JournalFileBackend under the open lock) unless given (a test's,
        which fails as a network filesystem does)."""
        self.path = path
        self.url = f"journal://{path}" if path.is_absolute() else f"journal:{path}"  # artifacts.storage_url reads it
        file = backend or JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        super().__init__(PatientFile(file, self.url, path))
        self._beat = heartbeat_interval
        self._grace = grace_period
        self._on_stale = heartbeat_stale_trial_callback

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """As JournalStorage's, but finishing a trial that another process finished first raises
        UpdateFinishedTrialError, as RDBStorage does. The journal would ignore the second line on replay and still
        return True: two workers that find the same stale trial would then both queue its retry."""
        if not state.is_finished():
            return super().set_trial_state_values(trial_id, state, values)
        with _claim_lock(self):
            if self.get_trial(trial_id).state.is_finished():  # read up to the log's end first
                raise UpdateFinishedTrialError(f"trial {self.get_trial(trial_id).number} is already finished")
            return super().set_trial_state_values(trial_id, state, values)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._grace is not None
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried trial copies its predecessor's system attributes, an old beat included: its start counts.
            started = t.datetime_start.timestamp() if t.datetime_start is not None else now
            if now - max(t.system_attrs.get(BEAT, 0.0), started) > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._beat

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._on_stale


class PatientFile(BaseJournalBackend):
    """The journal file's backend with each read and each append waited out on its own through a network
    filesystem's hiccups, as a database outage is (faults.patient).

    On its own, because each JournalStorage call appends its line and then reads the log: the whole call run again
    after its read failed would append the line twice (a second trial created and the first left RUNNING with
    nobody running it, or a queued trial claimed and then seen as taken by another). An append tried again after
    a failure first looks whether its lines landed (a write that failed on fsync may have), so none is doubled.
    """

    def __init__(self, file: BaseJournalBackend, url: str, path: Path) -> None:
        self.file, self.url, self.path = file, url, path
        self.read_up_to = 0  # the logs read so far: an append of this process lands after them

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        logs = _read(self, log_number_from)
        self.read_up_to = max(self.read_up_to, log_number_from + len(logs))
        return iter(logs)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        tried: list[bool] = []
        mine = json.loads(json.dumps(logs))  # as they read back (tuples as lists, enums as numbers)

        def append(backend: PatientFile) -> None:
            if tried:
                landed = list(backend.file.read_logs(backend.read_up_to))
                if all(log in landed for log in mine):
                    return  # the failed try wrote them after all
            tried.append(True)
            backend.file.append_logs(logs)

        faults.patient(append, _place, inner=True)(self)


def _place(backend: PatientFile) -> tuple[str, Path]:
    return backend.url, backend.path


def _read_all(backend: PatientFile, log_number_from: int) -> list[dict[str, Any]]:
    return list(backend.file.read_logs(log_number_from))  # whole: a read that fails half-way is read again


_read = faults.patient(_read_all, _place, inner=True)


def open_journal(store: Store, cls: type[JournalStore] = JournalStore, **heartbeat: Any) -> JournalStore:
    """The journal store of ``store`` (its file checked by Store.open), as ``cls`` (JournalStore or a subclass: the
    store's calls retried, see storage.retrying)."""
    assert store.file is not None, store.url
    try:
        return cls(store.file, **heartbeat)
    except OSError as err:
        raise store.cannot_open(err.strerror or str(err)) from None


@contextmanager
def _claim_lock(storage: JournalStore) -> Iterator[None]:
    """The claim lock: a read, a check and an append under it are one step for every process sharing the file."""
    lock = JournalFileOpenLock(str(storage.path) + CLAIM_SUFFIX)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def claim_study_attr(storage: JournalStore, study_id: int, key: str, value: Any) -> bool:
    """storage.claim_study_attr on a journal: under the claim lock, set ``key`` only if no process has yet."""
    with _claim_lock(storage):
        if key in storage.get_study_user_attrs(study_id):  # reads the log up to its end first
            return False
        storage.set_study_user_attr(study_id, key, value)  # appended before the lock is released
        return True


def is_journal(storage: BaseStorage) -> bool:
    return isinstance(storage, JournalStore)
