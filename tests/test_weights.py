"""keep_best_weights: a trial that completes as the best so far keeps its best epoch's weights, and
`search export --weights` hands them over, so the final retraining can be skipped."""
from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.train import config, engine
from search.train.data import load
from tests.support.cli import run
from tests.support.store import trials_of
from tests.support.studies import study_file

pytestmark = pytest.mark.e2e  # every test here starts real processes


def test_the_exported_weights_give_the_best_trials_value_and_only_improvements_are_kept(tmp_path):
    spec = study_file(tmp_path, "keep", epochs=1, trials=4)
    spec.write_text(spec.read_text() + "keep_best_weights: true\n")
    assert run(["start", "--study", str(spec)], tmp_path).returncode == 0
    proc = run(["export", "--study", "keep", "-o", "best.yaml", "--weights"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "its weights -> best.pt" in proc.stdout
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    cfg = config.from_dict(saved["config"]).replace(device="cpu")
    assert cfg == config.load(tmp_path / "best.yaml").replace(device="cpu")
    trials = trials_of(tmp_path / "search.db", "keep")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    data = load(cfg.dataset, cfg.data_dir, torch.device("cpu"))
    trainer = engine.Trainer(cfg, data, torch.device("cpu"))
    trainer.model.load_state_dict(saved["state_dict"])
    assert trainer.evaluate(data.val)["acc"] == pytest.approx(best.value, abs=1e-6)

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'search.db'}")
    kept = [t.number for t in complete if any(m.filename.endswith("-model.pt") for m in
                                              optuna.artifacts.get_all_artifact_meta(t, storage=storage))]
    improvements, so_far = [], float("-inf")
    for t in sorted(complete, key=lambda t: t.datetime_complete):
        if t.value > so_far:
            improvements.append(t.number)
            so_far = t.value
    assert sorted(kept) == sorted(improvements) and best.number in kept


def test_export_weights_without_kept_weights_is_one_line_and_writes_nothing(tmp_path):
    spec = study_file(tmp_path, "plain", epochs=1, trials=1)
    assert run(["start", "--study", str(spec)], tmp_path).returncode == 0
    proc = run(["export", "--study", "plain", "-o", "best.yaml", "--weights"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights were not kept" in lines[0] and "keep_best_weights: true" in lines[0]
    assert not (tmp_path / "best.yaml").exists() and not (tmp_path / "best.pt").exists()
