import math

import pytest
import torch

from search.errors import SearchError
from search.train import engine
from search.train.config import TrainConfig
from tests.support.data import write_medmnist_npz


def digits(**kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=2, batch_size=64, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_digits_learns_and_keeps_the_best_epoch():
    r = engine.fit(digits(epochs=3))
    assert r.outcome == "completed" and len(r.history) == 3
    assert r.best["val_acc"] > 0.85  # ten classes: chance is 0.1
    best = max(r.history, key=lambda h: h["val_acc"])
    assert r.best_epoch == best["epoch"] and r.best["val_acc"] == best["val_acc"]
    # the returned model holds the best epoch's weights: evaluating it gives the best epoch's numbers
    again = r.trainer.evaluate(r.trainer.data.val)
    assert again["acc"] == pytest.approx(r.best["val_acc"]) and again["auc"] == pytest.approx(r.best["val_auc"])
    assert r.params == sum(p.numel() for p in r.model.parameters()) > 0
    assert all(h["images_per_second"] > 0 and math.isfinite(h["train_loss"]) for h in r.history)


def test_seeded_runs_are_reproducible_on_cpu():
    a = engine.fit(digits(epochs=1, augmentation="affine+crop", seed=3))
    b = engine.fit(digits(epochs=1, augmentation="affine+crop", seed=3))
    c = engine.fit(digits(epochs=1, augmentation="affine+crop", seed=4))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_on_epoch_can_stop_the_run():
    seen = []

    def hook(epoch, metrics):
        seen.append((epoch, metrics["val_acc"]))
        return epoch == 2

    r = engine.fit(digits(epochs=5), on_epoch=hook)
    assert r.outcome == "stopped" and [e for e, _ in seen] == [1, 2] and len(r.history) == 2


def test_a_non_finite_loss_ends_the_run_as_diverged():
    r = engine.fit(digits(epochs=3, optimizer="sgd", lr=1e12, momentum=0.0))
    assert r.outcome == "diverged" and "diverged at epoch 1" in r.reason
    assert r.best_epoch is None and r.history == []


@pytest.mark.parametrize("opt, sched, warm", [("sgd", "cosine", 1.0), ("adamw", "onecycle", 0.0),
                                              ("adam", "constant", 0.5)])
def test_optimizers_and_schedules(opt, sched, warm):
    cfg = digits(optimizer=opt, schedule=sched, warmup_epochs=warm, lr=0.01, nesterov=True)
    r = engine.fit(cfg)
    assert r.outcome == "completed" and r.best["val_acc"] > 0.3
    lrs = [h["lr"] for h in r.history]
    if sched == "cosine":
        assert lrs[-1] == pytest.approx(0.0, abs=1e-9)  # cosine ends at zero
    if sched == "constant":
        assert lrs == [pytest.approx(0.01)] * 2  # warmup over by the end of epoch 1
    if sched == "onecycle":
        assert lrs[-1] < 1e-4  # one-cycle anneals far below max_lr


def test_scheduler_warmup_rises_linearly():
    t = engine.Trainer(digits(schedule="cosine", warmup_epochs=1, lr=0.1),
                       engine.load("digits", None, torch.device("cpu")), torch.device("cpu"))
    lrs = []
    for _ in range(t.steps_per_epoch):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        t.optimizer.step()
        t.scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / t.steps_per_epoch) and lrs == sorted(lrs)


def test_multi_label_task_trains_with_bce(tmp_path):
    write_medmnist_npz(tmp_path / "chestmnist.npz", channels=1, classes=14, multi_label=True, counts=(256, 64, 64))
    r = engine.fit(TrainConfig(dataset="chestmnist", data_dir=str(tmp_path), epochs=2, batch_size=64,
                               device="cpu", label_smoothing=0.1, metric="val_auc"))
    assert r.outcome == "completed" and math.isfinite(r.best["val_loss"])
    # each label brightens its own band of rows: a model that learns is well above chance (AUC 0.5, and 0.5 of
    # the labels right when half of them are on)
    assert r.best["val_auc"] > 0.75 and r.best["val_acc"] > 0.6, r.best


def test_rgb_medmnist_with_color_augmentation(pathmnist_dir):
    r = engine.fit(TrainConfig(dataset="pathmnist", data_dir=str(pathmnist_dir), epochs=1, batch_size=32,
                               device="cpu", augmentation="dihedral+color", architecture="simple_cnn_v1"))
    assert r.outcome == "completed" and r.trainer.data.info.channels == 3


def test_batch_larger_than_the_training_set_is_a_user_error():
    with pytest.raises(SearchError, match="batch_size 5000 is larger than the 1259 training images"):
        engine.fit(digits(batch_size=5000))


def test_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SearchError, match="no CUDA GPU is visible"):
        engine.resolve_device("cuda")
