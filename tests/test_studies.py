"""Study files -> StudySpec -> real Optuna samplers, pruners and trials (no mocks)."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from search.errors import SearchError
from search.hpo.space import Param, suggest
from search.hpo.studies import (
    StudySpec,
    find_study,
    list_study_files,
    load_study,
    make_pruner,
    make_sampler,
    study_dirs,
    suggest_config,
)
from search.train.config import TrainConfig

SHIPPED = ("digits", "mnist", "pathmnist", "pathmnist-small")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_study(folder: Path, name: str, text: str) -> Path:
    (folder / "studies").mkdir(parents=True, exist_ok=True)
    path = folder / "studies" / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in an empty folder, so only the packaged studies (and those a test writes) are found."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_trials(spec: StudySpec, n: int, *, seed: int = 1, storage: str | None = None):
    configs: dict[int, TrainConfig] = {}

    def objective(trial: optuna.Trial) -> float:
        configs[trial.number] = suggest_config(spec, trial)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), storage=storage)
    study.optimize(objective, n_trials=n)
    return study.trials, configs


# --- finding and loading ------------------------------------------------------------------------------------

def test_packaged_studies_are_found_from_any_folder(in_tmp):
    files = list_study_files()
    assert list(files) == list(SHIPPED)
    assert all(path.is_file() and in_tmp not in path.parents for path in files.values())
    assert study_dirs() == [files["digits"].parent]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_loads(in_tmp, name):
    spec = load_study(name)
    assert spec.name == name and spec.dataset == name.removesuffix("-small")
    assert spec.path == list_study_files()[name].resolve()
    TrainConfig(**spec.base_config())
    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)
    if not spec.multi:
        assert spec.space["momentum"].when == {"optimizer": ("sgd",)}


def test_the_shipped_front_study(in_tmp):
    """pathmnist-small: accuracy against parameters, unpruned, starting from the published recipe."""
    spec = load_study("pathmnist-small")
    assert spec.objectives == (("val_acc", "maximize"), ("params", "minimize"))
    assert (spec.multi, spec.metric, spec.pruner) == (True, "val_acc", {"name": "none"})
    assert spec.enqueue[0]["architecture"] == "resnet18" and spec.fixed["optimizer"] == "adam"
    assert spec.definition()["objectives"] == [["val_acc", "maximize"], ["params", "minimize"]]
    assert "objectives" not in load_study("pathmnist").definition()  # single-objective definitions are unchanged


def test_shipped_study_settings(in_tmp):
    path = load_study("pathmnist")
    assert (path.epochs, path.trials, path.metric, path.direction) == (20, 60, "val_acc", "maximize")
    assert path.fixed == {"schedule": "cosine", "warmup_epochs": 1}
    assert path.space["lr"].log and (path.space["lr"].low, path.space["lr"].high) == (1e-4, 1e-2)
    assert set(path.space["architecture"].choices) == {"simple_cnn_v2", "alexnet", "resnet18", "resnet50",
                                                       "xception"}
    # Chosen from bench/pruning.py's figures (docs/benchmarks.md).
    assert path.pruner == {"name": "successivehalving", "min_resource": 1, "reduction_factor": 4}
    assert isinstance(make_pruner(path), optuna.pruners.SuccessiveHalvingPruner)
    tpe = make_sampler(path)
    assert tpe._multivariate and tpe._group
    # Plain Adam (the MedMNIST v2 recipe) joins the optimizers; weight decay is searched for the other two only.
    assert path.space["optimizer"].choices == ("adam", "adamw", "sgd")
    assert path.space["weight_decay"].when == {"optimizer": ("adamw", "sgd")}
    assert path.enqueue == ({"lr": 0.001, "optimizer": "adam", "dropout": 0.0, "batch_size": 128,
                             "augmentation": "none", "architecture": "resnet18", "label_smoothing": 0.0},)
    assert path.definition()["enqueue"] == list(path.enqueue)

    mnist = load_study("mnist")
    assert (mnist.epochs, mnist.trials) == (10, 40)
    assert set(mnist.space["augmentation"].choices) == {"none", "crop"}
    assert set(mnist.space["architecture"].choices) == {"simple_cnn_v1", "simple_cnn_v2", "alexnet", "resnet18"}

    digits = load_study("digits")
    assert (digits.epochs, digits.trials) == (4, 12)
    assert {"lr", "dropout", "batch_size", "augmentation", "architecture"} <= set(digits.space)
    assert digits.space["augmentation"].choices == ("none", "crop")  # digits are not flip-invariant
    assert digits.space["architecture"].choices == ("simple_cnn_v1", "simple_cnn_v2")
    assert digits.enqueue == () and "enqueue" not in digits.definition()
    assert digits.space["batch_size"].choices == (32, 64)
    median = make_pruner(digits)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 1)
    assert make_sampler(digits)._n_startup_trials == 5


def test_digits_pruner_really_prunes_within_its_budget(in_tmp):
    """With the study's own sampler and pruner, 12 trials of learning curves that depend on lr see pruning."""
    spec = load_study("digits")
    study = optuna.create_study(direction=spec.direction, sampler=make_sampler(spec), pruner=make_pruner(spec))

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(spec, trial)
        quality = 1 - abs(math.log10(cfg.lr) + 2.5) / 3  # best near lr 3e-3
        for epoch in range(1, spec.epochs + 1):
            value = quality * (1 - 0.5 ** epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=spec.trials)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 3


def test_find_study_by_name_and_by_path(in_tmp):
    packaged = list_study_files()["digits"]
    assert find_study("digits") == packaged
    assert find_study(str(packaged)) == packaged
    assert load_study(str(packaged)).name == "digits"
    path = write_study(in_tmp, "mine", "name: mine\ndataset: digits\n")
    assert find_study("studies/mine.yaml") == Path("studies/mine.yaml")
    assert load_study("studies/mine.yaml").path == path.resolve()
    with pytest.raises(SearchError, match="study file not found: nothere.yaml"):
        find_study("nothere.yaml")


def test_cwd_studies_override_and_add(in_tmp):
    write_study(in_tmp, "digits", "name: my-digits\ndataset: digits\nepochs: 2\n")
    write_study(in_tmp, "extra", "name: extra\ndataset: mnist\n")
    files = list_study_files()
    assert list(files) == ["digits", "extra", "mnist", "pathmnist", "pathmnist-small"]
    assert files["digits"] == in_tmp / "studies" / "digits.yaml"
    assert files["mnist"].parent != in_tmp / "studies"
    assert study_dirs()[0] == in_tmp / "studies"
    spec = load_study("digits")
    assert (spec.name, spec.epochs, spec.space) == ("my-digits", 2, {})
    assert load_study("extra").dataset == "mnist"


def test_unknown_study_lists_the_available_ones(in_tmp):
    with pytest.raises(SearchError) as err:
        find_study("digit")
    assert err.value.message == ("unknown study 'digit'; available: digits, mnist, pathmnist, pathmnist-small "
                                 "(or give a path to a .yaml file)")


def test_defaults_and_overrides(in_tmp):
    write_study(in_tmp, "d", "name: d\ndataset: digits\ntimeout: 60\n")
    spec = load_study("d")
    assert (spec.metric, spec.direction, spec.epochs, spec.trials, spec.timeout) == ("val_acc", "maximize", 10,
                                                                                    20, 60.0)
    assert spec.sampler == {"name": "tpe", "seed": 0} and spec.pruner == {"name": "median"}
    assert spec.data_dir is None and spec.fixed == {} and spec.space == {}
    spec = load_study("d", data_dir="/data", trials=3, timeout=None)
    assert (spec.data_dir, spec.trials, spec.timeout) == ("/data", 3, 60.0)
    assert spec.base_config() == {"dataset": "digits", "data_dir": "/data", "epochs": 10, "metric": "val_acc"}
    with pytest.raises(SearchError, match=r"studies/d\.yaml: trials must be an integer of at least 1, got 0"):
        load_study("d", trials=0)


# --- validation ---------------------------------------------------------------------------------------------

GOOD = """\
name: t
dataset: digits
epochs: 3
space:
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
"""


def error_of(folder: Path, text: str) -> str:
    write_study(folder, "bad", text)
    with pytest.raises(SearchError) as err:
        load_study("bad")
    assert err.value.exit_code == 2
    message = err.value.message
    assert message.startswith("studies/bad.yaml:"), message
    return message


def test_the_good_base_file_loads(in_tmp):
    write_study(in_tmp, "good", GOOD)
    assert list(load_study("good").space) == ["optimizer", "momentum"]


@pytest.mark.parametrize("text, words", [
    (GOOD + "epoch: 4\n", ["unknown key 'epoch'", "valid keys:", "epochs", "space"]),
    ("name: t\n", ["'dataset' is required"]),
    ("dataset: digits\n", ["'name' is required"]),
    ("name: my study\ndataset: digits\n", ["name 'my study'", "letters, digits"]),
    ("name: \"it's\"\ndataset: digits\n", ["name \"it's\""]),
    ("name: t\ndataset: cifar10\n", ["dataset 'cifar10' is not known", "pathmnist"]),
    ("name: t\ndataset: digits\nmetric: accuracy\n", ["metric 'accuracy'", "val_acc, val_auc"]),
    ("name: t\ndataset: digits\ndirection: up\n", ["direction 'up'", "valid: maximize"]),
    ("name: t\ndataset: digits\nepochs: 0\n", ["epochs must be an integer of at least 1, got 0"]),
    ("name: t\ndataset: digits\ntrials: 2.5\n", ["trials must be an integer", "2.5"]),
    ("name: t\ndataset: digits\ntimeout: -1\n", ["timeout must be a number of seconds greater than 0"]),
    ("- a\n- b\n", ["expected a mapping of study keys"]),
    # space
    ("name: t\ndataset: digits\nspace:\n  learning_rate: {type: float, low: 0.1, high: 1}\n",
     ["space.learning_rate", "not a TrainConfig key", "lr"]),
    ("name: t\ndataset: digits\nspace:\n  epochs: {type: int, low: 1, high: 5}\n",
     ["space.epochs", "set by the study"]),
    ("name: t\ndataset: digits\nspace:\n  device: {type: categorical, choices: [cpu]}\n", ["space.device"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: loguniform, low: 0.1, high: 1}\n",
     ["space.lr", "type 'loguniform' is not known", "float, int, categorical"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 0.1, high: 1, lg: true}\n",
     ["space.lr", "unknown key 'lg'", "log"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 0.1}\n", ["space.lr", "'high' is required"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
     ["space.lr", "log needs low greater than 0, got low 0.0"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 1e-4, high: 0.1, log: true, step: 0.01}\n",
     ["space.lr", "log and step"]),
    ("name: t\ndataset: digits\nspace:\n  batch_size: {type: int, low: 32, high: 16.5}\n",
     ["space.batch_size", "high must be an integer"]),
    ("name: t\ndataset: digits\nspace:\n  batch_size: {type: int, low: 8, high: 64, step: 0}\n",
     ["space.batch_size", "step must be greater than 0"]),
    ("name: t\ndataset: digits\nspace:\n  optimizer: {type: categorical, choices: []}\n",
     ["space.optimizer", "choices must be a non-empty list"]),
    ("name: t\ndataset: digits\nspace:\n  optimizer: {type: categorical, choices: [adam, adam]}\n",
     ["space.optimizer", "'adam' is listed twice"]),
    ("name: t\ndataset: digits\nspace:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimiser: sgd}}\n",
     ["space.momentum", "when names 'optimiser'", "earlier parameters: none"]),
    ("name: t\ndataset: digits\nspace:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}\n"
     "  optimizer: {type: categorical, choices: [adam, sgd]}\n",
     ["space.momentum", "when names 'optimizer'", "defined earlier"]),
    (GOOD.replace("when: {optimizer: sgd}", "when: {optimizer: SGD}"),
     ["space.momentum", "when optimizer: 'SGD' can never be met", "'adam', 'sgd'"]),
    # every choice and bound must make a valid TrainConfig with `fixed`
    ("name: t\ndataset: digits\nspace:\n  architecture: {type: categorical, choices: [simple_cnn_v2, resnet9]}\n",
     ["space.architecture", "architecture 'resnet9' is not known", "resnet18"]),
    ("name: t\ndataset: digits\nspace:\n  augmentation: {type: categorical, choices: [none, rotate]}\n",
     ["space.augmentation", "unknown augmentation 'rotate'", "dihedral"]),
    ("name: t\ndataset: digits\nspace:\n  dropout: {type: float, low: 0.0, high: 1.0}\n",
     ["space.dropout", "dropout must be in [0, 1), got 1.0"]),
    ("name: t\ndataset: digits\nspace:\n  batch_size: {type: float, low: 16, high: 64}\n",
     ["space.batch_size", "batch_size must be an integer"]),
    ("name: t\ndataset: digits\nepochs: 3\nspace:\n  warmup_epochs: {type: float, low: 0, high: 3}\n",
     ["space.warmup_epochs", "warmup_epochs must be in [0, epochs=3)"]),
    # fixed
    (GOOD + "fixed:\n  learning_rate: 0.1\n", ["fixed.learning_rate", "not a TrainConfig key", "lr"]),
    (GOOD + "fixed:\n  optimizer: adam\n", ["fixed.optimizer", "both searched (space) and fixed"]),
    (GOOD + "fixed:\n  epochs: 5\n", ["fixed.epochs", "top-level key"]),
    (GOOD + "fixed:\n  schedule: step\n", ["fixed:", "schedule 'step' is not known", "cosine"]),
    # sampler and pruner
    (GOOD + "sampler: {name: bayes}\n", ["sampler.name 'bayes' is not known", "tpe", "random"]),
    (GOOD + "sampler: {name: random, n_startup_trials: 5}\n", ["sampler random", "n_startup_trials"]),
    (GOOD + "sampler: {name: tpe, seed: -1}\n", ["sampler.seed must be an integer of at least 0"]),
    (GOOD + "pruner: {name: asha}\n", ["pruner.name 'asha' is not known", "median", "hyperband", "none"]),
    (GOOD + "pruner: {name: median, warmup: 2}\n", ["pruner median", "warmup", "n_warmup_steps"]),
    (GOOD + "pruner: {name: median, n_startup_trials: -1}\n", ["pruner median", "negative"]),
    (GOOD + "pruner: {name: none, n_startup_trials: 1}\n", ["pruner none", "n_startup_trials"]),
    (GOOD + "pruner: {name: hyperband, min_resource: 5}\n",
     ["pruner hyperband: min_resource 5 is greater than max_resource 3"]),
    # enqueue: each entry a mapping of searched parameters, each value one its parameter can take
    (GOOD + "enqueue: {optimizer: adam}\n", ["enqueue must be a list of parameter mappings"]),
    (GOOD + "enqueue:\n  - {optimizer: adam}\n  - adam\n", ["enqueue[1]: expected a mapping", "'adam'"]),
    (GOOD + "enqueue:\n  - {}\n", ["enqueue[0]: expected a mapping"]),
    (GOOD + "enqueue:\n  - {optimizer: adamw}\n", ["enqueue[0].optimizer: 'adamw' is not a choice",
                                                     "choices: 'adam', 'sgd'"]),
    (GOOD + "enqueue:\n  - {lr: 0.01}\n", ["enqueue[0].lr: not a searched parameter",
                                             "searched: optimizer, momentum"]),
    (GOOD + "fixed:\n  architecture: simple_cnn_v1\nenqueue:\n  - {architecture: simple_cnn_v1}\n",
     ["enqueue[0].architecture: not a searched parameter", "fixed", "searched: optimizer, momentum"]),
    (GOOD + "enqueue:\n  - {optimizer: sgd, momentum: 0.99}\n",
     ["enqueue[0].momentum: 0.99 is outside the space", "values in [0.8, 0.95]"]),
    (GOOD + "enqueue:\n  - {optimizer: sgd, momentum: fast}\n",
     ["enqueue[0].momentum: 'fast' is not a finite number", "values in [0.8, 0.95]"]),
    (GOOD + "enqueue:\n  - {optimizer: adam, momentum: 0.9}\n",
     ["enqueue[0].momentum: 0.9 would never be used", "optimizer one of 'sgd'", "has optimizer 'adam'"]),
    (GOOD + "enqueue:\n  - {momentum: 0.9}\n", ["enqueue[0].momentum", "has no optimizer"]),
    ("name: t\ndataset: digits\nspace:\n  batch_size: {type: int, low: 16, high: 64, step: 16}\n"
     "enqueue:\n  - {batch_size: 40}\n",
     ["enqueue[0].batch_size: 40 is not on the space's steps", "[16, 64] in steps of 16 from 16"]),
    ("name: t\ndataset: digits\nspace:\n  batch_size: {type: int, low: 16, high: 64}\n"
     "enqueue:\n  - {batch_size: 32.0}\n", ["enqueue[0].batch_size: 32.0 is not an integer"]),
    ("name: t\ndataset: digits\nspace:\n  dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}\n"
     "enqueue:\n  - {dropout: 0.25}\n", ["enqueue[0].dropout: 0.25 is not on the space's steps"]),
    ("name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
     "enqueue:\n  - {lr: 1.0e-3}\n  - {lr: 0}\n",
     ["enqueue[1].lr: 0 is outside the space", "[0.0001, 0.01] (log scale)"]),
])
def test_validation_errors_name_the_file_and_key(in_tmp, text, words):
    message = error_of(in_tmp, text)
    for word in words:
        assert word in message, message


def test_a_bad_enqueue_entry_is_one_line_naming_the_file_entry_key_value_and_range(in_tmp):
    message = error_of(in_tmp, GOOD + "enqueue:\n  - {optimizer: sgd, momentum: 0.5}\n")
    assert message == ("studies/bad.yaml: enqueue[0].momentum: 0.5 is outside the space; valid: values in "
                       "[0.8, 0.95]")


def test_enqueue_entries_load_as_a_trial_holds_them(in_tmp):
    write_study(in_tmp, "q", GOOD + "enqueue:\n  - {momentum: 0.9, optimizer: sgd}\n  - {optimizer: adam}\n")
    spec = load_study("q")
    # space order, and a float parameter's value as a float (YAML's 1e-3 without a dot is a number too)
    assert spec.enqueue == ({"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adam"})
    assert list(spec.enqueue[0]) == ["optimizer", "momentum"]
    assert spec.definition()["enqueue"] == [{"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adam"}]
    write_study(in_tmp, "f", "name: f\ndataset: digits\nspace:\n  dropout: {type: float, low: 0, high: 0.5}\n"
                "  lr: {type: float, low: 1e-4, high: 1e-2}\nenqueue:\n  - {dropout: 0, lr: 1e-3}\n")
    (entry,) = load_study("f").enqueue
    assert entry == {"dropout": 0.0, "lr": 0.001} and isinstance(entry["dropout"], float)


def test_low_greater_than_high_message(in_tmp):
    message = error_of(in_tmp, "name: t\ndataset: digits\nspace:\n  lr: {type: float, low: 0.1, high: 0.001}\n")
    assert message == "studies/bad.yaml: space.lr: low 0.1 is greater than high 0.001"


def test_yaml_syntax_error_names_the_line(in_tmp):
    message = error_of(in_tmp, "name: t\ndataset: digits\n  epochs: 3\n")
    assert message.startswith("studies/bad.yaml: line 3"), message


def test_scientific_notation_without_a_dot_is_a_number(in_tmp):
    write_study(in_tmp, "sci", "name: sci\ndataset: digits\nspace:\n  lr: {type: float, low: 1e-4, high: 1e-2}\n")
    assert load_study("sci").space["lr"] == Param("lr", "float", low=1e-4, high=1e-2)


# --- suggesting ---------------------------------------------------------------------------------------------

def test_pathmnist_trials_conditional_bounds_and_configs(in_tmp, tmp_path):
    spec = load_study("pathmnist")
    trials, configs = run_trials(spec, 30, storage=f"sqlite:///{tmp_path / 'study.db'}")
    optimizers = {t.params["optimizer"] for t in trials}
    assert optimizers == {"adam", "adamw", "sgd"}  # every branch seen, so the checks below are not vacuous
    low_lr = 0
    for t in trials:
        sgd = t.params["optimizer"] == "sgd"
        assert ("momentum" in t.params) == sgd and ("nesterov" in t.params) == sgd
        assert ("weight_decay" in t.params) == (t.params["optimizer"] != "adam")
        for name, param in spec.space.items():
            if name not in t.params:
                continue
            value = t.params[name]
            if param.choices is not None:
                assert value in param.choices
            else:
                assert param.low <= value <= param.high
        assert t.distributions["lr"].log and t.distributions.get("weight_decay", t.distributions["lr"]).log
        assert not t.distributions["dropout"].log
        low_lr += t.params["lr"] < 1e-3
        cfg = configs[t.number]
        assert (cfg.dataset, cfg.epochs, cfg.metric, cfg.device) == ("pathmnist", 20, "val_acc", "auto")
        assert (cfg.schedule, cfg.warmup_epochs) == ("cosine", 1.0)
        assert (cfg.lr, cfg.architecture, cfg.batch_size) == (t.params["lr"], t.params["architecture"],
                                                              t.params["batch_size"])
        assert cfg.weight_decay == t.params.get("weight_decay", 0.0)
        if not sgd:
            assert (cfg.momentum, cfg.nesterov) == (TrainConfig.momentum, TrainConfig.nesterov)
        else:
            assert (cfg.momentum, cfg.nesterov) == (t.params["momentum"], t.params["nesterov"])
    # Log-uniform on [1e-4, 1e-2] puts half the draws below 1e-3; uniform would put about 9%.
    assert low_lr >= 8, low_lr


def test_int_step_log_and_chained_conditions(in_tmp):
    write_study(in_tmp, "ints", """\
name: ints
dataset: digits
epochs: 4
space:
  batch_size: {type: int, low: 16, high: 128, step: 16}
  seed: {type: int, low: 1, high: 1000, log: true}
  warmup_epochs: {type: float, low: 0, high: 1, step: 0.25}
  optimizer: {type: categorical, choices: [adam, adamw, sgd]}
  nesterov: {type: categorical, choices: [false, true], when: {optimizer: sgd}}
  label_smoothing: {type: float, low: 0.0, high: 0.2, when: {nesterov: true, optimizer: [sgd, adamw]}}
fixed:
  architecture: simple_cnn_v1
""")
    spec = load_study("ints")
    trials, configs = run_trials(spec, 40, seed=3)
    assert any("label_smoothing" in t.params for t in trials)
    assert any("nesterov" in t.params and "label_smoothing" not in t.params for t in trials)
    for t in trials:
        assert t.params["batch_size"] % 16 == 0 and 16 <= t.params["batch_size"] <= 128
        assert isinstance(t.distributions["seed"], optuna.distributions.IntDistribution)
        assert t.distributions["seed"].log
        assert t.params["warmup_epochs"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert ("nesterov" in t.params) == (t.params["optimizer"] == "sgd")
        assert ("label_smoothing" in t.params) == (t.params.get("nesterov") is True)
        cfg = configs[t.number]
        assert cfg.architecture == "simple_cnn_v1" and cfg.seed == t.params["seed"]
        assert cfg.label_smoothing == t.params.get("label_smoothing", 0.0)


def test_suggest_and_trial_config_with_a_fixed_trial(in_tmp):
    spec = load_study("digits")
    params = {"architecture": "simple_cnn_v1", "batch_size": 32, "lr": 0.01, "dropout": 0.1, "augmentation": "crop",
              "optimizer": "adam"}
    trial = optuna.trial.FixedTrial(params)
    assert suggest(spec.space, trial) == params  # momentum is not asked for: adam
    cfg = suggest_config(spec, optuna.trial.FixedTrial({**params, "optimizer": "sgd", "momentum": 0.85}))
    assert (cfg.optimizer, cfg.momentum, cfg.epochs, cfg.schedule, cfg.augmentation) == ("sgd", 0.85, 4, "cosine",
                                                                                          "crop")


# --- samplers and pruners -----------------------------------------------------------------------------------

def first_params(spec: StudySpec, seed_offset: int) -> dict:
    study = optuna.create_study(sampler=make_sampler(spec, seed_offset))
    trial = study.ask()
    return suggest(spec.space, trial)


@pytest.mark.parametrize("study", ["digits", "random"])
def test_sampler_seed_offsets(in_tmp, study):
    if study == "random":
        write_study(in_tmp, "random", load_study("digits").path.read_text().replace("name: digits", "name: r")
                    .replace("  name: tpe\n", "  name: random\n").replace("  n_startup_trials: 5", ""))
    spec = load_study(study)
    assert isinstance(make_sampler(spec), optuna.samplers.RandomSampler if study == "random"
                      else optuna.samplers.TPESampler)
    assert first_params(spec, 0) == first_params(spec, 0)
    assert first_params(spec, 1) == first_params(spec, 1)
    assert first_params(spec, 0)["lr"] != first_params(spec, 1)["lr"]


def test_sampler_shorthand_and_kwargs(in_tmp):
    write_study(in_tmp, "s", GOOD + "sampler: random\n")
    spec = load_study("s")
    assert spec.sampler == {"name": "random", "seed": 0}
    assert isinstance(make_sampler(spec), optuna.samplers.RandomSampler)
    write_study(in_tmp, "s", GOOD + "sampler: {name: tpe, seed: 7, n_startup_trials: 2, n_ei_candidates: 8}\n")
    tpe = make_sampler(load_study("s"))
    assert (tpe._n_startup_trials, tpe._n_ei_candidates) == (2, 8)


@pytest.mark.parametrize("pruner, cls, attrs", [
    (None, optuna.pruners.MedianPruner, {"_n_startup_trials": 5}),
    ("{name: median, n_startup_trials: 2, n_warmup_steps: 1, interval_steps: 2}", optuna.pruners.MedianPruner,
     {"_n_startup_trials": 2, "_n_warmup_steps": 1, "_interval_steps": 2, "_percentile": 50.0}),
    ("{name: percentile, percentile: 25}", optuna.pruners.PercentilePruner, {"_percentile": 25.0}),
    ("{name: hyperband, min_resource: 2, reduction_factor: 2}", optuna.pruners.HyperbandPruner,
     {"_min_resource": 2, "_max_resource": 7, "_reduction_factor": 2}),
    ("{name: hyperband, max_resource: 5}", optuna.pruners.HyperbandPruner, {"_max_resource": 5,
                                                                            "_min_resource": 1}),
    ("{name: successivehalving, min_resource: 1, reduction_factor: 2}", optuna.pruners.SuccessiveHalvingPruner,
     {"_min_resource": 1, "_reduction_factor": 2}),
    ("none", optuna.pruners.NopPruner, {}),
])
def test_make_pruner(in_tmp, pruner, cls, attrs):
    text = GOOD.replace("epochs: 3", "epochs: 7") + (f"pruner: {pruner}\n" if pruner else "")
    write_study(in_tmp, "p", text)
    made = make_pruner(load_study("p"))
    assert type(made) is cls
    for attr, value in attrs.items():
        assert getattr(made, attr) == value, attr
