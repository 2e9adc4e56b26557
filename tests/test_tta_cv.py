"""Finalists that hold on new data: test-time augmentation, the epoch-selection metric, cross-validated selection."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from torch import nn

from search.cli import main
from search.errors import SearchError
from search.hpo import folds, supervisor
from search.hpo.objective import Objective
from search.hpo.studies import load_study
from search.train import engine
from search.train.config import TrainConfig
from search.train.data import fold_data, get_info, load
from search.train.metrics import evaluate_scores
from tests.support.cli import run
from tests.support.data import write_medmnist_npz
from tests.support.store import trials_of

CPU = torch.device("cpu")


# --- test-time augmentation ----------------------------------------------------------------------------------


def test_tta_none_gives_the_numbers_of_one_plain_pass_exactly():
    cfg = TrainConfig(dataset="digits", batch_size=64, device="cpu", architecture="simple_cnn_v1")
    data = load("digits", None, CPU)
    trainer = engine.Trainer(cfg, data, CPU)
    got, scores = trainer.evaluate_with_scores(data.val)
    with torch.inference_mode():  # what evaluation has always computed: one pass, softmax and cross-entropy of it
        trainer.model.eval()
        x = ((data.val.images.float() / 255.0 - data.mean) / data.std).contiguous(memory_format=torch.channels_last)
        logits = trainer.model(x).float()
        plain = evaluate_scores(data.val.labels, logits.softmax(dim=1), "multi-class")
        loss = float(nn.functional.cross_entropy(logits, data.val.labels))
    assert torch.equal(scores, logits.softmax(dim=1))
    assert got == {"acc": plain["acc"], "auc": plain["auc"], "loss": loss}


class LeftRight(nn.Module):
    """9 classes: class 0 scores the brightness of the image's left half, class 1 its right half's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        out = torch.zeros(x.shape[0], 9)
        out[:, 0] = 4 * x[..., :half].mean(dim=(1, 2, 3))
        out[:, 1] = 4 * x[..., half:].mean(dim=(1, 2, 3))
        return out


def test_a_flip_view_averages_the_image_and_its_mirror_and_the_probabilities_sum_to_1():
    images = torch.zeros(4, 3, 28, 28, dtype=torch.uint8)
    images[..., :14] = 255  # bright on the left only
    info, mean, std = get_info("pathmnist"), torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    model = LeftRight()

    def probabilities(tta: str) -> tuple[torch.Tensor, torch.Tensor]:
        return engine.score(model, images, TrainConfig(dataset="pathmnist", tta=tta), info, mean, std)

    _, plain = probabilities("none")
    assert (plain[:, 0] > 2 * plain[:, 1]).all()  # left bright: class 0 wins without TTA
    mirrored = model(images.flip(-1).float() / 255.0).softmax(dim=1)
    for tta in ("flip", "dihedral"):
        logits, p = probabilities(tta)
        assert torch.allclose(p.sum(dim=1), torch.ones(4), atol=1e-6), tta
        assert torch.allclose(p[:, 0], p[:, 1], atol=1e-6), tta  # each half is bright in as many views
        assert torch.allclose(logits.softmax(dim=1), p, atol=1e-6), tta  # the logits are those of the mean
    assert torch.allclose(probabilities("flip")[1], (plain + mirrored) / 2, atol=1e-6)


@pytest.mark.parametrize("dataset, allowed", [("digits", "none"), ("mnist", "none"), ("organamnist", "none"),
                                              ("pneumoniamnist", "none, flip"),
                                              ("pathmnist", "none, flip, dihedral")])
def test_a_view_the_dataset_does_not_allow_is_one_line(dataset, allowed):
    for tta in ("none", "flip", "dihedral"):
        if tta in allowed:
            assert TrainConfig(dataset=dataset, tta=tta).tta == tta
            continue
        with pytest.raises(SearchError) as err:
            TrainConfig(dataset=dataset, tta=tta)
        assert err.value.message == (f"tta '{tta}' can change the labels of {dataset} (its images have an "
                                     f"orientation); valid for {dataset}: {allowed}")


@pytest.mark.e2e
def test_search_train_with_tta_records_it_and_its_cost_and_refuses_a_view_in_one_line(tmp_path, monkeypatch):
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9, counts=(64, 32, 32))
    (tmp_path / "run.yaml").write_text(f"dataset: pathmnist\ndata_dir: {tmp_path}\narchitecture: simple_cnn_v1\n"
                                       f"epochs: 1\nbatch_size: 32\ntta: dihedral\n")
    done = run(["train", "run.yaml", "--out", "out", "--device", "cpu"], tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["tta"], metrics["tta_views"], metrics["keep_epoch_by"]) == ("dihedral", 8, "val_acc")
    assert metrics["test_ms_per_image"] > 0
    rows = (tmp_path / "out" / "test_predictions.csv").read_text().splitlines()
    head = rows[0].split(",")
    columns = [i for i, name in enumerate(head) if name.startswith("p_")]
    assert len(columns) == 9 and len(rows) == 33
    for row in rows[1:]:
        assert sum(float(row.split(",")[i]) for i in columns) == pytest.approx(1, abs=1e-4)

    (tmp_path / "digits.yaml").write_text("dataset: digits\ntta: flip\n")
    monkeypatch.chdir(tmp_path)  # in-process: the door's one line
    bad = CliRunner().invoke(main, ["train", "digits.yaml", "--out", "never"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [
        "Error: tta 'flip' can change the labels of digits (its images have an orientation); valid for digits: none"]
    assert not (tmp_path / "never").exists()


# --- the epoch-selection metric ------------------------------------------------------------------------------


@pytest.mark.parametrize("by, best", [("val_loss", min), ("val_auc", max)])
def test_keep_epoch_by_keeps_the_epoch_best_by_it(pathmnist_dir, by, best):
    r = engine.fit(TrainConfig(dataset="pathmnist", data_dir=str(pathmnist_dir), epochs=4, batch_size=32,
                               device="cpu", lr=0.01, architecture="simple_cnn_v1", keep_epoch_by=by))
    kept = best(r.history, key=lambda h: h[by])
    assert r.best_epoch == kept["epoch"]
    assert r.best == {k: kept[k] for k in ("val_acc", "val_auc", "val_loss")}


def test_keep_epoch_by_is_checked_in_a_config_and_a_study(tmp_path, monkeypatch):
    with pytest.raises(SearchError, match="keep_epoch_by 'test_acc' is not known; valid: val_acc, val_auc, val_loss"):
        TrainConfig(dataset="digits", keep_epoch_by="test_acc")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: s\ndataset: digits\nkeep_epoch_by: val_auc\n")
    spec = load_study("s.yaml")
    assert spec.base_config()["keep_epoch_by"] == "val_auc" and spec.definition()["keep_epoch_by"] == "val_auc"
    (tmp_path / "f.yaml").write_text("name: f\ndataset: digits\nfixed: {keep_epoch_by: val_auc}\n")
    with pytest.raises(SearchError, match="fixed.keep_epoch_by: keep_epoch_by is set by the study"):
        load_study("f.yaml")


# --- cross-validated selection -------------------------------------------------------------------------------


def test_folds_are_stratified_fixed_by_the_seed_and_refused_in_one_line():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(3), [50, 30, 7]))
    fold = np.array(folds.stratified(labels, 5, 0, dataset="d"))
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    for c in range(3):  # every fold holds each class's share, within one image
        per_fold = np.bincount(fold[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    assert folds.stratified(labels, 5, 0, dataset="d") == fold.tolist()
    assert folds.stratified(labels, 5, 1, dataset="d") != fold.tolist()
    with pytest.raises(SearchError) as err:
        folds.stratified(labels, 8, 0, dataset="d")
    assert err.value.message == ("cv_folds 8 is more than the 7 train+val images of d's smallest class (2); "
                                 "valid: 2 to 7")
    with pytest.raises(SearchError, match=r"^cv_folds: big has 10,001 train\+val images; cross-validated selection is "
                                          r"for small datasets \(at most 10,000\)"):
        folds.stratified(np.arange(10_001) % 2, 5, 0, dataset="big")


class _Spy(nn.Module):
    """Remembers which images it saw, in training and in evaluation: image k of train+val shows one bright pixel at
    position k (write_ids), which its fold's normalisation (per channel, a positive scale) leaves the brightest."""

    built: list["_Spy"] = []

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))
        self.seen: dict[bool, set[int]] = {True: set(), False: set()}
        _Spy.built.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen[self.training].update(x.flatten(1).argmax(dim=1).tolist())
        return self.head(x)


@pytest.fixture
def spy_registered():
    from models import register_model, registry

    register_model("fold_spy", reference="tests/test_tta_cv.py")(lambda **kw: _Spy(**kw))
    _Spy.built.clear()
    yield
    registry._REGISTRY.pop("fold_spy")  # our own registry has no public removal; tests alone need one
    registry.MODEL_REFERENCES.pop("fold_spy")


def write_ids(path: Path, counts: tuple[int, int, int]) -> list[int]:
    """A MedMNIST file whose train+val image k (train first) is dark but for pixel k; returns the labels."""
    rng = np.random.default_rng(0)
    arrays = {}
    start = 0
    for split, n in zip(("train", "val", "test"), counts):
        images = np.full((n, 28 * 28), 10, dtype=np.uint8)
        images[np.arange(n), (start + np.arange(n)) % (28 * 28)] = 250
        arrays[f"{split}_images"] = images.reshape(n, 28, 28)
        arrays[f"{split}_labels"] = np.repeat(np.arange(4), -(-n // 4))[:n].reshape(n, 1).astype(np.uint8)
        start += n
    rng.shuffle(arrays["train_labels"])
    np.savez_compressed(path, **arrays)
    return np.concatenate([arrays["train_labels"], arrays["val_labels"]]).reshape(-1).tolist()


def test_a_fold_never_trains_on_its_own_validation_images(tmp_path, spy_registered):
    """A leak would raise every cv trial's value and pass every other test: fold_data splits train+val into two
    disjoint parts that make the whole, and a real fit_folds trains each fold's model only on the other folds."""
    labels = write_ids(tmp_path / "octmnist.npz", (48, 24, 8))
    assignment = folds.stratified(np.array(labels), 3, 0, dataset="octmnist")
    data = load("octmnist", str(tmp_path), CPU, 28)
    ids = lambda split: split.images.flatten(1).argmax(dim=1).tolist()  # noqa: E731
    assert sorted(ids(data.train) + ids(data.val)) == list(range(72))
    for f in range(3):
        part = fold_data(data, assignment, f)
        own = {k for k, a in enumerate(assignment) if a == f}
        assert set(ids(part.val)) == own and len(part.val) == len(own)
        assert set(ids(part.train)).isdisjoint(own) and len(part.train) + len(part.val) == 72
        assert sorted(ids(part.train) + ids(part.val)) == list(range(72))
    cfg = TrainConfig(dataset="octmnist", data_dir=str(tmp_path), device="cpu", architecture="fold_spy", epochs=3,
                      batch_size=8, augmentation="none")
    result = engine.fit_folds(cfg, assignment)
    assert result.outcome == "completed" and result.folds["k"] == 3
    assert len(_Spy.built) == 3  # one model per fold, built in fold order
    for f, model in enumerate(_Spy.built):
        own = {k for k, a in enumerate(assignment) if a == f}
        assert model.seen[False] == own  # it validates on its fold, all of it
        assert model.seen[True] and model.seen[True].isdisjoint(own)  # and trains on the others only
        assert model.seen[True] <= set(range(72)) - own


@pytest.mark.parametrize("extra, words", [("cv_folds: 1\n", "cv_folds must be an integer of at least 2, got 1"),
                                          ("cv_folds: 3\nkeep_best_weights: true\n",
                                           "keep_best_weights keeps one model per trial, but a cv_folds trial")])
def test_bad_cv_folds_in_a_study_file_is_one_line(tmp_path, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: s\ndataset: digits\n" + extra)
    with pytest.raises(SearchError, match=words):
        load_study("s.yaml")


CV_STUDY = """\
name: {name}
dataset: pathmnist
data_dir: {data}
cv_folds: {k}
keep_epoch_by: val_auc
epochs: 2
trials: 2
sampler: {{name: random, seed: 3}}
pruner: {{name: none}}
space:
  lr: {{type: categorical, choices: [0.001, 0.003]}}
fixed:
  architecture: simple_cnn_v1
  batch_size: 32
"""


def _labels(data: Path) -> np.ndarray:
    with np.load(data / "pathmnist.npz") as f:
        return np.concatenate([f["train_labels"], f["val_labels"]]).reshape(-1)


@pytest.mark.e2e
def test_a_cv_study_stores_its_folds_and_judges_each_trial_by_the_fold_mean(pathmnist_dir, tmp_path):
    (tmp_path / "cv.yaml").write_text(CV_STUDY.format(name="cv", data=pathmnist_dir, k=3))
    done = run(["start", "--study", "cv.yaml", "--workers", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{tmp_path / 'search.db'}")
    stored = study.user_attrs["definition"]["cv_folds"]
    assert (stored["k"], stored["seed"]) == (3, 3)
    assert stored["assignment"] == folds.stratified(_labels(pathmnist_dir), 3, 3, dataset="pathmnist")
    trials = trials_of(tmp_path / "search.db", "cv")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        cv = t.user_attrs["cv_folds"]
        assert cv["k"] == 3 and cv["kept_by"] == "val_auc" and len(cv["val_acc"]) == 3
        means = {e + 1: statistics.fmean(values) for e, values in enumerate(cv["history"]["val_acc"])}
        assert t.intermediate_values == pytest.approx(means)  # what the pruner saw: the fold mean of each epoch
        assert t.value == pytest.approx(statistics.fmean(cv["val_acc"]))  # the kept epoch's fold mean

    exported = run(["export", "--study", "cv", "-o", "best.yaml"], tmp_path)  # the winner, for the official split
    assert exported.returncode == 0, exported.stderr
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["keep_epoch_by"] == "val_auc" and best["search"]["cv_folds"]["k"] == 3
    assert statistics.fmean(best["search"]["cv_folds"]["fold_values"]) == pytest.approx(best["search"]["value"])

    (tmp_path / "bad.yaml").write_text(CV_STUDY.format(name="bad", data=pathmnist_dir, k=40))
    with pytest.raises(SearchError, match=r"^cv_folds 40 is more than the 8 train\+val images of pathmnist's "
                                          r"smallest class \(\d\); valid: 2 to 8$"):
        supervisor.ensure_study(load_study(str(tmp_path / "bad.yaml")), f"sqlite:///{tmp_path / 'search.db'}")
    assert "bad" not in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'search.db'}")  # nothing written


def test_a_cv_trial_is_pruned_on_the_fold_mean(pathmnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cv.yaml").write_text(CV_STUDY.format(name="cvp", data=pathmnist_dir, k=3))
    spec = load_study("cv.yaml")
    url = f"sqlite:///{tmp_path / 'search.db'}"
    supervisor.ensure_study(spec, url)
    # a pruner that stops every trial at its first report: what it heard is the trial's intermediate value
    study = optuna.load_study(study_name="cvp", storage=url, pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    study.optimize(Objective(spec, "cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    first = trial.user_attrs["cv_folds"]["history"]["val_acc"][0]
    assert len(first) == 3 and trial.intermediate_values == {1: pytest.approx(statistics.fmean(first))}
