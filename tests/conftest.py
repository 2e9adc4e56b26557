"""Shared fixtures; the helpers they use (and tests import) are in tests/support/, by concern."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests import pg
from tests.support.data import write_medmnist_npz
from tests.support.signals import sigint_as_in_a_terminal
from tests.support.studies import Searched, search_tiny

# Property-based tests (tests/test_fuzz.py): a capped number of examples, and no example database written into the
# repository. `pytest --hypothesis-profile=thorough tests/test_fuzz.py` runs many more.
_FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                   HealthCheck.function_scoped_fixture])
settings.register_profile("search", max_examples=60, **_FUZZ)
settings.register_profile("thorough", max_examples=2000, **_FUZZ)
settings.load_profile("search")


def pytest_configure(config: pytest.Config) -> None:
    sigint_as_in_a_terminal()  # the signal tests send Ctrl-C to the commands they start, as a terminal would


@pytest.fixture
def pathmnist_dir(tmp_path: Path) -> Path:
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    return tmp_path


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.medmnist: the default data root is an empty temporary folder."""
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path_factory.mktemp("default-data-root")))


@pytest.fixture(scope="session")
def searched(tmp_path_factory) -> Searched:
    """One real search with final runs and their report, shared by the report and artifact tests."""
    return search_tiny(tmp_path_factory)


@pytest.fixture
def pg_db() -> Iterator[str]:
    """The name of a new empty database; dropped at the end, after ending any connection left to it."""
    pg.skip_unless_reachable()
    name = f"search_{uuid.uuid4().hex}"
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        yield name
    finally:
        conn = pg.connect()  # a new one: a test may have restarted the server meanwhile
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                        "pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()
