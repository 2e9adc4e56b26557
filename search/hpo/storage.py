"""The RDB stores (SQLite, PostgreSQL): Optuna's storage opened so that many workers can share it, and what every
kind of store shares: the retried calls, the heartbeat settings, the trial retry.

The one thing to know: every storage call goes through `retrying`, which runs again only what is safe to repeat
(the list is below), while SQLite is locked or the store is unreachable (search/hpo/faults.py).
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import random
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import sqlalchemy
from optuna.storages._rdb import models  # Optuna's tables, for the statements of our own below
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine

from search import env
from search.errors import StoreFault
from search.hpo import faults, journal, proxy
from search.hpo.faults import SQLITE_BUSY_TIMEOUT_S
from search.hpo.store import GRPC_KIND, JOURNAL_KIND, SQLITE, Store, locate

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states a trial budget counts


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds, as Optuna's RDBStorage takes them."""
    beat = int(env.seconds("SEARCH_HEARTBEAT_S", env.HEARTBEAT_S, integer=True, minimum=1))
    return beat, int(env.seconds("SEARCH_GRACE_S", env.grace_s(beat), integer=True, minimum=1))


# SQLite: every connection uses WAL (readers never block the writer) and a 60 s busy timeout. The busy timeout alone
# cannot prevent "database is locked": in WAL mode, a transaction that read a snapshot and then wants to write, after
# another process committed in between, fails at once (SQLITE_BUSY_SNAPSHOT). Optuna rolls such a transaction back,
# so the whole call runs again (faults.patient). `BEGIN IMMEDIATE` for every transaction would avoid it, but Optuna
# and Alembic hold a read transaction open on one connection while writing on another, which then deadlocks within
# one process.
@event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA journal_mode = WAL")  # synchronous stays FULL: a commit is on disk when it returns
        cur.close()


def _create_race(err: BaseException | None) -> bool:
    while err is not None:
        if any(s in str(err) for s in ("already exists", "duplicate key value violates unique constraint",
                                       "UNIQUE constraint failed: alembic_version")):  # SQLite's form
            return True
        err = err.__cause__ or err.__context__
    return False


def _retry_create_race(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Workers that create the tables of an empty database at the same moment collide (each checks
    that a table is missing, then creates it: "duplicate key value violates unique constraint
    pg_type_typname_nsp_index" or "relation ... already exists" on PostgreSQL, "table ... already exists" on
    SQLite). The next try finds the winner's tables."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(10):
            try:
                return fn(*args, **kwargs)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as err:
                if attempt == 9 or not _create_race(err):
                    raise
            time.sleep(0.05 * (attempt + 1) * (0.5 + random.random()))

    return call


class RDBStore(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, whose stale-trial check also fails the trials nobody runs and waits after an outage."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (RUNNING, heartbeat older than the grace period), and RUNNING trials that never had
        a heartbeat and started longer ago than that (see "Which of Optuna's storage calls" above). None while the
        store came back from an outage less than a grace period ago: the heartbeats missed meanwhile are no sign of
        a dead worker, and those of live ones resume within a few seconds."""
        beat = self.heartbeat_interval or env.HEARTBEAT_S
        grace = self.grace_period or env.grace_s(beat)
        if faults.came_back_within(grace + beat):
            return []
        stale = super()._get_stale_trial_ids(study_id)
        trial, beats = models.TrialModel, models.TrialHeartbeatModel
        started = trial.__table__.c.datetime_start
        with self.scoped_session() as session:
            unbeaten = (session.query(trial.trial_id).outerjoin(beats, beats.trial_id == trial.trial_id)
                        .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                                beats.trial_heartbeat_id.is_(None),
                                started < _stored_time(datetime.now() - timedelta(seconds=grace))).all())
        return stale + [row[0] for row in unbeaten if row[0] not in stale]


class SQLiteStorage(RDBStore):
    """The store on SQLite: taking a queued trial is atomic."""

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """As RDBStorage's, but WAITING -> RUNNING (a worker taking a queued trial) is one conditional UPDATE.

        RDBStorage reads the state with SELECT ... FOR UPDATE and then writes it; SQLite has no FOR UPDATE and
        pysqlite begins no transaction before a SELECT, so two processes can both read WAITING and both take the
        trial (tests/test_storage.py races eight processes for it). One UPDATE ... WHERE state = 'WAITING' is
        atomic: the row count says who won.
        """
        if state == TrialState.RUNNING and values is None:
            with self.engine.begin() as conn:
                now = _stored_time(datetime.now())
                claimed = conn.execute(_CLAIM, {"trial_id": trial_id, "now": now}).rowcount == 1
            if claimed:
                return True
            # Not WAITING: RDBStorage's own answer (False if RUNNING, an error if finished or missing); it writes
            # nothing then, since a trial never goes back to WAITING.
        return super().set_trial_state_values(trial_id, state, values)


def _stored_time(local: datetime) -> datetime:
    """A trial time as Optuna's trials table holds it: naive local time up to Optuna 5.0, naive UTC since 5.1 (its
    model converts; a transient row does the conversion for us, whichever version is installed)."""
    probe = models.TrialModel()
    probe.datetime_start = local
    return getattr(probe, "_datetime_start_utc", probe.datetime_start)


# Optuna's trials table; the state column holds TrialState names.
_CLAIM = sqlalchemy.text(
    "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = :trial_id AND state = 'WAITING'"
).bindparams(sqlalchemy.bindparam("now", type_=sqlalchemy.DateTime()))


def claim_study_attr(storage: optuna.storages.BaseStorage, study_name: str, key: str, value: Any) -> bool:
    """Set the study's user attribute ``key`` to ``value`` only if it is not set yet: True if this call set it.

    Optuna's ``set_study_user_attr`` reads, then inserts or updates: two workers meeting a new study at the same
    moment would both find the attribute missing and both go on. One INSERT against the table's UNIQUE (study_id,
    key) lets exactly one win, on SQLite and PostgreSQL alike. Behind a `search proxy` (no database here) it falls
    back to Optuna's read-then-write.
    """
    study_id = storage.get_study_id_from_name(study_name)
    if journal.is_journal(storage):
        return journal.claim_study_attr(storage, study_id, key, value)  # type: ignore[arg-type]
    if not isinstance(storage, optuna.storages.RDBStorage):
        if key in storage.get_study_user_attrs(study_id):
            return False
        storage.set_study_user_attr(study_id, key, value)
        return True

    def insert(_storage: Any) -> bool:
        try:
            with storage.engine.begin() as conn:
                conn.execute(_ADD_STUDY_ATTR, {"study_id": study_id, "key": key, "value_json": json.dumps(value)})
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    # Repeated after an outage, a UNIQUE violation may be this call's own insert, committed as the connection died:
    # counted as ours, since queuing a study file's entries twice costs a trial and never queuing them loses them.
    return faults.patient(insert, place, repeated=lambda _s, err: _unique_violation(err))(storage)


def _unique_violation(err: BaseException) -> bool:
    if isinstance(err, sqlalchemy.exc.IntegrityError):
        return True
    raise err


# Optuna's study_user_attributes table, UNIQUE (study_id, key); value_json as Optuna writes it (json.dumps).
_ADD_STUDY_ATTR = sqlalchemy.text(
    "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:study_id, :key, :value_json)")


# Which of Optuna's storage calls may simply run again after an error, and why (RDBStorage in the Optuna versions
# pyproject.toml allows; tests/test_optuna_internals.py checks that the names below still exist):
# - reads (get_*, _get_trials, _get_stale_trial_ids, check_*): they write nothing.
# - overwrites: set_study_user_attr / set_study_system_attr, set_trial_user_attr / set_trial_system_attr,
#   set_trial_intermediate_value and record_heartbeat write a row or replace it; set_trial_param and _set_trial_param
#   insert under UNIQUE (trial_id, param_name), and Optuna ignores the IntegrityError of a repeat.
# - create_new_study: a repeat of one that committed raises DuplicatedStudyError, which create_study(load_if_exists)
#   turns into a load.
# - set_trial_state_values: a finish that committed before its connection died makes the repeat raise
#   UpdateFinishedTrialError; `_already_set` answers True when the stored state is the one asked for. A claim of a
#   queued trial (WAITING -> RUNNING) that committed makes the repeat answer False, and a repeated create_new_trial /
#   _create_new_trial adds a second trial: either way one trial is RUNNING with nobody running it. Such a trial never
#   gets a heartbeat; `_get_stale_trial_ids` fails it after the grace period and queues it again (once), as it does a
#   dead worker's trial.
# Only the outermost call retries (faults.patient): a helper inside it shares its transaction.


def _whole_calls(cls: type) -> dict[str, Callable[..., Any]]:
    """The methods of ``cls`` and its bases that are each a whole storage call: every one that takes no session
    (a helper that takes one runs inside its caller's transaction). Private ones included: a study loaded with
    `optuna.load_study` reaches the storage through Optuna's cache layer, which calls ``_create_new_trial``,
    ``_set_trial_param``, ``_get_trials`` and the like directly."""
    calls: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__[:-1]):  # object's own are not storage calls
        calls.update({name: fn for name, fn in vars(klass).items()
                      if inspect.isfunction(fn) and not name.startswith("__")
                      and "session" not in inspect.signature(fn).parameters})
    return calls


def place(storage: Any) -> tuple[str, Path | None]:
    """The store's URL and its file (None for a server or a proxy), for messages."""
    url = getattr(storage, "url", None)
    if not isinstance(url, str):
        return type(storage).__name__, None
    return url, Store.parse(url).file


def _already_set(storage: Any, err: BaseException, trial_id: int, state: TrialState,
                 values: Sequence[float] | None = None) -> bool:
    """set_trial_state_values tried again after an outage: the first try committed if the trial is in that state."""
    if isinstance(err, optuna.exceptions.UpdateFinishedTrialError) and storage.get_trial(trial_id).state == state:
        return True
    raise err


@functools.lru_cache(maxsize=None)
def retrying(cls: type) -> type:
    """``cls`` (any Optuna storage class) with each whole call waited out through locks and outages
    (search/hpo/faults.py)."""
    calls = {name: faults.patient(fn, place, repeated=_already_set if name == "set_trial_state_values" else None)
             for name, fn in _whole_calls(cls).items()}
    if "record_heartbeat" in calls:
        calls["record_heartbeat"] = _quiet_heartbeat(calls["record_heartbeat"])
    name = f"Retrying{cls.__name__}"
    # A module-level name, so that pickle finds the class (Optuna's storages may be pickled, e.g. by its test suite).
    globals()[name] = made = type(name, (cls,), {**calls, "__module__": __name__, "__qualname__": name})
    return made


def _quiet_heartbeat(beat: Callable[..., Any]) -> Callable[..., Any]:
    """Optuna's heartbeat thread dies with a traceback on the first error; the store's fault is the main thread's to
    report (its next call raises it), so the thread lets it go."""

    @functools.wraps(beat)
    def call(self: Any, trial_id: int) -> None:
        try:
            beat(self, trial_id)
        except StoreFault:
            pass

    return call


def open_storage(store: Store | str | None = None, *, must_exist: bool = False,
                 heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """The study store (``store``: parsed, or a URL as search/hpo/store.py's `locate` takes it) as Optuna's storage,
    tables created if needed, each call waited out through locks and outages. ``must_exist``: read-only commands
    never create a file; ``heartbeat``: record the running trials' heartbeats (a worker's store)."""
    store = locate(store)
    store.check()
    faults.store_wait_s()  # a bad $SEARCH_STORE_WAIT_S: one line now, not when the store first fails
    if store.kind == GRPC_KIND:  # a `search proxy` in front of the store
        return proxy.client(store, retrying(optuna.storages.GrpcStorageProxy))
    store.check_file(must_exist=must_exist)
    if store.kind == JOURNAL_KIND:  # a file on a shared filesystem: see search/hpo/journal.py
        return journal.open_journal(store, retrying(journal.JournalStore), **heartbeat_kwargs(heartbeat))
    return _open_rdb(store, heartbeat=heartbeat)


def _open_rdb(store: Store, *, heartbeat: bool) -> optuna.storages.BaseStorage:
    """A SQLite or database server's store."""
    url = store.url
    kwargs: dict = {}
    url_for_engine = url
    if store.kind == SQLITE:
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        # A server restarted or a connection dropped leaves dead connections in the pool: each is tested (a round
        # trip) when taken, and replaced if dead, rather than failing the next call.
        kwargs["pool_pre_ping"] = True
    if store.kind == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable server answers within 15 s
        url_for_engine = store.engine_url()
    hb = heartbeat_kwargs(heartbeat)
    cls = retrying(SQLiteStorage if store.kind == SQLITE else RDBStore)
    # Creating the tables races with other workers starting at the same moment: retried. A store that is
    # unreachable now is not waited for: the URL may be wrong; the wait is for one that answered and went away.
    create = faults.patient(lambda _url: cls(url_for_engine, engine_kwargs=kwargs, **hb), lambda u: (u, store.file),
                            outages=False)
    try:
        return _retry_create_race(create)(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, optuna.exceptions.StorageInternalError) as err:
        text = str(getattr(err, "orig", None) or err).strip()
        raise store.cannot_open(text.splitlines()[0] if str(err).strip() else type(err).__name__) from None


def heartbeat_kwargs(on: bool) -> dict[str, Any]:
    """The heartbeat arguments of a store that records them (RDB and journal stores take the same)."""
    if not on:
        return {}
    beat, grace = heartbeat_settings()
    return dict(heartbeat_interval=beat, grace_period=grace, heartbeat_stale_trial_callback=retry_once)


def retry_once(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, interrupted: bool = False) -> None:
    """Queue a failed trial's parameters once more (Optuna's RetryHeartbeatStaleTrialCallback): once for a trial
    whose worker died (a crash can repeat), every time for one stopped by Ctrl-C or SIGTERM (not the trial's fault).

    The retry resumes from the failed trial's checkpoint (search/hpo/objective.py), found by the user attribute
    `retry_of`; the failed run's other attributes (`reason`, `worker`) do not carry over.
    """
    clean = copy.deepcopy(trial)
    clean.user_attrs = {"retry_of": trial.number}
    clean.system_attrs.pop(journal.BEAT, None)  # the retry's heartbeats are its own
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None if interrupted else 1)(study, clean)


def fail_running(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int,
                 reason: str) -> FrozenTrial | None:
    """Mark trial `number` FAIL with `reason` if it is still RUNNING; return it as it is now (None: no such trial)."""
    trials = study.get_trials(deepcopy=False)
    if number >= len(trials):
        return None
    trial = trials[number]
    if trial.state == TrialState.RUNNING:
        # The storage's public calls write to a trial that another process started, by its storage id.
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                   number)
        storage.set_trial_user_attr(trial_id, "reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        trial = study.get_trials(deepcopy=False)[number]
    return trial


for _kind in (SQLiteStorage, RDBStore, journal.JournalStore):  # named from import on: a pickled store loads anywhere
    retrying(_kind)
