"""A run's trainer, and the entries to the one epoch loop (search/train/loop.py): fit, fit_folds, train.

Read top to bottom: resolve the device, load the data once per process onto it, build the model and optimizer
(Trainer); each epoch shuffles indices on the device, slices uint8 batches, augments and normalises them batched
on the device, steps, and evaluates on val. `on_epoch(epoch, metrics)` may stop the run (the search prunes with it).

Speed notes (figures from bench/epoch_speed.py):
- The whole split lives on the device as uint8; a batch is one index_select, no DataLoader, no PIL, no host copy.
- The training loss is summed on the device and read once per epoch, so the CPU never waits for the GPU mid-epoch.
- On CUDA: bf16 autocast (`precision`), channels_last and fused optimizers (Tensor Cores; fewer kernel launches);
  `compile: true` adds torch.compile. bench/gpu_proof.py measures all of it on a GPU in one command.
- `graphs: on` replays the whole training step, and the evaluation forward, as CUDA graphs: one launch instead of
  ~140 (search/train/graphs.py, docs/graphs.md; `auto` leaves it off until measured).
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from models import ModelError, build_model
from search import interrupt
from search.devices import device_label, resolve_device
from search.errors import SearchError
from search.train import config, graphs, loop, owninfo, prediction_files
from search.train.augment import make_augment, tta_views
from search.train.config import TrainConfig, atomic_write
from search.train.data import Data, DatasetInfo, OwnOptions, Split, augment_limits, fold_data, load
from search.train.loop import FitResult, OnEpoch
from search.train.metrics import class_results, evaluate_scores, predict
from search.train.mixing import make_mixer, mixed_loss
from search.train.scoring import EVAL_BATCH, eval_batch, normalise, probabilities, scaled, score

log = logging.getLogger("search")
# Re-exported: callers above the train floor name them through engine.
__all__ = ["EVAL_BATCH", "FitResult", "OnEpoch", "Trainer", "build_net", "device_label", "eval_batch", "fit",
           "fit_folds", "normalise", "probabilities", "resolve_device", "resolve_precision", "scaled", "score",
           "train"]


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
        x = scaled(images)
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
    reports them to its pruner, which may stop the run there). A group of one member (search/train/loop.py).
    """
    device = resolve_device(cfg.device)
    data = load(cfg.dataset, cfg.data_dir, device, cfg.size, OwnOptions.of(cfg))
    one = loop.member(Trainer(cfg, data, device), on_epoch=on_epoch, checkpoint=checkpoint, resume=resume)
    return loop.run(loop.Alone([one], progress=progress))[0]


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
    device = resolve_device(cfg.device)
    data = load(cfg.dataset, cfg.data_dir, device, cfg.size, OwnOptions.of(cfg))
    trainers = [Trainer(cfg, fold_data(data, assignment, f), device) for f in range(max(assignment) + 1)]
    joint = loop.FoldMean(cfg, trainers[0], on_epoch)
    loop.run(loop.Alone([loop.member(t, keep=False) for t in trainers], joint=joint))
    return joint.result


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
             "std": data.std.view(-1).tolist(), **owninfo.record(data.info)}
    atomic_write(out / "model.pt", lambda p: torch.save(saved, p))
    config.dump(cfg, out / "config.yaml")
    # Each test image's class, prediction and class probabilities (search/train/prediction_files.py): `search report`'s
    # paired test and the ensembles read them.
    text = prediction_files.test_text(cfg.dataset, data.info.task,
                                  data.test.labels.cpu().numpy(), scores.cpu().numpy(),
                                  predict(scores, data.info.task).cpu().numpy())
    atomic_write(out / "test_predictions.csv", lambda p: p.write_text(text))
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))
    return metrics
