"""A real PostgreSQL for tests: a fresh, empty database per test, dropped afterwards.

The server is $SEARCH_TEST_PG (default postgresql://postgres@127.0.0.1:5432), reached as its `postgres` database
to create and drop the test databases. Where it cannot be reached, the PostgreSQL tests skip with the reason.
"""
from __future__ import annotations

import os

import optuna
from sqlalchemy.engine import make_url

SERVER = os.environ.get("SEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
_server = make_url(SERVER)
WHERE = f"{_server.host}:{_server.port or 5432}"


def connect(database: str = "postgres"):  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(host=_server.host, port=_server.port or 5432, user=_server.username,
                            password=_server.password, dbname=database, connect_timeout=5)
    conn.autocommit = True  # CREATE / DROP DATABASE cannot run inside a transaction
    return conn


def unreachable() -> str | None:
    """None when the server answers; otherwise why not, naming host:port."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[postgres]')"
    try:
        connect().close()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"no PostgreSQL at {WHERE} (set SEARCH_TEST_PG): {first}"
    return None


def url_of(database: str, password: str | None = None) -> str:
    """The storage URL of `database` on the test server, optionally with a password in it."""
    u = _server.set(database=database)
    if password is not None:
        u = u.set(password=password)
    return u.render_as_string(hide_password=False)


def _reader(url: str) -> optuna.storages.RDBStorage:
    # psycopg2, which this module uses anyway, whichever driver SQLAlchemy would pick for postgresql://.
    # It never creates tables: the test only reads, and must not take part in the workers' race to create them.
    u = make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return optuna.storages.RDBStorage(u, skip_table_creation=True, skip_compatibility_check=True)


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """All trials of `study`, read with a storage of our own that closes its connections afterwards."""
    storage = _reader(url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def study_attrs(url: str, study: str) -> tuple[dict, dict]:
    """The study's user and system attributes."""
    storage = _reader(url)
    try:
        study_id = storage.get_study_id_from_name(study)
        return storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id)
    finally:
        storage.engine.dispose()
