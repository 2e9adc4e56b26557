"""`graphs: auto | on | off` on the CPU: everything but the capture itself (search/train/graphs.py).

The key and its checks; the learning-rate schedule as a tensor computation against torch's schedulers, step by step;
the padded evaluation against today's; a capture that fails (injected into the capture function) falling back to
eager with one line in the log; the graph's own step, run eagerly, against the eager step; off, auto and on giving
today's numbers on the CPU. The capture on CUDA: tests/test_gpu.py (marker `gpu`).
"""
from __future__ import annotations

import logging

import pytest
import torch

from search.errors import SearchError
from search.hpo.space import parse_space
from search.train import config, engine, graphs
from search.train.config import TrainConfig

CPU = torch.device("cpu")


def digits(**kw) -> TrainConfig:
    return TrainConfig(**{"dataset": "digits", "epochs": 2, "batch_size": 64, "device": "cpu", **kw})


def same_numbers(a: engine.FitResult, b: engine.FitResult) -> bool:
    """The same history (but its timings) and the same weights, bit for bit."""
    timing = ("seconds", "images_per_second")
    strip = [[{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in (a, b)]
    weights = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    return strip[0] == strip[1] and len(strip[0]) == a.trainer.cfg.epochs and weights


@pytest.fixture(scope="module")
def eager() -> engine.FitResult:
    """Today's run: graphs off."""
    return engine.fit(digits(graphs="off"))


# --- the key --------------------------------------------------------------------------------------------------


def test_the_graphs_key_is_off_by_default_checked_in_one_line_and_searchable(tmp_path):
    assert TrainConfig(dataset="digits").graphs == "off"
    with pytest.raises(SearchError) as err:
        TrainConfig(dataset="digits", graphs="always")
    assert str(err.value) == "graphs 'always' is not known; valid: auto, on, off"
    # YAML 1.1 reads a bare on / off as a boolean: the file means the word
    (tmp_path / "c.yaml").write_text("dataset: digits\ngraphs: on\n")
    assert config.load(tmp_path / "c.yaml").graphs == "on"
    assert TrainConfig(dataset="digits", graphs=False).graphs == "off"
    with pytest.raises(SearchError, match="graphs must be a non-empty string, got 3"):
        TrainConfig(dataset="digits", graphs=3)
    space = parse_space({"graphs": {"type": "categorical", "choices": ["on", "off"]}}, source="s.yaml")
    assert "graphs" in space
    assert TrainConfig(dataset="digits", graphs="on").to_dict()["graphs"] == "on"  # stored with the trial


def test_auto_is_off_everywhere_and_on_says_why_it_cannot_capture():
    for cfg in (digits(), digits(graphs="auto")):
        assert graphs.wanted(cfg, CPU, None, False) == (False, None)
    capture, note = graphs.wanted(digits(graphs="on"), CPU, None, False)
    assert capture is False and note == "graphs: on: graphs need a CUDA GPU; on cpu this run trains eagerly"
    cuda = torch.device("cuda")
    assert graphs.wanted(digits(graphs="auto"), cuda, torch.bfloat16, False) == (False, None)  # until measured
    assert graphs.wanted(digits(graphs="on"), cuda, torch.bfloat16, False) == (True, None)
    for cfg, amp, compiled, why in [(digits(graphs="on"), torch.float16, False, "fp16"),
                                    (digits(graphs="on"), None, True, "compile: true"),
                                    (digits(graphs="on", schedule="onecycle", optimizer="sgd"), None, False,
                                     "onecycle with sgd")]:
        capture, note = graphs.wanted(cfg, cuda, amp, compiled)
        assert capture is False and why in note and "\n" not in note


# --- the schedule as a tensor computation ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule, warmup, optimizer", [
    ("constant", 0.0, "adam"), ("constant", 1.0, "adam"), ("cosine", 0.0, "adamw"), ("cosine", 1.5, "sgd"),
    ("onecycle", 0.0, "adam"), ("onecycle", 1.0, "adamw")])
def test_the_tensor_schedule_gives_torchs_learning_rates_step_by_step(schedule, warmup, optimizer):
    cfg = digits(epochs=3, lr=0.03, schedule=schedule, warmup_epochs=warmup, optimizer=optimizer)
    steps_per_epoch = 17
    opt = engine._optimizer(cfg, torch.nn.Linear(2, 2), fused=False)
    sched = engine._scheduler(cfg, opt, steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = graphs.schedule_lr(cfg, steps_per_epoch, torch.arange(total, dtype=torch.float64))
    assert got.dtype == torch.float64 and len(expected) == total
    # float64 throughout, the same operations in the same order: equal up to the last bit of a cosine
    assert got.tolist() == pytest.approx(expected, rel=1e-13, abs=1e-18)
    one = graphs.schedule_lr(cfg, steps_per_epoch, torch.tensor(5.0, dtype=torch.float64))
    assert one.shape == () and float(one) == pytest.approx(expected[5], rel=1e-13)


# --- the padded evaluation --------------------------------------------------------------------------------------


def test_padded_batches_pad_only_the_last_and_say_how_many_rows_are_real():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    out = list(graphs.padded_batches(images, 4, pad=True))
    assert [(b.shape[0], n) for b, n in out] == [(4, 4), (4, 4), (4, 2)]
    assert out[-1][0].view(-1).tolist() == [8, 9, 0, 0]
    assert [n for _, n in graphs.padded_batches(images, 4, pad=False)] == [4, 4, 2]


def test_the_padded_and_masked_evaluation_gives_todays_metrics_exactly(eager, monkeypatch):
    trainer, split = eager.trainer, eager.trainer.data.val
    step = engine.eval_batch(trainer.cfg)
    assert len(split) % step != 0  # the last batch is padded
    today, today_scores = trainer.evaluate_with_scores(split)
    shapes = []
    static = graphs.EvalGraph(trainer, step)  # not captured: the static-shape forward the graph records, eagerly

    def forward(images: torch.Tensor) -> torch.Tensor:
        shapes.append(images.shape[0])
        return static(images)

    monkeypatch.setattr(trainer, "static_forward", lambda batch: forward)
    padded, padded_scores = trainer.evaluate_with_scores(split)
    assert shapes and set(shapes) == {step}
    assert padded == today and torch.equal(padded_scores, today_scores) and len(padded_scores) == len(split)


# --- the fallback and the graph's step on the CPU ---------------------------------------------------------------


def test_a_capture_that_fails_falls_back_to_eager_with_one_line_and_todays_numbers(eager, monkeypatch, caplog):
    monkeypatch.setattr(graphs, "wanted", lambda *a: (True, None))

    def cannot(trainer, stream):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphs, "capture_train", cannot)
    with caplog.at_level(logging.WARNING, logger="search"):
        r = engine.fit(digits(graphs="on"))
    lines = [rec.getMessage() for rec in caplog.records if "graphs" in rec.getMessage()]
    assert lines == ["graphs: the training step could not be captured as a CUDA graph (RuntimeError: operation "
                     "not permitted when stream is capturing); this run goes on eagerly"]
    assert r.outcome == "completed" and r.trainer.graphed is False and r.trainer.graphs is False
    assert same_numbers(r, eager)


def test_the_graphs_step_run_eagerly_trains_as_the_eager_step(eager, monkeypatch, tmp_path):
    """The captured step's code (static buffers, index rows, the tensor schedule, the loss summed on the device, the
    host scheduler's bookkeeping) without the capture: the eager run's weights, bit for bit."""
    monkeypatch.setattr(graphs, "wanted", lambda *a: (True, None))
    monkeypatch.setattr(graphs, "capture_train", lambda trainer, stream: graphs.TrainGraph(trainer))
    monkeypatch.setattr(graphs, "capture_eval", lambda trainer, batch, stream: graphs.EvalGraph(trainer, batch))
    r = engine.fit(digits(graphs="on"), checkpoint=tmp_path / "ck.pt")
    assert r.trainer.graphed and len(r.history) == len(eager.history) == 2
    for g, e in zip(r.history, eager.history):
        assert g["lr"] == e["lr"]  # the host scheduler kept in step: checkpoints hold an eager run's state
        # the loss is summed in another order (the warm-up's steps, then the graph's own sum): float32 rounding
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-6)
        assert g["val_acc"] == e["val_acc"] and g["val_auc"] == e["val_auc"]
    assert all(torch.equal(x, y) for x, y in zip(r.model.state_dict().values(), eager.model.state_dict().values()))
    assert r.trainer.scheduler.last_epoch == eager.trainer.scheduler.last_epoch == 2 * r.trainer.steps_per_epoch
    assert isinstance(r.trainer.optimizer.param_groups[0]["lr"], float)
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["epoch"] == 2 and isinstance(state["optimizer"]["param_groups"][0]["lr"], float)


def test_on_trains_todays_numbers_on_the_cpu_with_one_note(eager, caplog):
    """off is today's run (the fixture); auto is off on every device (test above); on, on the CPU, is eager too."""
    with caplog.at_level(logging.WARNING, logger="search"):
        on = engine.fit(digits(graphs="on"))
    notes = [rec.getMessage() for rec in caplog.records if "graphs" in rec.getMessage()]
    assert notes == ["graphs: on: graphs need a CUDA GPU; on cpu this run trains eagerly"]
    assert same_numbers(on, eager) and not on.trainer.graphed
