"""The one training loop: fit a TrainConfig, keep the best validation epoch, evaluate, save.

Read top to bottom: resolve the device, load the data once per process onto it, build the model and optimizer,
then for each epoch shuffle indices on the device, slice uint8 batches, augment and normalise them batched on
the device, step, and evaluate on val. `on_epoch(epoch, metrics)` may stop the run (the search prunes with it).

Speed notes (figures from bench/epoch_speed.py):
- The whole split lives on the device as uint8; a batch is one index_select, no DataLoader, no PIL, no host copy.
- The training loss is summed on the device and read once per epoch, so the CPU never waits for the GPU mid-epoch.
- On CUDA: bf16 autocast (`precision`), channels_last and fused optimizers (Tensor Cores; fewer kernel launches);
  `compile: true` adds torch.compile. bench/gpu_proof.py measures all of it on a GPU in one command.
- `graphs: on` replays the whole training step, and the evaluation forward, as CUDA graphs: one launch instead of
  ~140 (search/train/graphs.py, docs/graphs.md; `auto` leaves it off until measured).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from models import ModelError, build_model
from search import interrupt
from search.devices import device_label, resolve_device  # noqa: F401 (device_label: objective's engine.device_label)
from search.errors import SearchError
from search.train import config, graphs, predictions
from search.train.augment import make_augment, tta_views
from search.train.checkpoint import restore as restore_checkpoint
from search.train.checkpoint import save as save_checkpoint
from search.train.config import TrainConfig, atomic_write
from search.train.data import (
    Data,
    DatasetInfo,
    OwnOptions,
    Split,
    augment_limits,
    fold_data,
    load,
    own_info_record,
)
from search.train.metrics import class_results, evaluate_scores, predict
from search.train.mixing import make_mixer, mixed_loss

EVAL_BATCH = 1024  # at 28 px; scaled down with the image area for larger sizes
log = logging.getLogger("search")
OnEpoch = Callable[[int, dict[str, float]], bool | None]


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32.

    auto: bf16 on a CUDA card that supports it, else fp32 (always fp32 on the CPU). bf16 is accepted on the CPU
    too (CPU autocast; slower than fp32 on CPUs without bf16 instructions). fp16 needs CUDA: it trains with a
    gradient scaler, which this project runs only there.
    """
    cuda = device.type == "cuda"
    if name == "fp32" or (name == "auto" and not (cuda and torch.cuda.is_bf16_supported())):
        return None
    if name in ("auto", "bf16"):
        if cuda and not torch.cuda.is_bf16_supported():
            raise SearchError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                              f"valid here: auto, fp16, fp32")
        return torch.bfloat16
    if name == "fp16":
        if not cuda:
            raise SearchError(f"precision fp16 needs a CUDA GPU (device is {device}); "
                              f"valid on the CPU: auto, bf16, fp32")
        return torch.float16
    raise SearchError(f"precision '{name}' is not known; valid: auto, bf16, fp16, fp32")


def _grad_scaler(enabled: bool) -> Any:
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


@dataclass
class FitResult:
    trainer: "Trainer"  # its model holds the weights of the best validation epoch
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


class Trainer:
    """One model, one optimizer, one dataset on one device; `step` trains one batch (the benchmark times it)."""

    def __init__(self, cfg: TrainConfig, data: Data, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        info = data.info
        if cfg.batch_size > len(data.train):
            raise SearchError(f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training images "
                              f"of {cfg.dataset}; valid: 2..{len(data.train)}")
        torch.manual_seed(cfg.seed)  # weight init and dropout
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)  # shuffling and augmentation
        cuda = device.type == "cuda"
        if cuda:
            # cuDNN times its convolution algorithms once per input shape and keeps the fastest; a trial's shapes
            # are fixed (drop-last batches), so this pays from the first epoch. Runs agree within a tolerance,
            # not bit for bit (tests/test_gpu.py states it).
            torch.backends.cudnn.benchmark = True
        # channels_last: cuDNN picks NHWC Tensor Core kernels, and oneDNN on the CPU runs simple_cnn_v2's
        # training step 1.7x faster (910 vs 590 images/s on one core here). bf16 halves memory traffic on CUDA.
        self.memory_format = torch.channels_last
        self.amp_dtype = resolve_precision(cfg.precision, device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.autocast = torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                       enabled=self.amp_dtype is not None)
        # fp16's narrow range needs loss scaling; bf16 has float32's range and needs none.
        self.scaler = _grad_scaler(self.amp_dtype == torch.float16)
        self.model = build_net(cfg, info)
        self.model.to(device=device, memory_format=self.memory_format)
        self.compiled = bool(cfg.compile and cuda)
        if self.compiled:
            # In place (nn.Module.compile), so state_dict keys stay those of the plain model. (Inductor's note that
            # TF32 is off is silenced in search/quiet.py.)
            self.model.compile()
        self.augment = make_augment(cfg.augmentation, channels=info.channels, strength=cfg.aug_strength,
                                    limits=augment_limits(info, cfg.symmetry))
        self.mixer = make_mixer(cfg.mix, cfg.mix_alpha, cfg.mix_prob)
        if info.multi_label:
            smooth = cfg.label_smoothing
            bce = nn.BCEWithLogitsLoss()
            self.loss_fn = lambda logits, y: bce(logits, y * (1 - smooth) + 0.5 * smooth)
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_per_epoch = len(data.train) // cfg.batch_size  # drop the last partial batch (BatchNorm)
        self.optimizer = _optimizer(cfg, self.model, fused=cuda)
        self.scheduler = _scheduler(cfg, self.optimizer, self.steps_per_epoch)
        # graphs: whether the step is to be captured (search/train/graphs.py); False again if a capture fails
        self.graphs, note = graphs.wanted(cfg, device, self.amp_dtype, self.compiled)
        if note:
            log.warning("%s", note)
        self.capture_seconds = 0.0  # warm-up and capture of the training step (bench/gpu_proof.py reports it)
        self._train_graph: graphs.TrainGraph | None = None
        self._eval_graph: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._eval_tried = False

    @property
    def graphed(self) -> bool:
        """Whether the training step runs as a captured CUDA graph."""
        return self._train_graph is not None

    def inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.float().div_(255.0)
        if train and self.augment is not None:
            x = self.augment(x, self.generator)
        return normalise(x, self.data.mean, self.data.std)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        train = self.data.train
        x = self.inputs(train.images[idx], train=True)
        y = train.labels[idx]
        if self.mixer is not None:  # after the augmentation, as mixup and cutmix are defined
            x, perm, lam = self.mixer(x, self.generator)
        with self.autocast:
            out = self.model(x)
            loss = self.loss_fn(out, y) if self.mixer is None else mixed_loss(self.loss_fn, out, y, perm, lam)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            # Fused optimizers take the scale and the inf check inside their kernel: no host sync per step.
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def epoch(self, progress: Any = None) -> float:
        """Train one epoch; returns the mean training loss (read from the device once, at the end)."""
        self.model.train()
        n, bs = len(self.data.train), self.cfg.batch_size
        order = torch.randperm(n, device=self.device, generator=self.generator)
        total = torch.zeros((), device=self.device)
        report_every = max(1, self.steps_per_epoch // 10)
        graph, first = self._train_graph, 0
        if self.graphs and graph is None:  # the first epoch: a few eager steps, then the capture
            first = min(graphs.WARMUP, self.steps_per_epoch)
            graph = self._capture_train(order, total, first)
            if progress is not None:
                progress.update(first)
        if graph is not None:
            graph.start(order, first)
        for i in range(first, self.steps_per_epoch):
            interrupt.check()  # Ctrl-C / SIGTERM stop here, between two steps (a global read: ~50 ns a batch)
            if graph is None:
                total += self.step(order[i * bs:(i + 1) * bs])
            else:
                graph.replay()
            if progress is not None:
                progress.update(1)
                if (i + 1) % report_every == 0:
                    running = total if graph is None else total + graph.loss_sum
                    progress.set_postfix_str(f"loss {running.item() / (i + 1):.4f}", refresh=False)
        if graph is not None:
            total += graph.loss_sum
        return total.item() / self.steps_per_epoch

    def _capture_train(self, order: torch.Tensor, total: torch.Tensor, first: int) -> graphs.TrainGraph | None:
        """Train the epoch's ``first`` batches eagerly (the warm-up), then capture the step; None if that fails
        (one line in the log: the run goes on eagerly)."""
        bs, t0 = self.cfg.batch_size, time.perf_counter()
        with graphs.side_stream(self.device) as stream:
            for i in range(first):
                interrupt.check()
                total += self.step(order[i * bs:(i + 1) * bs])
            graph = graphs.attempt("training step", self.device, lambda: graphs.capture_train(self, stream))
        self._train_graph, self.graphs = graph, graph is not None
        self.capture_seconds = time.perf_counter() - t0
        return graph

    def static_forward(self, batch: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The evaluation forward at a static batch shape, logits of every row (the captured graph), or None for
        the eager pass. Captured at the first evaluation of a run whose training step is captured."""
        if self._train_graph is not None and not self._eval_tried:
            self._eval_tried = True  # once: a failed capture leaves the evaluation eager for the run
            with graphs.side_stream(self.device) as stream:
                self._eval_graph = graphs.attempt("evaluation pass", self.device,
                                                  lambda: graphs.capture_eval(self, batch, stream))
        return self._eval_graph

    def evaluate(self, split: Split) -> dict[str, float]:
        """ACC, AUC and loss of ``split`` (MedMNIST's definitions for the dataset's task)."""
        return self.evaluate_with_scores(split)[0]

    @torch.inference_mode()
    def evaluate_with_scores(self, split: Split) -> tuple[dict[str, float], torch.Tensor]:
        """`evaluate`, plus the (N, K) class probabilities on the device: a confusion matrix needs no second pass."""
        self.model.eval()  # before a first capture of the evaluation pass
        static = self.static_forward(eval_batch(self.cfg))
        out, scores = score(self.model, split.images, self.cfg, self.data.info, self.data.mean, self.data.std,
                            self.autocast, static=static)
        return self.judge(out, scores, split), scores

    def judge(self, out: torch.Tensor, scores: torch.Tensor, split: Split) -> dict[str, float]:
        """ACC, AUC and loss of the logits ``out`` and probabilities ``scores`` of all of ``split`` (a trial pack
        judges each member's part of its fused logits with the member's trainer)."""
        task = self.data.info.task
        if self.data.info.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(out, split.labels)
        else:
            loss = nn.functional.cross_entropy(out, split.labels)
        metrics = evaluate_scores(split.labels, scores, task)
        return {"acc": float(metrics["acc"]), "auc": float(metrics["auc"]), "loss": float(loss)}

    @torch.inference_mode()
    def latency_ms(self, runs: int = 30, warmup: int = 5) -> float:
        """Inference time per image at batch size 1 on the trial's device, in ms: the median of ``runs`` timed
        forward passes (with input normalisation) after ``warmup`` untimed ones (cuDNN's algorithm search, caches).
        A CUDA pass is timed to its end (synchronised), not to its launch."""
        self.model.eval()
        image = self.data.val.images[:1]
        cuda = self.device.type == "cuda"
        times = []
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            with self.autocast:
                self.model(self.inputs(image, train=False))
            if cuda:
                torch.cuda.synchronize(self.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)


def build_net(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The network a run of ``cfg`` trains on ``info``'s images (on the CPU, untrained): the one place where a
    config becomes a model, for training and for `search predict` alike."""
    try:
        return build_model(cfg.architecture, in_channels=info.channels, num_classes=info.num_classes,
                           dropout=cfg.dropout, pretrained=cfg.pretrained, size=cfg.size)
    except ModelError as err:  # models knows nothing of search; here its user errors become ours
        raise SearchError(str(err)) from None


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Images scaled to [0, 1] -> the network's input: standardised with the training split's per-channel mean and
    std, in channels_last (the memory format every model here runs in)."""
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def eval_batch(cfg: TrainConfig) -> int:
    """The evaluation batch: EVAL_BATCH images at 28 px, fewer for larger images (never below the training batch)."""
    return max(cfg.batch_size, EVAL_BATCH * 28 * 28 // (cfg.size * cfg.size))


@torch.inference_mode()
def score(model: nn.Module, images: torch.Tensor, cfg: TrainConfig, info: DatasetInfo, mean: torch.Tensor,
          std: torch.Tensor, autocast: Any = None, *, static: Callable[[torch.Tensor], torch.Tensor] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, class probabilities), both (N, K) float32, of uint8 (N, C, S, S) ``images`` on the model's device.

    The one prediction path: validation and test evaluation, and `search predict` (search/train/predict.py) on a
    user's images. Probabilities are the softmax (sigmoid for multi-label tasks). Batched by image area.
    ``static``: the same forward at a fixed batch shape (the captured evaluation graph, search/train/graphs.py);
    the last batch is padded to it and the padding's rows are cut here, before anything sees them.

    With test-time augmentation (``cfg.tta``, augment.tta_views) the probabilities are the mean over the views of
    each view's probabilities: each view votes with its confidence, and the mean is itself a distribution (rows
    sum to 1). The logits are then those of that mean (log p; log-odds for multi-label), so that the softmax
    (sigmoid) of the logits is the mean and the cross-entropy of the logits is the mean's. Without TTA: one pass,
    the model's own logits, as always.
    """
    model.eval()
    views = tta_views(cfg.tta)
    static = static if len(views) == 1 else None  # the captured graph is the plain forward
    logits, means = [], []
    for chunk, n in graphs.padded_batches(images, eval_batch(cfg), pad=static is not None):
        interrupt.check()
        if static is not None:
            logits.append(static(chunk)[:n])
            continue
        x = normalise(chunk.float().div_(255.0), mean, std)
        if len(views) == 1:
            with autocast if autocast is not None else contextlib.nullcontext():
                logits.append(model(x).float())
            continue
        total = torch.zeros((), device=x.device)
        for view in views:  # flips and quarter turns commute with the per-channel normalisation
            with autocast if autocast is not None else contextlib.nullcontext():
                out = model(view(x).contiguous(memory_format=torch.channels_last)).float()
            total = total + probabilities(out, info)
        means.append(total / len(views))
        p = means[-1].clamp(1e-7, 1 - 1e-7)  # a finite loss where every view was certain
        logits.append(p.log() - (1 - p).log() if info.multi_label else p.log())
    out = torch.cat(logits)
    return out, torch.cat(means) if means else probabilities(out, info)


def probabilities(logits: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Class probabilities of (N, K) logits: the softmax (the sigmoid for multi-label tasks)."""
    return logits.sigmoid() if info.multi_label else logits.softmax(dim=1)


def _optimizer(cfg: TrainConfig, model: nn.Module, *, fused: bool) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if fused:
        kw["fused"] = True  # one kernel for the whole update on CUDA
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **kw)
    return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(params, **kw)


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """Per-step learning-rate schedule with linear warmup: constant, cosine (to 0) or one-cycle."""
    total = cfg.epochs * steps_per_epoch
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        pct = warm / total if warm else 0.3  # torch's default warmup share when none is given
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct,
                                                   cycle_momentum=cfg.optimizer == "sgd")

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(cfg: TrainConfig, *, on_epoch: OnEpoch | None = None, progress: bool = False,
        checkpoint: Path | None = None, resume: dict[str, Any] | None = None) -> FitResult:
    """Train `cfg`; keep the weights of the epoch with the best validation `cfg.keep_epoch_by` (default: `metric`).

    ``checkpoint``: after every epoch, the run's state is saved there (search/train/checkpoint.py), before
    `on_epoch` hears of the epoch. ``resume``: a state loaded from such a file; the run goes on at the epoch after
    it, exactly as if never stopped, and first hands `on_epoch` the epochs it resumes from, in order (a search
    reports them to its pruner, which may stop the run there).
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = load(cfg.dataset, cfg.data_dir, device, cfg.size, OwnOptions.of(cfg))
    trainer = Trainer(cfg, data, device)
    result = FitResult(trainer, "completed", None, {})
    best_state = resume_run(trainer, result, resume, on_epoch)
    bar = None
    if progress and sys.stderr.isatty():  # elsewhere (a pipe, a log file) one plain line per epoch, no redraws
        from tqdm import tqdm

        bar = tqdm(total=trainer.steps_per_epoch, unit="batch", leave=True, dynamic_ncols=True)
    try:
        for epoch in range(result.resumed_at, cfg.epochs + 1):
            if result.outcome == "stopped":
                break
            if bar is not None:
                bar.reset()
                bar.set_description(f"epoch {epoch}/{cfg.epochs}")
            t0 = time.perf_counter()
            train_loss = trainer.epoch(bar)
            train_seconds = time.perf_counter() - t0
            result.reason = divergence(epoch, train_loss)
            if result.reason is not None:
                result.outcome = "diverged"
                break
            val = trainer.evaluate(data.val)
            metrics, best_state = record_epoch(result, epoch, train_loss, val, best_state, started=t0,
                                               train_seconds=train_seconds)
            if bar is not None:
                bar.set_postfix_str(f"loss {train_loss:.4f} val_acc {metrics['val_acc']:.4f} "
                                    f"val_auc {metrics['val_auc']:.4f}")
                bar.refresh()
            elif progress:
                print(f"epoch {epoch}/{cfg.epochs}: {epoch_line(metrics)}", file=sys.stderr, flush=True)
            if checkpoint is not None:
                checkpoint = save_or_warn(checkpoint, trainer, result, best_state, epoch)
            if on_epoch is not None and on_epoch(epoch, metrics):
                result.outcome = "stopped"
                break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result


# The steps of one epoch's bookkeeping, shared with trial packs (search/train/pack.py): a pack member's result, its
# metrics and its checkpoint are those of a lone run by construction.

def resume_run(trainer: Trainer, result: FitResult, resume: dict[str, Any] | None,
               on_epoch: OnEpoch | None) -> dict[str, torch.Tensor] | None:
    """Put ``trainer`` and ``result`` where the checkpoint state ``resume`` left them (nothing when None) and hand
    `on_epoch` the epochs it resumes from, in order (the run is "stopped" when it asks); returns the best epoch's
    weights so far."""
    if resume is None:
        return None
    restore_checkpoint(trainer, resume)
    result.history, result.best_epoch, result.best = resume["history"], resume["best_epoch"], resume["best"]
    result.resumed_at = resume["epoch"] + 1
    for metrics in result.history:
        if on_epoch is not None and on_epoch(int(metrics["epoch"]), metrics):
            result.outcome = "stopped"
            break
    return resume["best_state"]


def divergence(epoch: int, train_loss: float) -> str | None:
    """Why the run ends at ``epoch`` when its mean training loss is not finite; None when it is."""
    if math.isfinite(train_loss):
        return None
    return f"training diverged at epoch {epoch}: the loss became {train_loss}"


def record_epoch(result: FitResult, epoch: int, train_loss: float, val: dict[str, float],
                 best_state: dict[str, torch.Tensor] | None, *, started: float,
                 train_seconds: float) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """Append the epoch's metrics (what `on_epoch` hears) to the history and keep the model's weights if the epoch is
    the best so far; returns the metrics and the best epoch's weights."""
    trainer = result.trainer
    metrics = epoch_metrics(trainer, epoch, train_loss, val, started=started, train_seconds=train_seconds)
    result.history.append(metrics)
    if _keeps(trainer.cfg, metrics, result):
        result.best_epoch = epoch
        result.best = {k: metrics[k] for k in VAL_KEYS}
        best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return metrics, best_state


def epoch_line(metrics: dict[str, float]) -> str:
    return (f"loss {metrics['train_loss']:.4f} val_acc {metrics['val_acc']:.4f} val_auc {metrics['val_auc']:.4f} "
            f"({metrics['images_per_second']:,.0f} images/s)")


def save_or_warn(checkpoint: Path, trainer: Trainer, result: FitResult, best_state: dict[str, torch.Tensor] | None,
                 epoch: int, **kw: Any) -> Path | None:
    """Save the run's checkpoint; a full disk or a bad folder is a warning and the run goes on without a safety net
    (returns None, the checkpoint path from then on)."""
    try:
        save_checkpoint(checkpoint, trainer, result, best_state, epoch, **kw)
        return checkpoint
    except OSError as err:
        logging.getLogger("search").warning("the checkpoint could not be written to %s (%s); this run goes on "
                                            "without checkpoints", checkpoint, err)
        return None


VAL_KEYS = ("val_acc", "val_auc", "val_loss")


def epoch_metrics(trainer: Trainer, epoch: int, train_loss: float, val: dict[str, float], *, started: float,
                  train_seconds: float) -> dict[str, float]:
    """An epoch's history entry: what `on_epoch` hears."""
    return {"epoch": epoch, "train_loss": train_loss, "val_acc": val["acc"], "val_auc": val["auc"],
            "val_loss": val["loss"], "lr": trainer.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "images_per_second": trainer.steps_per_epoch * trainer.cfg.batch_size / train_seconds}


def _train_epoch(trainer: Trainer, epoch: int) -> dict[str, float]:
    """Train one epoch and validate (a fold of fit_folds): its history entry (only its train_loss when that is not
    finite)."""
    t0 = time.perf_counter()
    train_loss = trainer.epoch()
    train_seconds = time.perf_counter() - t0
    if not math.isfinite(train_loss):
        return {"epoch": epoch, "train_loss": train_loss}
    val = trainer.evaluate(trainer.data.val)
    return epoch_metrics(trainer, epoch, train_loss, val, started=t0, train_seconds=train_seconds)


def _keeps(cfg: TrainConfig, metrics: dict[str, float], result: FitResult) -> bool:
    """Whether this epoch becomes the kept one: the first, or one better by ``keep_epoch_by`` (default ``metric``;
    val_loss: lower). A NaN value (an AUC a split cannot define) never beats a number."""
    if result.best_epoch is None:
        return True
    by = cfg.keep_epoch_by or cfg.metric
    if by == "val_loss":
        return metrics[by] < result.best[by]
    return metrics[by] > result.best[by]


def fit_folds(cfg: TrainConfig, assignment: Sequence[int], *, on_epoch: OnEpoch | None = None) -> FitResult:
    """Cross-validated `fit`: one model per fold of train+val, trained in lockstep, epoch by epoch.

    ``assignment``: each train+val image's fold (train images first, then val, in the split's order; a study's
    cv_folds makes it, search/hpo/folds.py). Fold f trains on the images of the other folds and validates on its
    own (data.fold_data). Each epoch, every fold trains and validates, and `on_epoch` hears the mean over the folds
    of each validation metric (a search prunes on it). The kept epoch is the one with the best mean
    ``keep_epoch_by`` (default ``metric``): every fold at the same epoch, as a final run on the official split
    would train. ``result.best`` holds the means at that epoch, ``result.folds`` each fold's values. No weights are
    kept (K models, none of them the final one) and no checkpoint is written: a retried trial starts again.
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = load(cfg.dataset, cfg.data_dir, device, cfg.size, OwnOptions.of(cfg))
    k = max(assignment) + 1
    trainers = [Trainer(cfg, fold_data(data, assignment, f), device) for f in range(k)]
    result = FitResult(trainers[0], "completed", None, {})
    metric = cfg.keep_epoch_by or cfg.metric
    per_epoch: list[list[dict[str, float]]] = []  # per epoch, each fold's history entry
    for epoch in range(1, cfg.epochs + 1):
        folds = []
        for f, trainer in enumerate(trainers):
            entry = _train_epoch(trainer, epoch)
            if not math.isfinite(entry["train_loss"]):
                result.outcome = "diverged"
                result.reason = f"training diverged at epoch {epoch} on fold {f + 1}: the loss became " \
                                f"{entry['train_loss']}"
                break
            folds.append(entry)
        if result.outcome == "diverged":
            break
        per_epoch.append(folds)
        seconds = sum(e["seconds"] for e in folds)
        trained = sum(t.steps_per_epoch * cfg.batch_size for t in trainers)
        metrics = {"epoch": epoch, **{key: statistics.fmean(e[key] for e in folds) for key in
                                      ("train_loss", *VAL_KEYS)},
                   "lr": folds[0]["lr"], "seconds": seconds,
                   "images_per_second": trained / sum(t.steps_per_epoch * cfg.batch_size / e["images_per_second"]
                                                      for t, e in zip(trainers, folds))}
        result.history.append(metrics)
        if _keeps(cfg, metrics, result):
            result.best_epoch = epoch
            result.best = {key: metrics[key] for key in VAL_KEYS}
        if on_epoch is not None and on_epoch(epoch, metrics):
            result.outcome = "stopped"
            break
    if result.best_epoch is not None:
        kept = per_epoch[result.best_epoch - 1]
        result.folds = {"k": k, "kept_by": metric,
                        **{key: [e[key] for e in kept] for key in VAL_KEYS},
                        "history": {cfg.metric: [[e[cfg.metric] for e in folds] for folds in per_epoch]}}
    result.seconds = time.perf_counter() - start
    return result


def train(cfg: TrainConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """`search train`: fit, evaluate the best epoch on test, write metrics.json, model.pt, config.yaml and
    test_predictions.csv to out."""
    result = fit(cfg, progress=progress)
    if result.best_epoch is None:
        raise SearchError(f"{result.reason}; nothing was saved. Try a lower lr (now {cfg.lr}).")
    data = result.trainer.data
    t0 = time.perf_counter()
    test, scores = result.trainer.evaluate_with_scores(data.test)
    test_seconds = time.perf_counter() - t0
    per_class = class_results(data.test.labels, scores, data.info.task)
    metrics = {
        **{k: result.best[k] for k in ("val_acc", "val_auc")},
        "test_acc": test["acc"], "test_auc": test["auc"], "test_loss": test["loss"],
        "best_epoch": result.best_epoch, "epochs": len(result.history), "outcome": result.outcome,
        "seconds": round(result.seconds, 3), "params": result.params,
        "images_per_second": round(result.images_per_second, 1),
        "device": str(result.trainer.device), "dataset": cfg.dataset, "architecture": cfg.architecture,
        "precision": result.trainer.precision, "compiled": result.trainer.compiled,
        "graphed": result.trainer.graphed, "size": cfg.size,
        "seed": cfg.seed, "task": data.info.task,
        "keep_epoch_by": cfg.keep_epoch_by or cfg.metric,
        # what test-time augmentation costs: the test pass's time per image, with its views (1 without TTA)
        "tta": cfg.tta, "tta_views": len(tta_views(cfg.tta)),
        "test_ms_per_image": round(1000 * test_seconds / max(1, len(data.test)), 4),
        # from the same test pass as test_acc: rows are true classes, columns predicted ones
        "test_confusion": per_class["confusion"], "test_per_class_acc": per_class["per_class_acc"],
        "test_class_counts": per_class["class_counts"],
        "history": result.history,
    }
    if result.reason:
        metrics["reason"] = result.reason
    out.mkdir(parents=True, exist_ok=True)
    # Each file is written under a temporary name and renamed, so an interrupted save leaves no half file.
    # The training split's mean and std travel with the weights: `search predict` normalises a user's images as
    # the run did, without the training data.
    # Own data's classes travel with the weights too: `search predict` on another machine names them without the
    # training images.
    saved = {"state_dict": result.model.state_dict(), "config": cfg.to_dict(), "mean": data.mean.view(-1).tolist(),
             "std": data.std.view(-1).tolist(), **own_info_record(data.info)}
    atomic_write(out / "model.pt", lambda p: torch.save(saved, p))
    config.dump(cfg, out / "config.yaml")
    # Each test image's class, prediction and class probabilities (search/train/predictions.py): `search report`'s
    # paired test and the ensembles read them.
    text = predictions.test_text(cfg.dataset, data.info.task,
                                  data.test.labels.cpu().numpy(), scores.cpu().numpy(),
                                  predict(scores, data.info.task).cpu().numpy())
    atomic_write(out / "test_predictions.csv", lambda p: p.write_text(text))
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))
    return metrics
