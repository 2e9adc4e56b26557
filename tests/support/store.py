"""Reading a study's trials: the one reader every test uses, for a SQLite file or a storage URL (PostgreSQL)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from search.hpo.store import SQLITE, Store

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@contextlib.contextmanager
def reader(store: Path | str) -> Iterator[optuna.storages.RDBStorage | None]:
    """A storage of our own on `store` (a SQLite file, or a URL); None until a command has made the store whole.

    It never writes: not the file whose absence a test may check, nor the tables (a reader must not take part in a
    command's race to create them), nor Optuna's version rows (which RDBStorage writes where they are missing: so
    it is opened only once alembic's row, written last, is there). It closes its connections afterwards, so that
    a test's PostgreSQL database can be dropped.
    """
    parsed = Store.parse(store) if isinstance(store, str) else None
    if parsed is not None and parsed.kind == SQLITE and parsed.file is not None:
        store = parsed.file
    if isinstance(store, Path):
        if not store.exists():
            yield None
            return
        url, engine = f"sqlite:///{store}", {"connect_args": {"timeout": 60}}  # wait out a writer's lock
    else:
        # psycopg2 (the tests' PostgreSQL driver, tests/pg.py) whichever driver SQLAlchemy would pick for postgresql://
        parsed = make_url(store)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg2")
        url, engine = parsed.render_as_string(hide_password=False), {}
    if not _made(url, engine):
        yield None
        return
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, skip_table_creation=True,
                                         skip_compatibility_check=True)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def _made(url: str, engine_kwargs: dict) -> bool:
    """Whether the store's tables and Optuna's version rows are all there (alembic's row is written last)."""
    probe = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with probe.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("alembic_version"):
                return False
            return conn.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar() > 0
    finally:
        probe.dispose()


def trials_of(store: Path | str, name: str) -> list[FrozenTrial]:
    """The study's trials; none while a command has not created the store, its tables or the study yet.

    `store`: a SQLite file, a PostgreSQL URL, or a journal:// URL (read through the project's own opener: a journal
    file has no tables to race for, and a missing one is not created)."""
    if isinstance(store, str) and store.startswith("journal:"):
        from search.errors import SearchError
        from search.hpo.storage import open_storage

        try:
            journal = open_storage(store, must_exist=True, heartbeat=False)
            return optuna.load_study(study_name=name, storage=journal).get_trials()
        except (SearchError, KeyError):  # no file, or no such study (yet)
            return []
    with reader(store) as storage:
        if storage is None:
            return []
        try:
            return optuna.load_study(study_name=name, storage=storage).get_trials()
        except KeyError:  # no such study (yet)
            return []


def by_state(trials, *states) -> list:
    return [t for t in trials if t.state in states]


def running(store: Path | str, name: str) -> bool:
    """A trial is RUNNING in a worker (it recorded its worker: the objective has started)."""
    return any(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in trials_of(store, name))
