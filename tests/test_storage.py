"""The store layer: concurrent creation of a fresh SQLite store, queued trials taken exactly once by racing
processes (SQLite and PostgreSQL), "database is locked" retried under every storage call a study makes, and
password masking."""
import multiprocessing as mp
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from search.errors import SearchError
from search.hpo.storage import open_storage
from search.hpo.store import Store, locate, mask, mask_text
from tests.support import pg

QUEUED, TAKERS = 40, 8


def _open(url: str) -> str:
    from search.hpo.storage import open_storage

    try:
        open_storage(url)
        return "ok"
    except Exception as err:  # the test reports what failed
        return f"{type(err).__name__}: {err}"


@pytest.mark.e2e
def test_six_processes_creating_one_fresh_sqlite_store_all_succeed(tmp_path):
    # Without the retry, some lose the race: "table studies already exists", "UNIQUE constraint failed:
    # alembic_version.version_num".
    url = f"sqlite:///{tmp_path}/fresh.db"
    with mp.get_context("spawn").Pool(6) as pool:
        results = pool.map(_open, [url] * 6)
    assert results == ["ok"] * 6, results


def test_passwords_are_masked():
    url = "postgresql://alice:s3cret@db.example:5432/search"
    assert mask(url) == "postgresql://alice:***@db.example:5432/search"
    assert "s3cret" not in mask_text("connection to alice:s3cret failed", url)


@pytest.mark.parametrize(("url", "kind", "file"), [
    ("sqlite:///search.db", "sqlite", "search.db"),
    ("sqlite:////abs/x.db", "sqlite", "/abs/x.db"),
    ("sqlite://", "sqlite", None),  # in memory: no file
    ("postgresql://alice:s3cret@db:5432/search", "postgresql", None),
    ("postgresql+psycopg2://db/search", "postgresql", None),
    ("mysql://db/search", "mysql", None),
    ("journal:///abs/study.log", "journal", "/abs/study.log"),
    ("grpc://127.0.0.1:13001", "grpc", None),
])
def test_a_store_url_is_parsed_once_into_its_kind_and_file(url, kind, file):
    store = Store.parse(url)
    assert (store.kind, store.file) == (kind, Path(file) if file else None)
    assert store.problem is None and "s3cret" not in store.masked
    assert locate(store) is store  # a parsed store is passed down as it is, never parsed again


def test_a_relative_journal_is_absolute_from_the_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store.parse("journal:runs/x.log").file == tmp_path / "runs" / "x.log"


@pytest.mark.parametrize(("url", "says"), [
    ("not a url", "storage URL '***' is not valid; examples: sqlite:///search.db, journal:///shared/path/study.log"),
    ("journal://host/x.log", "names a host"),
    ("journal:", "names no file"),
    ("grpc://user:secret@host:1", "is not a valid gRPC proxy URL"),
])
def test_a_url_that_names_no_store_parses_and_says_so_where_it_is_used(tmp_path, url, says):
    store = Store.parse(url)  # the command's other options are checked first, as before
    assert store.kind == "invalid" and says in store.problem and "secret" not in store.problem
    for use in (store.check, lambda: open_storage(store, heartbeat=False), store.for_cluster):
        with pytest.raises(SearchError, match="^" + re.escape(store.problem) + "$"):
            use()


def test_the_store_checks_are_one_line_each(tmp_path):
    missing = Store.parse(f"sqlite:///{tmp_path}/none.db")
    assert missing.absent() == f"no study store at {tmp_path}/none.db"
    with pytest.raises(SearchError, match=f"^no study store at {tmp_path}/none.db; run `search start` first"):
        open_storage(missing, must_exist=True, heartbeat=False)
    for url in (f"sqlite:///{tmp_path}/no/x.db", f"journal://{tmp_path}/no/x.log"):
        with pytest.raises(SearchError, match=f"^storage folder {tmp_path}/no does not exist$"):
            open_storage(Store.parse(url), heartbeat=False)
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "no").exists()
    with pytest.raises(SearchError, match="not SQLite"):
        missing.for_cluster()
    with pytest.raises(SearchError, match="must be the database URL"):
        Store.parse("grpc://127.0.0.1:1").database("the proxy")


def test_the_default_store_needs_no_option_and_another_is_named_masked(monkeypatch):
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    assert locate(None).url == "sqlite:///search.db" and locate(None).option() == ""
    assert Store.parse("postgresql://a:pw@h/db").option() == " --storage postgresql://a:***@h/db"
    monkeypatch.setenv("SEARCH_STORAGE", "journal:///x/s.log")
    assert locate(None).kind == "journal" and locate("sqlite:///y.db").kind == "sqlite"


@pytest.mark.e2e  # a fresh interpreter: a process
def test_parsing_a_store_loads_no_database_library():
    code = ("import sys; from search.hpo.store import Store; Store.parse('journal:///x.log'); "
            "Store.parse('grpc://h:1'); print(sorted({'optuna', 'sqlalchemy', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _take_queued(url: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    """Ask for trials until the queue is empty (ask() then makes a new trial); report the queued ones taken."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="queue", storage=open_storage(url, heartbeat=False))
    barrier.wait()  # all eight start taking at the same instant
    taken = []
    while True:
        trial = study.ask()
        if trial.number >= QUEUED:
            study.tell(trial, state=TrialState.FAIL)
            break
        taken.append(trial.number)
    results.put(taken)


def _every_queued_trial_taken_once(url: str) -> None:
    study = optuna.create_study(study_name="queue", storage=open_storage(url, heartbeat=False))
    for i in range(QUEUED):
        study.enqueue_trial({"x": i})
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(TAKERS), ctx.Queue()
    procs = [ctx.Process(target=_take_queued, args=(url, barrier, results)) for _ in range(TAKERS)]
    for p in procs:
        p.start()
    takes = Counter(n for _ in procs for n in results.get(timeout=300))
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    twice = {n: c for n, c in takes.items() if c > 1}
    assert not twice, f"{sum(takes.values())} takes of {QUEUED} queued trials; taken more than once: {twice}"
    assert sorted(takes) == list(range(QUEUED))


@pytest.mark.e2e
def test_eight_processes_take_each_queued_trial_exactly_once_on_sqlite(tmp_path):
    _every_queued_trial_taken_once(f"sqlite:///{tmp_path}/queue.db")


@pytest.mark.e2e
def test_eight_processes_take_each_queued_trial_exactly_once_on_postgresql(pg_db):
    _every_queued_trial_taken_once(pg.url_of(pg_db))


def test_database_is_locked_is_retried_under_every_storage_call_of_a_study(tmp_path):
    """Each statement fails once with SQLite's "database is locked" (what a concurrent writer causes), under a
    study loaded as workers load it (through Optuna's cache layer): every call must still succeed."""
    storage = open_storage(f"sqlite:///{tmp_path}/locked.db", heartbeat=False)
    optuna.create_study(study_name="s", storage=storage)
    failed: set[str] = set()

    def lock_once(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        if statement not in failed:
            failed.add(statement)
            raise sqlite3.OperationalError("database is locked")

    event.listen(storage.engine, "before_cursor_execute", lock_once)
    study = optuna.load_study(study_name="s", storage=storage)
    study.enqueue_trial({"lr": 0.01})
    for _ in range(2):  # the queued trial, then a new one
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("arch", ["a", "b"])
        trial.report(0.5, step=1)
        trial.set_user_attr("worker", "w")
        study.tell(trial, 0.9)
    study.set_user_attr("dataset", "digits")
    event.remove(storage.engine, "before_cursor_execute", lock_once)
    assert len(failed) > 10  # the hook did fire under many different statements
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params["lr"] == 0.01 and trials[1].intermediate_values == {1: 0.5}
    assert study.best_value == 0.9 and study.user_attrs == {"dataset": "digits"}


def test_optunas_retried_query_note_never_reaches_the_terminal():
    """A dropped connection makes Optuna retry a trial query a slower way, with a warning holding the SQL statement;
    it retries at once (a second failure raises, and the store's fault handling speaks), so the note is dropped."""
    import logging

    import optuna

    from search import quiet

    quiet.libraries()
    rdb = optuna.logging.get_logger("optuna.storages._rdb.storage")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    rdb.addHandler(handler)
    try:
        rdb.warning("Caught an error from sqlalchemy: server closed the connection. Falling back to a slower "
                    "alternative.")
        rdb.warning("another warning")
    finally:
        rdb.removeHandler(handler)
    assert seen == ["another warning"]
