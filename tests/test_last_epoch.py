"""A trial that trained all its epochs completes, whatever the pruner says: pruning it would save nothing and would
hide its value from the study (a median pruner can vote against a fully trained trial)."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.hpo.objective import Objective
from search.hpo.studies import load_study


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize("epochs, state, epochs_run", [(1, TrialState.COMPLETE, 1), (2, TrialState.PRUNED, 1)])
def test_the_pruner_is_not_asked_after_the_last_epoch(tmp_path, epochs, state, epochs_run):
    (tmp_path / "t.yaml").write_text(f"name: t\ndataset: digits\nepochs: {epochs}\ntrials: 1\n"
                                     "fixed: {architecture: simple_cnn_v1, batch_size: 64}\n")
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize",
                                pruner=AlwaysPrune())
    study.optimize(Objective(load_study(str(tmp_path / "t.yaml")), "cpu"), n_trials=1, catch=())
    (trial,) = study.trials
    assert trial.state == state and trial.user_attrs["epochs_run"] == epochs_run
    assert sorted(trial.intermediate_values) == list(range(1, epochs_run + 1))
