"""Bad input to the search commands: one line, exit status 2, no traceback, the store untouched."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from search.cli import main
from tests.support.studies import study_file


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
    """The store's bytes, its WAL file included (SQLite in WAL mode keeps recent commits there)."""
    if not path.exists():
        return None
    wal = path.with_name(path.name + "-wal")
    return hashlib.sha256(path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).hexdigest()


def closed_study(db: Path, name: str, trial=None) -> None:
    """Create a study (optionally with one trial) and close every connection, so the files are at rest."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    if trial is not None:
        study.add_trial(trial)
    storage.engine.dispose()


@pytest.fixture
def store(tmp_path) -> Path:
    """A store holding one study with no finished trial."""
    db = tmp_path / "search.db"
    closed_study(db, "empty")
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


@pytest.mark.parametrize("replace, words", [
    (("architecture: simple_cnn_v1", "architecture: vgg11"), ["architecture 'vgg11'", "simple_cnn_v2"]),
    (("dataset: digits", "dataset: cifar10"), ["dataset 'cifar10'", "pathmnist"]),
    (("epochs: 3", "epochs: -3"), ["epochs", "-3"]),
    (("batch_size: 64", "batch_size: 64\n  learning_rate: 0.1"), ["learning_rate"]),
])
def test_bad_values_in_a_study_file_leave_the_store_untouched(tmp_path, store, replace, words):
    before = digest(store)
    path = study_file(tmp_path, "bad")
    path.write_text(path.read_text().replace(*replace))
    code, output = invoke(["start", "--study", str(path)], tmp_path)
    one_line_exit_2(code, output, "bad.yaml", *words)
    assert digest(store) == before


def test_truncated_data_file_stops_start_before_the_store_is_touched(tmp_path, store):
    from tests.support.data import write_medmnist_npz

    npz = write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    npz.write_bytes(npz.read_bytes()[:3000])
    path = study_file(tmp_path, "path")
    path.write_text(path.read_text().replace("dataset: digits", f"dataset: pathmnist\ndata_dir: {tmp_path}"))
    before = digest(store)
    code, output = invoke(["start", "--study", str(path)], tmp_path)
    one_line_exit_2(code, output, "pathmnist.npz is corrupt or truncated")
    assert digest(store) == before


def test_export_into_a_missing_folder(tmp_path):
    import optuna

    db = tmp_path / "search.db"
    closed_study(db, "done", optuna.trial.create_trial(value=0.9, user_attrs={"config": {"dataset": "digits"}}))
    before = digest(db)
    code, output = invoke(["export", "--study", "done", "-o", str(tmp_path / "no" / "best.yaml")], tmp_path)
    one_line_exit_2(code, output, "does not exist")
    assert digest(db) == before


def test_dashboard_refuses_a_missing_store(tmp_path):
    code, output = invoke(["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"], tmp_path)
    one_line_exit_2(code, output, "no study store")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_dashboard_on_a_taken_port_is_one_line_before_any_banner(tmp_path, store, host):
    import socket

    from tests.support.cli import run

    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(["dashboard", "--port", str(port), "--host", host], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""  # no banner, no warning about the interfaces it never bound
    assert proc.stderr.strip() == (f"Error: port {port} is already in use on {host} (another program listens "
                                   f"there); choose another with --port")


@pytest.mark.e2e
def test_dashboard_binds_to_localhost_by_default_and_warns_on_all_interfaces(tmp_path, store):
    import subprocess

    from tests.support.cli import cli_env, search_cmd
    from tests.support.wait import free_port, wait_for
    from tests.support.wait import http_get as _get

    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        port = free_port()
        args = ["dashboard", "--port", str(port)] + (["--host", host] if host != "127.0.0.1" else [])
        proc = subprocess.Popen(search_cmd() + args, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=cli_env())
        try:
            wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/studies"), 60, "the dashboard")
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
        assert f"http://{host}:{port}/" in out
        assert ("bound to all interfaces" in out) == warned, out
