"""The study store: URL resolution, SQLite set up for many writers, heartbeat, password masking.

SQLite: every connection uses WAL (readers never block the writer) and a 60 s busy timeout, and every storage
call is retried while SQLite answers "database is locked". The busy timeout alone cannot prevent that error: in
WAL mode, a transaction that read a snapshot and then wants to write, after another process committed in between,
fails at once (SQLITE_BUSY_SNAPSHOT) without waiting. Optuna rolls such a transaction back, so running the
whole call again is safe. (`BEGIN IMMEDIATE` for every transaction would avoid it, but Optuna and Alembic hold a
read transaction open on one connection while writing on another, which then deadlocks within one process.)
Every call that is a transaction of its own is retried, private ones included (the path of a study loaded through
Optuna's cache layer), and taking a queued trial is one atomic UPDATE (`SQLiteStorage.set_trial_state_values`).

RDB storages (SQLite and PostgreSQL alike) record a heartbeat for running trials; a trial whose worker stopped
beating for the grace period is failed and its parameters are retried once (Optuna's RetryHeartbeatStaleTrialCallback).
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import random
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from search import env
from search.errors import SearchError
from search.hpo import journal, netfs
from search.hpo.urls import JOURNAL, mask, mask_text, resolve_url, sqlite_path

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states a trial budget counts
SQLITE_BUSY_TIMEOUT_S = 60
HEARTBEAT_S = 10  # default seconds between a running trial's heartbeats ($SEARCH_HEARTBEAT_S)
GRACE_BEATS = 3  # a RUNNING trial silent for this many beats ($SEARCH_GRACE_S) is failed and retried


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds, as Optuna's RDBStorage takes them."""
    beat = int(env.seconds("SEARCH_HEARTBEAT_S", HEARTBEAT_S, integer=True, minimum=1))
    return beat, int(env.seconds("SEARCH_GRACE_S", GRACE_BEATS * beat, integer=True, minimum=1))


@event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA journal_mode = WAL")  # synchronous stays FULL: a commit is on disk when it returns
        cur.close()


def _locked(err: BaseException | None) -> bool:
    while err is not None:
        if "database is locked" in str(err) or "database table is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _retry_locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        delay = 0.01
        while True:
            try:
                return fn(*args, **kwargs)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError) as err:
                if not _locked(err) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))  # jitter: workers that collided do not collide again
            delay = min(2 * delay, 0.5)

    return call


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


# grpc:// URLs: a `search proxy` (search/hpo/proxy.py) in front of the store.
DEFAULT_PORT = 13000
# A worker started together with the proxy (compose, a job script) waits this long for it to listen
# ($SEARCH_PROXY_WAIT_S overrides it).
READY_TIMEOUT_S = 30.0
INSTALL_HINT = "pip install 'search[proxy]'"


def require_grpc() -> None:
    try:
        import grpc  # noqa: F401

        # Optuna 5.0's gRPC proxy needs protobuf only when this private module loads; importing it is the one
        # way to find out before a worker or the proxy fails half-way through starting.
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # noqa: F401
    except ImportError as err:
        raise SearchError(f"the gRPC storage proxy needs grpcio and protobuf ({err.name} is missing): "
                          f"{INSTALL_HINT}") from None


def parse_grpc_url(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` (PORT defaults to 13000) -> (host, port)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "grpc" or not parts.hostname or port in (-1, 0) or parts.path not in ("", "/")
            or parts.query or parts.username):
        shown = mask(url) if "@" in url else url  # never echo a password, whatever the scheme
        raise SearchError(f"storage URL '{shown}' is not a valid gRPC proxy URL; expected grpc://HOST:PORT, "
                          f"e.g. grpc://127.0.0.1:{DEFAULT_PORT}")
    return parts.hostname, port or DEFAULT_PORT


def grpc_storage(url: str, *, ready_timeout: float | None = None) -> optuna.storages.BaseStorage:
    """The storage behind ``grpc://HOST:PORT``: a client of a running `search proxy`, checked to be answering."""
    host, port = parse_grpc_url(url)
    require_grpc()
    if ready_timeout is None:
        ready_timeout = env.seconds("SEARCH_PROXY_WAIT_S", READY_TIMEOUT_S)
    storage = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=ready_timeout)
    except ConnectionError:
        storage.close()
        raise SearchError(f"no storage proxy answers at {host}:{port} (waited {ready_timeout:g} s); "
                          f"start one with: search proxy --storage URL --port {port}") from None
    return storage


class SQLiteStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage on SQLite: every call that is a whole transaction is retried while SQLite says
    "database is locked", and taking a queued trial is atomic."""

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """As RDBStorage's, but WAITING -> RUNNING (a worker taking a queued trial) is one conditional UPDATE.

        RDBStorage reads the state with SELECT ... FOR UPDATE and then writes it; SQLite has no FOR UPDATE and
        pysqlite begins no transaction before a SELECT, so two processes can both read WAITING and both take the
        trial (measured: 8 processes, 40 queued trials, 119 takes). One UPDATE ... WHERE state = 'WAITING' is
        atomic: the row count says who won.
        """
        if state == TrialState.RUNNING and values is None:
            with self.engine.begin() as conn:
                claimed = conn.execute(_CLAIM, {"trial_id": trial_id, "now": datetime.now()}).rowcount == 1
            if claimed:
                return True
            # Not WAITING: RDBStorage's own answer (False if RUNNING, an error if finished or missing); it writes
            # nothing then, since a trial never goes back to WAITING.
        return super().set_trial_state_values(trial_id, state, values)


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

    def insert() -> bool:
        try:
            with storage.engine.begin() as conn:
                conn.execute(_ADD_STUDY_ATTR, {"study_id": study_id, "key": key, "value_json": json.dumps(value)})
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    return _retry_locked(insert)()


# Optuna's study_user_attributes table, UNIQUE (study_id, key); value_json as Optuna writes it (json.dumps).
_ADD_STUDY_ATTR = sqlalchemy.text(
    "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:study_id, :key, :value_json)")


def _whole_transactions(cls: type) -> dict[str, Callable[..., Any]]:
    """The methods of ``cls`` that each run in a transaction of their own: every one that takes no session.

    Private ones included: a study loaded with `optuna.load_study` reaches the storage through Optuna's cache
    layer, which calls ``_create_new_trial``, ``_set_trial_param``, ``_get_trials`` and the like directly.
    Helpers that take a session run inside their caller's transaction, which is retried as a whole.
    """
    return {name: fn for name, fn in vars(cls).items()
            if inspect.isfunction(fn) and not name.startswith("__")
            and "session" not in inspect.signature(fn).parameters}


for _name, _fn in {**_whole_transactions(optuna.storages.RDBStorage), **_whole_transactions(SQLiteStorage)}.items():
    setattr(SQLiteStorage, _name, _retry_locked(_fn))





def open_storage(url: str | None = None, *, must_exist: bool = False,
                 heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open (creating tables if needed) the study store. ``must_exist``: read-only commands never create a file."""
    url = resolve_url(url)
    if url.startswith("grpc://"):  # a `search proxy` in front of the store: see search/hpo/proxy.py
        return grpc_storage(url)
    if url.startswith(JOURNAL):  # a file on a shared filesystem: see search/hpo/journal.py
        return journal.open_journal(url, must_exist=must_exist, **_heartbeat(heartbeat))
    try:
        backend = make_url(url).get_backend_name()
    except Exception:
        raise SearchError(f"storage URL '{mask(url)}' is not valid; examples: sqlite:///search.db, "
                          f"postgresql://user@host:5432/db") from None
    kwargs: dict = {}
    url_for_engine = url
    path = sqlite_path(url)
    if backend == "sqlite":
        if path is not None and must_exist and not path.exists():
            raise SearchError(f"no study store at {path}; run `search start` first or pass --storage")
        if path is not None and not path.parent.exists():
            raise SearchError(f"storage folder {path.parent} does not exist")
        if path is not None:
            refuse_network_sqlite(path)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable server answers within 15 s
        kwargs["pool_pre_ping"] = True
        url_for_engine = _postgres_driver(url)
    hb = _heartbeat(heartbeat)
    try:
        cls = SQLiteStorage if backend == "sqlite" else optuna.storages.RDBStorage
        # Creating the tables races with other workers starting at the same moment: retried too.
        return _retry_create_race(_retry_locked(cls))(url_for_engine, engine_kwargs=kwargs, **hb)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, optuna.exceptions.StorageInternalError) as err:
        text = str(getattr(err, "orig", None) or err).strip()
        reason = text.splitlines()[0] if str(err).strip() else type(err).__name__
        raise SearchError(f"cannot open storage {mask(url)}: {mask_text(reason, url)}") from None


def refuse_network_sqlite(path: Path) -> None:
    """SQLite on NFS, Lustre, GPFS, ...: refused (search/hpo/netfs.py says why), unless the user allowed it."""
    fs = netfs.network_filesystem(path.parent)
    if fs is None or env.text("SEARCH_ALLOW_NETWORK_SQLITE"):
        return
    raise SearchError(f"{path} is on {fs}, where SQLite's file locking is unsafe and a study can be corrupted "
                      f"silently; use --storage journal://{path.with_suffix('.log').absolute()} (made for shared "
                      f"filesystems) or a PostgreSQL URL, or pass --allow-network-sqlite to use it anyway")


def _heartbeat(on: bool) -> dict[str, Any]:
    """The heartbeat arguments of a store that records them (RDB and journal stores take the same)."""
    if not on:
        return {}
    beat, grace = heartbeat_settings()
    return dict(heartbeat_interval=beat, grace_period=grace, heartbeat_stale_trial_callback=retry_once)


def _postgres_driver(url: str) -> str:
    """A plain postgresql:// URL means psycopg2 to SQLAlchemy 2.0 but psycopg (3) to SQLAlchemy 2.1; the
    `postgres` extra installs psycopg2, so name it where psycopg is missing (an explicit +driver is kept)."""
    import importlib.util

    u = make_url(url)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is None:
            raise SearchError(f"storage {mask(url)} needs a PostgreSQL driver: pip install 'search[postgres]'")
        return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url





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
