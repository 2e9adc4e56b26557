"""Trial files in the Optuna artifact store: written by real workers, served by a real optuna-dashboard."""
from __future__ import annotations

import csv
import io
import logging
import subprocess

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from search.hpo import artifacts
from search.hpo.objective import Objective
from search.hpo.studies import load_study
from tests.support.cli import cli_env, search_cmd
from tests.support.data import write_medmnist_npz
from tests.support.wait import free_port, wait_for
from tests.support.wait import http_get as _get

PNG = b"\x89PNG\r\n\x1a\n"


def files_of(s, trial) -> dict[str, bytes]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{s.root / 'search.db'}")
    return {m.filename: (s.root / "artifacts" / m.artifact_id).read_bytes()
            for m in get_all_artifact_meta(trial, storage=storage)}


@pytest.mark.e2e
def test_every_finished_trial_carries_its_learning_curve_and_a_complete_one_its_confusion_matrix(searched):
    done = [t for t in searched.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert {t.state for t in done} == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in done:
        files = files_of(searched, t)
        n = t.number
        expected = {f"trial-{n}-learning-curve.png", f"trial-{n}-learning-curve.csv", f"trial-{n}-log.txt"}
        if t.state == TrialState.COMPLETE:
            expected.add(f"trial-{n}-confusion-val.png")
        assert set(files) == expected, (t.state, set(files))
        assert all(data.startswith(PNG) for name, data in files.items() if name.endswith(".png"))
        assert "Traceback" not in files[f"trial-{n}-log.txt"].decode()  # a log, and no failure in it
        rows = list(csv.DictReader(io.StringIO(files[f"trial-{n}-learning-curve.csv"].decode())))
        assert [int(r["epoch"]) for r in rows] == list(range(1, t.user_attrs["epochs_run"] + 1))
        # the curve is the one the pruner saw
        assert [float(r["val_acc"]) for r in rows] == [t.intermediate_values[e] for e in range(1, len(rows) + 1)]


@pytest.mark.e2e
def test_the_dashboard_serves_the_trial_files(searched):
    trial = next(t for t in searched.trials if t.state == TrialState.COMPLETE)
    storage = optuna.storages.RDBStorage(f"sqlite:///{searched.root / 'search.db'}")
    meta = next(m for m in get_all_artifact_meta(trial, storage=storage) if m.filename.endswith("confusion-val.png"))
    study_id = storage.get_study_id_from_name("tiny")
    port = free_port()
    dash = subprocess.Popen(search_cmd() + ["dashboard", "--port", str(port)], cwd=searched.root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/studies"), 60, "the dashboard")
        body = _get(f"http://127.0.0.1:{port}/artifacts/{study_id}/{trial._trial_id}/{meta.artifact_id}")
        assert body is not None and body == (searched.root / "artifacts" / meta.artifact_id).read_bytes()
        assert body.startswith(PNG)
    finally:
        dash.terminate()
        out, _ = dash.communicate(timeout=30)
    assert "trial files in artifacts (Ctrl-C to stop)" in out


def test_a_store_that_cannot_be_written_does_not_fail_the_trial(tmp_path, monkeypatch, caplog):
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    (tmp_path / "tiny.yaml").write_text(f"name: t\ndataset: pathmnist\ndata_dir: {tmp_path}\nepochs: 1\n"
                                        "trials: 1\npruner: {name: none}\n"
                                        "fixed: {architecture: simple_cnn_v1, batch_size: 32}\n")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the artifact folder should be")
    monkeypatch.setenv(artifacts.ENV, str(blocked))
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    with caplog.at_level(logging.WARNING, logger="search"):
        study.optimize(Objective(load_study(str(tmp_path / "tiny.yaml")), "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == trial.intermediate_values[1]
    assert get_all_artifact_meta(trial, storage=study._storage) == []
    assert any("trial 0: its learning curve could not be saved" in r.getMessage() for r in caplog.records)
    assert any("the checkpoint could not be written" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("url, explicit, env, expected", [
    ("sqlite:///runs/search.db", None, None, "runs/artifacts"),
    ("sqlite:////data/s.db", None, "/mnt/shared", "/mnt/shared"),
    ("sqlite:////data/s.db", "/elsewhere", "/mnt/shared", "/elsewhere"),
    ("postgresql://u@db/search", None, None, None),
    ("postgresql://u@db/search", None, "/mnt/shared", "/mnt/shared"),
    ("grpc://127.0.0.1:13000", None, None, None),
])
def test_artifact_folder(url, explicit, env, expected, monkeypatch):
    if env is None:
        monkeypatch.delenv(artifacts.ENV, raising=False)
    else:
        monkeypatch.setenv(artifacts.ENV, env)
    folder = artifacts.artifact_dir(url, explicit)
    assert (str(folder) if folder is not None else None) == expected
