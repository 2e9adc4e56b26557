"""Small study files for real searches, and one real search with final runs and their report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from tests.support.cli import run
from tests.support.data import write_medmnist_npz
from tests.support.store import trials_of

ONE_LR = {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
SIMPLE_CNN = {"architecture": "simple_cnn_v1", "batch_size": 64}
RANDOM = {"name": "random", "seed": 0}
NO_PRUNER = {"name": "none"}


def write_study(folder: Path, name: str, *, dataset: str = "digits", epochs: int = 1, trials: int = 1,
                sampler: dict | None = None, pruner: dict | str | None = None, space: dict | None = None,
                fixed: dict | None = None, **keys) -> Path:
    """The one study-file builder of the tests: folder/NAME.yaml from its keys, in the order a person writes them.

    Defaults: the digits dataset (bundled), a random sampler, no pruner, one log-uniform learning rate, a small CNN.
    `keys` adds any other key of a study file (data_dir, metric, objectives, pack, enqueue, cv_folds, ...); a key
    given None is left out."""
    study = {"name": name, "dataset": dataset, **({"metric": "val_acc"} if "objectives" not in keys else {}),
             "epochs": epochs, "trials": trials, "sampler": RANDOM if sampler is None else sampler,
             "pruner": NO_PRUNER if pruner is None else pruner, "space": ONE_LR if space is None else space,
             "fixed": SIMPLE_CNN if fixed is None else fixed, **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in study.items() if v is not None}, sort_keys=False))
    return path


def write_medmnist_study(folder: Path, name: str, *, counts=(256, 64, 64), **keys) -> Path:
    """A study of a small MedMNIST-format file in `folder` (organamnist layout): trials of about a second."""
    write_medmnist_npz(folder / "organamnist.npz", channels=1, classes=11, counts=counts)
    return write_study(folder, name, dataset="organamnist", data_dir=str(folder), **keys)


# A small, fast study: one of the two learning rates is hopeless, so the median pruner has work to do.
def study_file(tmp_path: Path, name: str = "tiny", *, epochs: int = 3, trials: int = 8,
               arch: str = "simple_cnn_v1") -> Path:
    return write_study(
        tmp_path, name, epochs=epochs, trials=trials,
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 4},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        space={"lr": {"type": "categorical", "choices": [0.00001, 0.003]},
               "dropout": {"type": "float", "low": 0.0, "high": 0.5},
               "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
               "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}},
        fixed={"architecture": arch, "batch_size": 64})


def ctrl_c_study(folder: Path, name: str, *, trials: int, epochs: int = 2, **keys) -> Path:
    """For the Ctrl-C tests (tests/test_ctrl_c.py, bench/ctrl_c.py): short unpruned trials of one small CNN."""
    return write_study(folder, name, epochs=epochs, trials=trials, **keys)


# Two architectures, a hopeless learning rate for the pruner to stop, and a conditional parameter (momentum).
# With one worker and sampler seed 5 the four trials are fixed: the two first ones use SGD, the third the
# hopeless rate (pruned after epoch 1), the last simple_cnn_v1 with Adam. The fixture checks what the tests need.
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
    write_study(root, "tiny", epochs=2, trials=4, sampler={"name": "tpe", "seed": 5, "n_startup_trials": 4},
                pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                space={"architecture": {"type": "categorical", "choices": ["simple_cnn_v1", "simple_cnn_v2"]},
                       "lr": {"type": "categorical", "choices": [0.00001, 0.003]},
                       "dropout": {"type": "float", "low": 0.0, "high": 0.5},
                       "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                       "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}},
                fixed={"batch_size": 64})
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
