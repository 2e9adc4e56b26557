"""The one prediction path: uint8 images -> the network's input -> logits and class probabilities.

Validation and test evaluation (engine.Trainer), `search predict` (search/train/predict.py) and the ensembles read
images through here, so a run is judged exactly as its predictions are later made.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from search import interrupt
from search.train import graphs
from search.train.augment import tta_views
from search.train.config import TrainConfig
from search.train.data import DatasetInfo

EVAL_BATCH = 1024  # at 28 px; scaled down with the image area for larger sizes


def scaled(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [0, 1] in torch's default dtype: float32 for every run; tests/test_pack.py sets float64 to
    compare fused and lone arithmetic where reassociation noise cannot grow into a visible difference."""
    return images.to(torch.get_default_dtype()).div_(255.0)


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
        x = normalise(scaled(chunk), mean, std)
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
