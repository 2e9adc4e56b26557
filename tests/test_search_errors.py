"""Bad input to the search commands: one line, exit status 2, no traceback, the store untouched."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from search.cli import main
from tests.test_search import study_file


def invoke(args: list[str], cwd: Path) -> tuple[int, str]:
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip()


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture
def store(tmp_path) -> Path:
    """A store holding one study with no finished trial."""
    import optuna

    db = tmp_path / "search.db"
    optuna.create_study(study_name="empty", storage=f"sqlite:///{db}")
    return db


def one_line_exit_2(code: int, output: str, *words: str) -> None:
    assert code == 2, output
    assert len(output.splitlines()) == 1 and output.startswith("Error: "), output
    for w in words:
        assert w in output, output


@pytest.mark.parametrize("yaml_text, words", [
    ("name: bad\ndataset: digits\nepochs: 2\nspace:\n  lr: {type: float, low: 0.1, high: 0.001}\n",
     ["space.lr", "low 0.1 is greater than high 0.001"]),
    ("name: bad\ndataset: digits\nepochs: 2\npruner: {name: patient}\n", ["pruner", "patient", "median"]),
    ("name: bad\ndataset: digits\nepochs: 2\nsampler: {name: grid2}\n", ["sampler", "grid2", "tpe"]),
    ("name: bad\ndataset: digits\nepochs: 2\nspace:\n  lr: {type: float, low: 0.1, high: [\n", ["line"]),
    ("name: 'my study'\ndataset: digits\nepochs: 2\n", ["name"]),
])
def test_bad_study_files(tmp_path, store, yaml_text, words):
    before = digest(store)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    code, output = invoke(["start", "--study", str(path)], tmp_path)
    one_line_exit_2(code, output, "bad.yaml", *words)
    assert digest(store) == before


def test_unknown_study_lists_the_available_ones(tmp_path):
    code, output = invoke(["start", "--study", "nosuch"], tmp_path)
    one_line_exit_2(code, output, "unknown study 'nosuch'", "digits", "pathmnist")
    assert not (tmp_path / "search.db").exists()


def test_zero_workers(tmp_path):
    code, output = invoke(["start", "--study", "digits", "--workers", "0"], tmp_path)
    one_line_exit_2(code, output, "--workers")
    assert not (tmp_path / "search.db").exists()


def test_unreachable_storage_answers_quickly_and_masks_the_password(tmp_path):
    spec = study_file(tmp_path, "x")
    started = time.monotonic()
    code, output = invoke(["start", "--study", str(spec), "--storage",
                           "postgresql://alice:s3cret@127.0.0.1:9/nodb"], tmp_path)
    assert time.monotonic() - started < 15
    one_line_exit_2(code, output, "cannot open storage", "alice:***@127.0.0.1:9")
    assert "s3cret" not in output


def test_storage_in_a_missing_folder(tmp_path):
    spec = study_file(tmp_path, "x")
    code, output = invoke(["start", "--study", str(spec), "--storage", f"sqlite:///{tmp_path}/no/such.db"], tmp_path)
    one_line_exit_2(code, output, "does not exist")


def test_export_with_no_finished_trial(tmp_path, store):
    before = digest(store)
    code, output = invoke(["export", "--study", "empty", "-o", "best.yaml"], tmp_path)
    one_line_exit_2(code, output, "no finished")
    assert digest(store) == before and not (tmp_path / "best.yaml").exists()


def test_export_unknown_study_and_missing_store(tmp_path, store):
    code, output = invoke(["export", "--study", "other"], tmp_path)
    one_line_exit_2(code, output, "no study 'other'", "empty")
    code, output = invoke(["status", "--study", "x", "--storage", f"sqlite:///{tmp_path}/none.db"], tmp_path)
    one_line_exit_2(code, output, "no study store")
    assert not (tmp_path / "none.db").exists()


def test_bad_devices(tmp_path):
    spec = study_file(tmp_path, "x")
    code, output = invoke(["start", "--study", str(spec), "--devices", "7"], tmp_path)
    one_line_exit_2(code, output, "--devices 7")
    assert not (tmp_path / "search.db").exists()
