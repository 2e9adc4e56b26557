"""The one epoch loop: K members trained in lockstep, each with its own config, trainer, history and verdict.

A lone run is K = 1 (engine.fit). A trial pack is K members that differ in their hyperparameters, trained as one
fused model or side by side (search/train/pack.py). Cross-validation is K members that differ in their data, one
per fold, judged together: `on_epoch` hears the mean over the folds (engine.fit_folds, :class:`FoldMean`).

How the members of a group train one epoch is the group's (:class:`Group`: :class:`Alone` trains each member's own
Trainer in turn; pack.Pack trains them as one model); everything else lives here once: resume, per-epoch records,
divergence, keep-best, checkpoints, progress, and each member's verdict. A member whose loss is not finite, or whose
`on_epoch` returns True, leaves the group; the others go on. Interrupts (search/interrupt.py) are checked between
two steps, inside the groups' step loops.
"""
from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from search.train.checkpoint import restore as restore_checkpoint
from search.train.checkpoint import save as save_checkpoint
from search.train.config import TrainConfig

log = logging.getLogger("search")
OnEpoch = Callable[[int, dict[str, float]], bool | None]
# An engine.Trainer: its callers build it and hand it in, so the loop imports nothing that imports it.
Trainer = Any
VAL_KEYS = ("val_acc", "val_auc", "val_loss")


@dataclass
class FitResult:
    trainer: Trainer  # its model holds the weights of the best validation epoch
    outcome: str  # "completed", "stopped" (on_epoch asked), "diverged" (non-finite loss)
    best_epoch: int | None  # 1-based; None when no epoch finished with a finite loss
    best: dict[str, float]  # the validation metrics of the best epoch
    history: list[dict[str, float]] = field(default_factory=list)  # every epoch, those before a resume too
    seconds: float = 0.0
    reason: str | None = None
    resumed_at: int = 1  # the first epoch this run trained itself (> 1 when it resumed from a checkpoint)
    # fit_folds: each fold's validation metrics at the kept epoch and its study metric at every epoch; the trainer
    # is then the first fold's (its model: that fold's last epoch, for the size and latency of the architecture)
    folds: dict[str, Any] | None = None

    @property
    def trained(self) -> list[dict[str, float]]:
        """The history of the epochs this run trained itself (a resumed run's excludes those it continues)."""
        return self.history[self.resumed_at - 1:]

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def images_per_second(self) -> float:
        if not self.trained:
            return 0.0
        return sum(h["images_per_second"] for h in self.trained) / len(self.trained)


@dataclass
class Member:
    """One run of a group: its result (history, best epoch, outcome), verdict, checkpoint and kept weights."""

    result: FitResult
    on_epoch: OnEpoch | None = None
    checkpoint: Path | None = None
    best_state: dict[str, torch.Tensor] | None = None
    dropout: torch.Generator | None = None  # a pack member's: what torch's global generator is to its lone run
    keep: bool = True  # whether it keeps its best epoch's weights (a cv fold keeps none: the group judges)

    @property
    def trainer(self) -> Trainer:
        return self.result.trainer


def member(trainer: Trainer, *, on_epoch: OnEpoch | None = None, checkpoint: Path | None = None,
           resume: dict[str, Any] | None = None, keep: bool = True) -> Member:
    """A member training ``trainer``, put where the checkpoint state ``resume`` left it (fresh when None): its
    history restored and handed to `on_epoch` in order (it is "stopped" when `on_epoch` asks)."""
    m = Member(FitResult(trainer, "completed", None, {}), on_epoch, checkpoint, keep=keep)
    if resume is None:
        return m
    restore_checkpoint(trainer, resume)
    result = m.result
    result.history, result.best_epoch, result.best = resume["history"], resume["best_epoch"], resume["best"]
    result.resumed_at = resume["epoch"] + 1
    for metrics in result.history:
        if on_epoch is not None and on_epoch(int(metrics["epoch"]), metrics):
            result.outcome = "stopped"
            break
    m.best_state = resume["best_state"]
    return m


@dataclass
class Trained:
    """A member's training epoch: its mean loss, when it started, how long the training took; an Alone group
    evaluates right after and keeps the validation metrics and the time that took too."""

    loss: float
    started: float
    train_seconds: float
    val: dict[str, float] | None = None
    ended: float | None = None


class Group:
    """K members trained in lockstep; a subclass says how one epoch of the live ones trains and evaluates."""

    def __init__(self, members: list[Member], *, progress: bool = False, joint: "FoldMean | None" = None) -> None:
        self.members = members
        self.live = [m for m in members if m.result.outcome != "stopped"]  # a resume's replay may have stopped some
        self.epochs = members[0].trainer.cfg.epochs
        self.first_epoch = members[0].result.resumed_at
        self.progress, self.joint = progress, joint
        self.bar = None
        if progress and sys.stderr.isatty():  # elsewhere (a pipe, a log file) one plain line per epoch, no redraws
            from tqdm import tqdm

            self.bar = tqdm(total=members[0].trainer.steps_per_epoch, unit="batch", leave=True, dynamic_ncols=True)

    def train(self) -> list[Trained]:
        """One training epoch of every live member, in order (a group may stop at a non-finite loss)."""
        raise NotImplementedError

    def evaluate(self, trained: dict[int, Trained]) -> list[dict[str, float]]:
        """The validation metrics of each live member (``trained``: this epoch's, by id of member)."""
        raise NotImplementedError

    def leave(self, gone: list[Member]) -> None:
        if gone:
            self.live = [m for m in self.live if m not in gone]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def describe(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.epochs}"

    def tell(self, m: Member, epoch: int, metrics: dict[str, float], training: int) -> None:
        """Show an epoch's metrics: on the bar, or one plain line when progress is asked for without a terminal."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {metrics['train_loss']:.4f} val_acc {metrics['val_acc']:.4f} "
                                     f"val_auc {metrics['val_auc']:.4f}")
            self.bar.refresh()
        elif self.progress:
            print(f"epoch {epoch}/{self.epochs}: {epoch_line(metrics)}", file=sys.stderr, flush=True)

    def epoch(self, epoch: int) -> None:
        """Train one epoch of the live members, record it, keep, save and ask each member's verdict."""
        if self.bar is not None:
            self.bar.reset()
            self.bar.set_description(self.describe(epoch))
        trained = dict(zip(map(id, self.live), self.train()))
        diverged = [m for m in self.live if id(m) not in trained or not math.isfinite(trained[id(m)].loss)]
        for m in diverged:
            if id(m) in trained:
                self._diverged(m, epoch, trained[id(m)].loss)
        if self.joint is not None and diverged:
            self.leave(self.live)
            return
        self.leave(diverged)
        training = len(trained)
        gone = []
        for m, val in zip(self.live, self.evaluate(trained)):
            t = trained[id(m)]
            metrics = record_epoch(m, epoch, t, val)
            self.tell(m, epoch, metrics, training)
            if m.checkpoint is not None:
                kw = {} if m.dropout is None else {"dropout_rng": m.dropout.get_state()}
                m.checkpoint = save_or_warn(m.checkpoint, m.trainer, m.result, m.best_state, epoch, **kw)
            if m.on_epoch is not None and m.on_epoch(epoch, metrics):
                m.result.outcome = "stopped"
                gone.append(m)
        if self.joint is not None and self.joint.epoch(epoch, self.members):
            gone = list(self.live)
        self.leave(gone)

    def _diverged(self, m: Member, epoch: int, loss: float) -> None:
        if self.joint is not None:
            self.joint.diverged(epoch, self.members.index(m), loss)
            return
        m.result.outcome, m.result.reason = "diverged", divergence(epoch, loss)


class Alone(Group):
    """Each member's own Trainer, one after the other: a lone run (K = 1), or the folds of a cross-validation."""

    def train(self) -> list[Trained]:
        out = []
        for m in self.live:
            t0 = time.perf_counter()
            loss = m.trainer.epoch(self.bar)
            done = Trained(loss, t0, time.perf_counter() - t0)
            out.append(done)
            if not math.isfinite(loss):
                if self.joint is not None:  # the whole cross-validation ends: the folds after it need not train
                    break
                continue
            done.val = m.trainer.evaluate(m.trainer.data.val)
            done.ended = time.perf_counter()
        return out

    def evaluate(self, trained: dict[int, Trained]) -> list[dict[str, float]]:
        return [trained[id(m)].val for m in self.live]  # type: ignore[misc]


def run(group: Group) -> list[FitResult]:
    """Train ``group`` from its first epoch (after a resume's) to its config's last, or until no member is left;
    each member's model then holds its kept epoch's weights. The one loop over epochs in search/."""
    start = time.perf_counter()
    try:
        for epoch in range(group.first_epoch, group.epochs + 1):
            if not group.live:
                break
            group.epoch(epoch)
    finally:
        group.close()
    for m in group.members:
        if m.best_state is not None:
            m.trainer.model.load_state_dict(m.best_state)
        m.result.seconds = time.perf_counter() - start
    if group.joint is not None:
        group.joint.finish(group.members, time.perf_counter() - start)
    return [m.result for m in group.members]


def divergence(epoch: int, train_loss: float) -> str | None:
    """Why the run ends at ``epoch`` when its mean training loss is not finite; None when it is."""
    if math.isfinite(train_loss):
        return None
    return f"training diverged at epoch {epoch}: the loss became {train_loss}"


def record_epoch(m: Member, epoch: int, trained: Trained, val: dict[str, float]) -> dict[str, float]:
    """Append the epoch's metrics (what `on_epoch` hears) to the member's history and keep its model's weights if the
    epoch is the best so far; returns the metrics."""
    result, trainer = m.result, m.trainer
    metrics = epoch_metrics(trainer, epoch, trained.loss, val, started=trained.started,
                            train_seconds=trained.train_seconds, ended=trained.ended)
    result.history.append(metrics)
    if m.keep and keeps(trainer.cfg, metrics, result):
        result.best_epoch = epoch
        result.best = {k: metrics[k] for k in VAL_KEYS}
        m.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return metrics


def epoch_line(metrics: dict[str, float]) -> str:
    return (f"loss {metrics['train_loss']:.4f} val_acc {metrics['val_acc']:.4f} val_auc {metrics['val_auc']:.4f} "
            f"({metrics['images_per_second']:,.0f} images/s)")


def save_or_warn(checkpoint: Path, trainer: Trainer, result: FitResult,
                 best_state: dict[str, torch.Tensor] | None, epoch: int, **kw: Any) -> Path | None:
    """Save the run's checkpoint; a full disk or a bad folder is a warning and the run goes on without a safety net
    (returns None, the checkpoint path from then on)."""
    try:
        save_checkpoint(checkpoint, trainer, result, best_state, epoch, **kw)
        return checkpoint
    except OSError as err:
        log.warning("the checkpoint could not be written to %s (%s); this run goes on without checkpoints",
                    checkpoint, err)
        return None


def epoch_metrics(trainer: Trainer, epoch: int, train_loss: float, val: dict[str, float], *, started: float,
                  train_seconds: float, ended: float | None = None) -> dict[str, float]:
    """An epoch's history entry: what `on_epoch` hears."""
    return {"epoch": epoch, "train_loss": train_loss, "val_acc": val["acc"], "val_auc": val["auc"],
            "val_loss": val["loss"], "lr": trainer.optimizer.param_groups[0]["lr"],
            "seconds": (ended if ended is not None else time.perf_counter()) - started,
            "images_per_second": trainer.steps_per_epoch * trainer.cfg.batch_size / train_seconds}


def keeps(cfg: TrainConfig, metrics: dict[str, float], result: FitResult) -> bool:
    """Whether this epoch becomes the kept one: the first, or one better by ``keep_epoch_by`` (default ``metric``;
    val_loss: lower). A NaN value (an AUC a split cannot define) never beats a number."""
    if result.best_epoch is None:
        return True
    by = cfg.keep_epoch_by or cfg.metric
    if by == "val_loss":
        return metrics[by] < result.best[by]
    return metrics[by] > result.best[by]


class FoldMean:
    """The verdict of cross-validation's K folds, judged as one: each epoch `on_epoch` hears the mean over the folds
    of each metric, and the kept epoch is the one with the best mean (every fold at the same epoch)."""

    def __init__(self, cfg: TrainConfig, trainer: Trainer, on_epoch: OnEpoch | None) -> None:
        self.cfg, self.on_epoch = cfg, on_epoch
        self.result = FitResult(trainer, "completed", None, {})

    def diverged(self, epoch: int, fold: int, loss: float) -> None:
        self.result.outcome = "diverged"
        self.result.reason = f"training diverged at epoch {epoch} on fold {fold + 1}: the loss became {loss}"

    def epoch(self, epoch: int, members: list[Member]) -> bool:
        """Record the folds' mean for ``epoch``; whether `on_epoch` stops the cross-validation."""
        folds = [m.result.history[-1] for m in members]
        batch = self.cfg.batch_size
        trained = sum(m.trainer.steps_per_epoch * batch for m in members)
        metrics = {"epoch": epoch, **{key: statistics.fmean(e[key] for e in folds) for key in
                                      ("train_loss", *VAL_KEYS)},
                   "lr": folds[0]["lr"], "seconds": sum(e["seconds"] for e in folds),
                   "images_per_second": trained / sum(m.trainer.steps_per_epoch * batch / e["images_per_second"]
                                                      for m, e in zip(members, folds))}
        result = self.result
        result.history.append(metrics)
        if keeps(self.cfg, metrics, result):
            result.best_epoch = epoch
            result.best = {key: metrics[key] for key in VAL_KEYS}
        if self.on_epoch is not None and self.on_epoch(epoch, metrics):
            result.outcome = "stopped"
            return True
        return False

    def finish(self, members: list[Member], seconds: float) -> None:
        """``result.folds``: each fold's values at the kept epoch and the study metric's curve of every fold."""
        result, cfg = self.result, self.cfg
        result.seconds = seconds
        if result.best_epoch is None:
            return
        per_epoch = list(zip(*(m.result.history for m in members)))[:len(result.history)]
        kept = per_epoch[result.best_epoch - 1]
        result.folds = {"k": len(members), "kept_by": cfg.keep_epoch_by or cfg.metric,
                        **{key: [e[key] for e in kept] for key in VAL_KEYS},
                        "history": {cfg.metric: [[e[cfg.metric] for e in folds] for folds in per_epoch]}}
