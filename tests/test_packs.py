"""Trial packs, the search's side (search/hpo/pack_trials.py, docs/packs.md): every member a real trial with its own
reports, pruning, files and checkpoint; queued trials join a pack they fit; a packed worker killed by SIGKILL has
each member retried from its own checkpoint; a whole packed search through the real CLI meets its budget exactly.
Real SQLite stores, digits data, real processes and signals for the end-to-end tests."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from search.hpo.objective import Objective
from search.hpo.storage import FINISHED, open_storage
from search.hpo.studies import load_study, make_sampler
from search.hpo.supervisor import ensure_study
from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import wait_for
from tests.test_resume import _assert_resumed
from tests.test_search_errors import invoke, one_line_exit_2

# Two architectures (never fused together), a hopeless learning rate (the threshold pruner stops it after epoch 1)
# and a good one; three queued trials, one of the other architecture.
QUEUED = """\
name: queued
dataset: digits
metric: val_acc
epochs: 2
trials: 3
pack: 3
sampler: {name: tpe, seed: 0}
pruner: none
space:
  architecture: {type: categorical, choices: [simple_cnn_v1, simple_cnn_v2]}
  lr: {type: categorical, choices: [0.00001, 0.003]}
  dropout: {type: float, low: 0.0, high: 0.5}
fixed:
  batch_size: 64
enqueue:
  - {architecture: simple_cnn_v1, lr: 0.003, dropout: 0.1}
  - {architecture: simple_cnn_v2, lr: 0.003}
  - {architecture: simple_cnn_v1, lr: 0.00001, dropout: 0.3}
"""


def test_queued_trials_join_the_pack_they_fit_and_a_pruned_member_leaves_it_while_the_others_complete(tmp_path):
    path = tmp_path / "queued.yaml"
    path.write_text(QUEUED)
    spec = load_study(str(path))
    url = f"sqlite:///{tmp_path / 'search.db'}"
    ensure_study(spec, url)
    # A pruner that stops a member whose val_acc is below 0.3 (chance is 0.1): the hopeless rate, after epoch 1.
    study = optuna.load_study(study_name="queued", storage=open_storage(url), sampler=make_sampler(spec),
                              pruner=optuna.pruners.ThresholdPruner(lower=0.3))
    told: list[optuna.trial.FrozenTrial] = []
    objective = Objective(spec, "cpu", on_done=told.append)
    objective.size = 3
    study.optimize(objective, n_trials=1)
    trials = study.get_trials()
    assert [t.number for t in told] == [2, 3]  # the members the pack told itself; Optuna told the first
    members = [trials[n] for n in (0, 2, 3)]  # the queued trials of its architecture first, then a new one
    assert trials[1].state == TrialState.WAITING  # queued with the other architecture: it waits for its own pack
    assert all(t.user_attrs["pack"] == {"id": 0, "size": 3, "members": [0, 2, 3]} for t in members)
    assert {t.params["architecture"] for t in members} == {"simple_cnn_v1"}  # the new one: fixed to the first's
    assert trials[2].params["dropout"] == 0.3 and set(trials[3].params) == {"architecture", "lr", "dropout"}
    pruned = trials[2]
    assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [1]
    assert pruned.user_attrs["epochs_run"] == 1
    first = trials[0]
    assert first.state == TrialState.COMPLETE and sorted(first.intermediate_values) == [1, 2]
    assert first.value == max(first.intermediate_values.values()) and first.user_attrs["epochs_run"] == 2
    assert trials[3].state in FINISHED
    for t in (first, pruned):  # each its own files, its own curve
        files = {m.filename: (tmp_path / "artifacts" / m.artifact_id).read_bytes()
                 for m in get_all_artifact_meta(t, storage=study._storage)}
        n = t.number
        expected = {f"trial-{n}-learning-curve.png", f"trial-{n}-learning-curve.csv", f"trial-{n}-log.txt"}
        if t.state == TrialState.COMPLETE:
            expected.add(f"trial-{n}-confusion-val.png")
        assert set(files) == expected, set(files)
        rows = list(csv.DictReader(io.StringIO(files[f"trial-{n}-learning-curve.csv"].decode())))
        assert [float(r["val_acc"]) for r in rows] == [t.intermediate_values[e] for e in range(1, len(rows) + 1)]
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt"))  # finished members leave none


@pytest.mark.parametrize("text, words", [
    ("pack: 0\n", ["pack must be an integer of at least 1, got 0"]),
    ("pack: four\n", ["pack must be an integer of at least 1, got 'four'"]),
    ("pack: 2.5\n", ["pack must be an integer", "2.5"]),
])
def test_a_bad_pack_is_one_line(tmp_path, text, words):
    (tmp_path / "bad.yaml").write_text("name: bad\ndataset: digits\nepochs: 1\n" + text)
    one_line_exit_2(*invoke(["start", "--study", "bad.yaml"], tmp_path), "bad.yaml", *words)


def test_a_bad_pack_option_is_one_line(tmp_path):
    code, output = invoke(["worker", "--study", "digits", "--pack", "0"], tmp_path)
    one_line_exit_2(code, output, "--pack", "0")


def _all_reported(db, name: str, members: int, epochs: int):
    running = [t for t in by_state(trials_of(db, name), TrialState.RUNNING) if "pack" in t.user_attrs]
    ready = len(running) == members and all(len(t.intermediate_values) >= epochs for t in running)
    return running if ready else None


@pytest.mark.e2e
def test_kill_9_of_a_packed_worker_retries_each_member_from_its_own_checkpoint(tmp_path):
    spec = study_file(tmp_path, "kill", epochs=3, trials=2)
    spec.write_text(spec.read_text().replace("pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 0}",
                                             "pruner: none"))
    db = tmp_path / "search.db"
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "1", "--pack", "2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    victims = wait_for(lambda: _all_reported(db, "kill", 2, 2), 300, "epoch 2 of a running pack of 2")
    os.kill(int(victims[0].user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    numbers = sorted(t.number for t in victims)
    assert f"trials {', '.join(map(str, numbers))} (a pack) failed" in out, out
    trials = trials_of(db, "kill")
    assert len(by_state(trials, *FINISHED)) == 2 and not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    for number in numbers:
        assert "died (killed by SIGKILL)" in trials[number].user_attrs["reason"]
        retry = _assert_resumed(trials, number, 3)  # its own checkpoint: the member's curve, continued
        assert "pack" not in retry.user_attrs  # a retry resumes alone
    assert "retried trials run alone" in out
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt"))


@pytest.mark.e2e
def test_a_packed_search_of_the_digits_study_meets_its_budget_exactly(tmp_path):
    (tmp_path / "studies").mkdir()
    study_file(tmp_path / "studies", "digits", epochs=1, trials=8)  # ./studies/digits.yaml: the small digits study
    proc = run(["start", "--study", "digits", "--workers", "2", "--pack", "4"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(tmp_path / "search.db", "digits")
    assert len(by_state(trials, *FINISHED)) == 8  # exactly the budget
    assert not by_state(trials, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    packs = {t.user_attrs["pack"]["id"]: t.user_attrs["pack"] for t in trials if "pack" in t.user_attrs}
    assert packs and all(1 < p["size"] <= 4 for p in packs.values())
    for t in trials:
        assert t.user_attrs["config"]["epochs"] == 1 and ("momentum" in t.params) == (t.params["optimizer"] == "sgd")
        if "pack" in t.user_attrs:
            members = [trials[n] for n in t.user_attrs["pack"]["members"]]
            assert len({m.user_attrs["worker"] for m in members}) == 1  # one worker trained them together
    assert "finished 8/8" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    status = run(["status", "--study", "digits"], tmp_path)
    assert status.returncode == 0 and f"packs: {len(packs)} trained" in status.stdout, status.stdout
