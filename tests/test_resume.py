"""Checkpoints and exact resume: a trial stopped by kill -9 or Ctrl-C is retried and goes on at the epoch after
its last finished one, with the same learning curve; an unusable checkpoint costs a restart, in one line.

The engine's resume is checked bit for bit against an uninterrupted run; the search's with real worker processes,
real signals and a real SQLite study.
"""
from __future__ import annotations

import os
import signal
import subprocess

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.hpo.objective import Objective, checkpoint_path
from search.hpo.storage import open_storage
from search.hpo.studies import load_study
from search.train import checkpoint, engine
from search.train.config import TrainConfig
from tests.support.cli import cli_env, run, search_cmd
from tests.support.signals import Interruptible, assert_clean_stop
from tests.support.store import by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import wait_for

CFG = TrainConfig(dataset="digits", architecture="simple_cnn_v2", epochs=4, batch_size=64, lr=3e-3, dropout=0.3,
                  augmentation="crop+affine", schedule="cosine", device="cpu", seed=3)


def test_a_run_resumed_from_its_epoch_2_checkpoint_is_the_uninterrupted_run_bit_for_bit(tmp_path):
    straight = engine.fit(CFG)
    path = tmp_path / "run.pt"
    engine.fit(CFG, checkpoint=path, on_epoch=lambda epoch, _m: epoch == 2)  # stopped after epoch 2
    state = checkpoint.load(path, CFG.to_dict())
    assert state["epoch"] == 2
    heard: list[int] = []
    resumed = engine.fit(CFG, checkpoint=path, resume=state, on_epoch=lambda epoch, _m: heard.append(epoch))
    assert heard == [1, 2, 3, 4]  # the epochs it resumes from first, then its own
    assert resumed.resumed_at == 3 and len(resumed.trained) == 2
    keys = ("train_loss", "val_acc", "val_auc", "val_loss", "lr")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in straight.history]
    assert resumed.best_epoch == straight.best_epoch
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("damage", ["truncated", "another version", "another configuration"])
def test_an_unusable_checkpoint_is_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "run.pt"
    engine.fit(CFG.replace(epochs=1), checkpoint=path)
    config = CFG.replace(epochs=1).to_dict()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "another version":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "version": 99}, path)
    else:
        config = {**config, "lr": 0.1}
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path, config)
    assert len(str(err.value).splitlines()) == 1 and str(path) in str(err.value)


def test_a_retry_whose_checkpoint_is_truncated_says_so_in_one_line_and_starts_from_epoch_1(tmp_path, caplog):
    spec = load_study(str(study_file(tmp_path, "bad", epochs=2, trials=1)))
    study = optuna.create_study(study_name="bad", storage=open_storage(f"sqlite:///{tmp_path}/search.db"),
                                direction="maximize")
    broken = checkpoint_path(tmp_path / "artifacts", "bad", 7)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    study.enqueue_trial({"lr": 0.003, "dropout": 0.1, "optimizer": "adam"}, user_attrs={"retry_of": 7})
    study.optimize(Objective(spec, "cpu"), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["resumed_from_trial"] == 7 and trial.user_attrs["resumed_at_epoch"] == 1
    assert "cannot be read" in trial.user_attrs["resume_note"]
    assert sorted(trial.intermediate_values) == [1, 2] and trial.user_attrs["epochs_run"] == 2
    lines = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "starts again from epoch 1" in lines[0]
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt"))  # a finished trial leaves none


def _reported(db, name: str, epochs: int):
    """The running trial once it reported `epochs` epochs (its checkpoint holds at least those)."""
    return next((t for t in by_state(trials_of(db, name), TrialState.RUNNING)
                 if len(t.intermediate_values) >= epochs), None)


def _assert_resumed(trials, victim_number: int, epochs: int) -> optuna.trial.FrozenTrial:
    victim = trials[victim_number]
    retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == victim_number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    resumed_at = retry.user_attrs["resumed_at_epoch"]
    assert resumed_at >= len(victim.intermediate_values) + 1 >= 3  # no finished epoch is trained twice
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))  # the whole curve, each epoch once
    for step, value in victim.intermediate_values.items():
        assert retry.intermediate_values[step] == value  # the old curve, continued
    assert retry.user_attrs["epochs_run"] == epochs - (resumed_at - 1)
    assert len(victim.intermediate_values) + retry.user_attrs["epochs_run"] <= epochs
    return retry


@pytest.mark.e2e
def test_kill_9_at_epoch_3_of_6_resumes_the_trial_at_the_next_epoch(tmp_path):
    spec = study_file(tmp_path, "kill", epochs=6, trials=1, arch="simple_cnn_v2")
    db = tmp_path / "search.db"
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    victim = wait_for(lambda: _reported(db, "kill", 3), 300, "epoch 3 of a running trial")
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    trials = trials_of(db, "kill")
    assert "died (killed by SIGKILL)" in trials[victim.number].user_attrs["reason"]
    retry = _assert_resumed(trials, victim.number, 6)
    assert retry.user_attrs["resumed_at_epoch"] >= 4
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt"))


@pytest.mark.e2e
def test_ctrl_c_then_the_same_command_resumes_the_interrupted_trial_from_its_checkpoint(tmp_path):
    spec = study_file(tmp_path, "stop", epochs=5, trials=1, arch="simple_cnn_v2")
    db = tmp_path / "search.db"
    command = ["start", "--study", str(spec), "--workers", "1"]
    first = Interruptible.start(command, tmp_path)
    wait_for(lambda: _reported(db, "stop", 2), 300, "epoch 2 of a running trial", every=0.05)
    assert_clean_stop(first, first.ctrl_c(), db, "stop")
    stopped = by_state(trials_of(db, "stop"), TrialState.FAIL)
    assert len(stopped) == 1 and stopped[0].user_attrs["reason"] == "interrupted"
    assert f"trial {stopped[0].number} was stopped and will resume from its last finished epoch" in first.text()
    again = run(command, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_resumed(trials_of(db, "stop"), stopped[0].number, 5)
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt"))
