"""Shared fixtures; the helpers they use (and tests import) are in tests/support/, by concern."""
from __future__ import annotations

import multiprocessing.process
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support import pg
from tests.support.data import write_medmnist_npz
from tests.support.signals import sigint_as_in_a_terminal
from tests.support.studies import Searched, search_tiny

TESTS = Path(__file__).resolve().parent

# Property-based tests (tests/test_fuzz.py): a capped number of examples, drawn the same on every run and machine
# (derandomize: the examples follow from each test alone, so a CI failure is one a rerun shows again), and no example
# database written into the repository. `pytest --hypothesis-profile=thorough tests/test_fuzz.py` draws many more,
# at random.
_FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                   HealthCheck.function_scoped_fixture])
settings.register_profile("search", max_examples=60, derandomize=True, **_FUZZ)
settings.register_profile("thorough", max_examples=2000, derandomize=False, **_FUZZ)
settings.load_profile("search")

# The tests that use the PostgreSQL server or the local SLURM carry the marker `servers`: tests/test_outage.py stops
# the server and tests/test_slurm.py's jobs fill the SLURM node, so no other process may use them meanwhile. .ci/run
# runs them in one process, one after another, beside a second process that runs all the others (pytest-xdist's
# --dist loadgroup cannot be relied on for it: under pytest 9 its groups are not applied, and the tests of one group
# were seen on both workers, one of them stopping the server under the other).
_SERVER_MODULES = {"test_outage.py", "test_postgres.py", "test_slurm.py"}


def pytest_configure(config: pytest.Config) -> None:
    sigint_as_in_a_terminal()  # the signal tests send Ctrl-C to the commands they start, as a terminal would
    _watch_process_starts()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The marker `servers` on every test that uses the PostgreSQL server or the local SLURM."""
    for item in items:
        if item.path.name in _SERVER_MODULES or "pg_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.servers)


# A test that starts a process must carry the `e2e` mark (-m 'not e2e' is the fast loop, promised to start none):
# while a test without it runs, every process start (subprocess, multiprocessing) is noted, and the test fails.
_watching: list[str] | None = None


_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _probe(frame) -> bool:  # type: ignore[no-untyped-def]
    """Whether the standard library itself asked (ctypes.util runs ldconfig to find a library, platform runs uname):
    a look at the machine, not a process the test starts."""
    while frame is not None and frame.f_code.co_filename == subprocess.__file__:
        frame = frame.f_back
    return frame is not None and _STDLIB in Path(frame.f_code.co_filename).resolve().parents


def _noting(start, what: str):  # type: ignore[no-untyped-def]
    def noted(*args, **kwargs):  # type: ignore[no-untyped-def]
        if _watching is not None and not (what == "subprocess" and _probe(sys._getframe(1))):
            _watching.append(what if what != "subprocess" else f"{what} {args[1] if len(args) > 1 else kwargs}")
        return start(*args, **kwargs)

    return noted


def _watch_process_starts() -> None:
    if getattr(subprocess.Popen.__init__, "_e2e_watch", False):
        return
    for owner, name, what in ((subprocess.Popen, "__init__", "subprocess"),
                              (multiprocessing.process.BaseProcess, "start", "a multiprocessing process")):
        noted = _noting(getattr(owner, name), what)
        noted._e2e_watch = True  # type: ignore[attr-defined]
        setattr(owner, name, noted)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    global _watching
    started: list[str] = []
    _watching = None if item.get_closest_marker("e2e") else started
    try:
        result = yield
    finally:
        _watching = None
    if started:
        pytest.fail(f"this test started a process ({started[0]}) but has no `e2e` mark (pytest.mark.e2e)",
                    pytrace=False)
    return result


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
