"""The store layer: concurrent creation of a fresh SQLite store, and password masking."""
import multiprocessing as mp

from search.hpo.urls import mask, mask_text


def _open(url: str) -> str:
    from search.hpo.storage import open_storage

    try:
        open_storage(url)
        return "ok"
    except Exception as err:  # the test reports what failed
        return f"{type(err).__name__}: {err}"


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
