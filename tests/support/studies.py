"""Small study files for real searches, and one real search with final runs and their report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.support.cli import run
from tests.support.store import trials_of

# A small, fast study: one of the two learning rates is hopeless, so the median pruner has work to do.
STUDY = """\
name: {name}
dataset: digits
metric: val_acc
epochs: {epochs}
trials: {trials}
sampler: {{name: tpe, seed: 0, n_startup_trials: 4}}
pruner: {{name: median, n_startup_trials: 2, n_warmup_steps: 0}}
space:
  lr: {{type: categorical, choices: [0.00001, 0.003]}}
  dropout: {{type: float, low: 0.0, high: 0.5}}
  optimizer: {{type: categorical, choices: [adam, sgd]}}
  momentum: {{type: float, low: 0.8, high: 0.95, when: {{optimizer: sgd}}}}
fixed:
  architecture: {arch}
  batch_size: 64
"""


def study_file(tmp_path: Path, name: str = "tiny", *, epochs: int = 3, trials: int = 8,
               arch: str = "simple_cnn_v1") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, epochs=epochs, trials=trials, arch=arch))
    return path


# For the Ctrl-C tests (tests/test_ctrl_c.py, bench/ctrl_c.py): short unpruned trials of one small CNN.
CTRL_C_STUDY = """\
name: {name}
dataset: digits
metric: val_acc
epochs: 2
trials: {trials}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
space:
  lr: {{type: float, low: 0.001, high: 0.01, log: true}}
fixed:
  architecture: simple_cnn_v1
  batch_size: 64
"""

# Two architectures, a hopeless learning rate for the pruner to stop, and a conditional parameter (momentum).
# With one worker and sampler seed 5 the four trials are fixed: the two first ones use SGD, the third the
# hopeless rate (pruned after epoch 1), the last simple_cnn_v1 with Adam. The fixture checks what the tests need.
REPORT_STUDY = """\
name: tiny
dataset: digits
metric: val_acc
epochs: 2
trials: 4
sampler: {name: tpe, seed: 5, n_startup_trials: 4}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
space:
  architecture: {type: categorical, choices: [simple_cnn_v1, simple_cnn_v2]}
  lr: {type: categorical, choices: [0.00001, 0.003]}
  dropout: {type: float, low: 0.0, high: 0.5}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
fixed:
  batch_size: 64
"""
REPORT_FINAL = "dataset: digits\narchitecture: simple_cnn_v1\nepochs: 3\nbatch_size: 64\nlr: 0.003\n"


@dataclass
class Searched:
    root: Path
    trials: list[optuna.trial.FrozenTrial]
    train_stdout: str
    report: Path


def search_tiny(tmp_path_factory) -> Searched:
    """One real search, two final runs and their report: what the report and artifact tests read."""
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.yaml").write_text(REPORT_STUDY)
    start = run(["start", "--study", "tiny.yaml", "--workers", "1"], root)
    assert start.returncode == 0, start.stdout + start.stderr
    trials = trials_of(root / "search.db", "tiny")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert any(t.state == TrialState.PRUNED for t in trials), "the study must prune a trial"
    assert len({t.value for t in complete}) >= 2, "importances need two complete trials with different values"
    (root / "final.yaml").write_text(REPORT_FINAL)
    train = run(["train", "final.yaml", "--seeds", "2", "--epochs", "1", "--out", "final", "--device", "cpu"], root)
    assert train.returncode == 0, train.stderr
    made = run(["report", "--study", "tiny", "--run", "final", "-o", "out"], root)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().endswith("out/index.html")
    return Searched(root, trials, train.stdout, root / "out")
