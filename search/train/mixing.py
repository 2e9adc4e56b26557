"""Mixup and CutMix of training pairs, drawn on the device from the run's generator, with the loss on mixed targets.

mixup (Zhang et al. 2018): x = lam * x + (1 - lam) * x[perm]; cutmix (Yun et al. 2019): a box of 1 - lam of the
area is pasted from x[perm] (lam is then the share of pixels kept). lam ~ Beta(alpha, alpha), one per batch, and a
batch is mixed with probability ``mix_prob`` (else lam = 1: the batch as it was). The loss is
lam * loss(out, y) + (1 - lam) * loss(out, y[perm]): for cross-entropy with label smoothing and for BCE with smoothed
targets (multi-label) that is exactly the loss on the mixed soft target, since both are linear in the target.
Validation and test images are never mixed (the engine mixes in the training step only).

Everything stays on the device and nothing is read back: Beta is drawn as G1 / (G1 + G2) from two Gamma(alpha)
draws by Marsaglia and Tsang's method (2000), with a few candidates drawn at once and the first accepted one taken
(each is accepted with probability > 0.95: eight all rejected happens about once in 10^10 batches, and then the
last candidate is used), so a CUDA step never waits for the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

CANDIDATES = 8


def _gamma(alpha: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """One Gamma(alpha, 1) draw, a 0-dim tensor on ``device``."""
    boost = alpha < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    a = alpha + 1 if boost else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    z = torch.randn(CANDIDATES, generator=generator, device=device, dtype=torch.float64)
    u = torch.rand(CANDIDATES, generator=generator, device=device, dtype=torch.float64)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = torch.argmax(ok.to(torch.int8))  # the first accepted candidate (the last one where none is)
    first = torch.where(ok.any(), first, torch.tensor(CANDIDATES - 1, device=device))
    g = d * v[first]
    if boost:
        g = g * torch.rand((), generator=generator, device=device, dtype=torch.float64) ** (1 / alpha)
    return g


def beta(alpha: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """One Beta(alpha, alpha) draw, a 0-dim float64 tensor on ``device``."""
    g1, g2 = _gamma(alpha, generator, device), _gamma(alpha, generator, device)
    return g1 / (g1 + g2)


@dataclass(frozen=True)
class Mixer:
    kind: str  # mixup or cutmix
    alpha: float
    prob: float

    def __call__(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(mixed x, perm, lam): the batch mixed with x[perm] and the share lam (a 0-dim tensor) of its own images."""
        n, _, h, w = x.shape
        perm = torch.randperm(n, generator=generator, device=x.device)
        lam = beta(self.alpha, generator, x.device)
        apply = torch.rand((), generator=generator, device=x.device, dtype=torch.float64) < self.prob
        lam = torch.where(apply, lam, torch.ones_like(lam))
        if self.kind == "mixup":
            share = lam.to(x.dtype)
            return (share * x + (1 - share) * x[perm]).contiguous(memory_format=torch.channels_last), perm, lam
        # cutmix: a box of area 1 - lam, centred uniformly (clipped at the edges), pasted from x[perm]
        cut = torch.sqrt(1 - lam)
        cy = torch.rand((), generator=generator, device=x.device, dtype=torch.float64) * h
        cx = torch.rand((), generator=generator, device=x.device, dtype=torch.float64) * w
        top, bottom = (cy - cut * h / 2).clamp(0, h), (cy + cut * h / 2).clamp(0, h)
        left, right = (cx - cut * w / 2).clamp(0, w), (cx + cut * w / 2).clamp(0, w)
        rows = torch.arange(h, device=x.device, dtype=torch.float64).view(h, 1) + 0.5
        cols = torch.arange(w, device=x.device, dtype=torch.float64).view(1, w) + 0.5
        box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        kept = 1 - box.sum().to(torch.float64) / (h * w)  # lam as the pixels actually kept
        return torch.where(box, x[perm], x).contiguous(memory_format=torch.channels_last), perm, kept


def make_mixer(kind: str, alpha: float, prob: float) -> Mixer | None:
    return None if kind == "none" else Mixer(kind, alpha, prob)


def mixed_loss(loss_fn, out: Tensor, y: Tensor, perm: Tensor, lam: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    """lam * loss(out, y) + (1 - lam) * loss(out, y[perm]): the loss on the mixed (soft) target."""
    own, other = loss_fn(out, y), loss_fn(out, y[perm])
    share = lam.to(own.dtype)
    return share * own + (1 - share) * other
