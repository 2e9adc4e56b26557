"""Batched, on-device, seeded data augmentation.

An augmentation is ``augment(x, generator) -> x'`` on a float batch ``x`` of shape (N, C, H, W) with values in
[0, 1] (applied before normalisation). It returns a new tensor of the same shape, dtype and device; ``x`` is never
modified. Every random number comes from ``generator`` (on ``x``'s device), so the same seed gives the same
output. Each sample gets its own random parameters; there is no Python loop over images.

Policies (``spec`` is one name or a ``+``-joined combination applied left to right, e.g. ``dihedral+color``):

- ``none``: no augmentation; :func:`make_augment` returns ``None`` so the trainer can skip the call.
- ``flip``: horizontal flip with probability 0.5.
- ``dihedral``: a uniform element of the dihedral group D4 (8 elements): horizontal flip with probability 0.5,
  then rotation by k * 90 degrees, k uniform in {0, 1, 2, 3}. Needs square images. Meant for tissue, which has
  no orientation.
- ``crop``: translation by (dy, dx), each uniform in {-4, ..., 4}, with zero fill: CIFAR-style "pad 4, random
  crop back to H x W".
- ``color``: stain variation, each factor uniform per sample, each step clamped to [0, 1] (as torchvision's
  ``ColorJitter``), in this order:
  brightness ``x * b``, b in [0.8, 1.2];
  contrast ``c * x + (1 - c) * mean(grey(x))``, c in [0.8, 1.2];
  saturation ``s * x + (1 - s) * grey(x)``, s in [0.8, 1.2] (RGB only);
  hue: rotation of the chroma (I, Q) plane of YIQ by h turns, h in [-0.05, 0.05] (RGB only).
  ``grey`` is ITU-R 601 luma. For one channel only brightness and contrast apply.
- ``affine``, ``rcrop``, ``gamma``, ``contrast``, ``blur``, ``noise``, ``erase``, ``trivial``: search/train/
  augment_ops.py, each at a strength in [0, 1].

Strength: ``name@m`` (e.g. ``affine@0.3+color@0.4``), else the config's ``aug_strength``, else each policy's
default. ``crop@m`` shifts by up to 2/7 of the side at m = 1 (m = 0.5: 4 px at 28 px); ``color@m`` draws its
factors in [1 - m, 1 + m] and the hue in +-m/4 turns (m = 0.2: the default). ``flip`` and ``dihedral`` take none.
Without a strength, ``crop`` and ``color`` are the fixed ops above, bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from search.train import augment_ops
from search.train.config import FIXED_POLICIES, POLICIES, parse_ops, parse_policy  # noqa: F401  (this module's API)
from search.train.data import Limits

Augment = Callable[[Tensor, torch.Generator], Tensor]

CROP_PAD = 4
COLOR_RANGE = 0.2  # brightness, contrast and saturation factors lie in [1 - 0.2, 1 + 0.2]
HUE_RANGE = 0.05  # in turns

_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (FCC NTSC). Its I and Q rows sum to zero, so greys have no chroma and a hue rotation keeps them.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _per_sample(mask: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1), to select or scale whole images."""
    return mask.view(-1, 1, 1, 1)


def _uniform(n: int, radius: float, x: Tensor, generator: torch.Generator) -> Tensor:
    """(N, 1, 1, 1) factors uniform in [1 - radius, 1 + radius]."""
    u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
    return _per_sample(1 + radius * (2 * u - 1))


def _flip(x: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(_per_sample(flip), x.flip(-1), x)


def _dihedral(x: Tensor, generator: torch.Generator) -> Tensor:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got {tuple(x.shape[-2:])}")
    x = _flip(x, generator)
    k = torch.randint(0, 4, (x.shape[0],), generator=generator, device=x.device)
    out = x
    # Three whole-batch rotations cost less than any per-image dispatch at 28x28.
    for quarter_turns in (1, 2, 3):
        out = torch.where(_per_sample(k == quarter_turns), torch.rot90(x, quarter_turns, dims=(-2, -1)), out)
    return out


def _crop(x: Tensor, generator: torch.Generator, pad: int = CROP_PAD) -> Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # Offsets of the crop window in the padded image: 0..2*pad, i.e. shifts of -pad..pad.
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x.device)
    rows = offsets[0].view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = offsets[1].view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[images, channels, rows, cols]  # one gather for the whole batch


_CONSTANTS: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _constant(name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A colour constant on ``device``, copied there once: no host-to-device copy per batch on a GPU."""
    key = (name, device, dtype)
    if key not in _CONSTANTS:
        source = {"luma": torch.tensor(_LUMA, dtype=torch.float64).view(1, 3, 1, 1), "to_yiq": _RGB_TO_YIQ,
                  "to_rgb": _YIQ_TO_RGB}[name]
        _CONSTANTS[key] = source.to(device=device, dtype=dtype)
    return _CONSTANTS[key]


def _grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma, (N, 3, H, W) -> (N, 1, H, W)."""
    weights = _constant("luma", x.device, x.dtype)
    return (x * weights).sum(dim=1, keepdim=True)


def _hue_matrices(turns: Tensor) -> Tensor:
    """(N,) hue shifts in turns -> (N, 3, 3) RGB matrices: YIQ, rotate (I, Q), back to RGB."""
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(turns.shape[0], 3, 3, device=turns.device, dtype=turns.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    to_yiq = _constant("to_yiq", turns.device, turns.dtype)
    to_rgb = _constant("to_rgb", turns.device, turns.dtype)
    return to_rgb @ rotation @ to_yiq


def _color(x: Tensor, generator: torch.Generator, radius: float = COLOR_RANGE, hue: float = HUE_RANGE) -> Tensor:
    n, c = x.shape[:2]
    rgb = c == 3
    if c not in (1, 3):
        raise ValueError(f"color augmentation needs 1 or 3 channels, got {c}")
    x = (x * _uniform(n, radius, x, generator)).clamp(0, 1)
    grey = _grey(x) if rgb else x
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(n, radius, x, generator)
    x = (contrast * x + (1 - contrast) * mean).clamp(0, 1)
    if not rgb:
        return x
    saturation = _uniform(n, radius, x, generator)
    x = (saturation * x + (1 - saturation) * _grey(x)).clamp(0, 1)
    turns = hue * (2 * torch.rand(n, generator=generator, device=x.device, dtype=x.dtype) - 1)
    x = torch.einsum("nij,njhw->nihw", _hue_matrices(turns), x)
    return x.clamp(0, 1)


_OPS: dict[str, Augment] = {"flip": _flip, "dihedral": _dihedral, "crop": _crop, "color": _color}


def _op(name: str, strength: float | None, limits: Limits) -> Augment:
    """One op of a policy at ``strength`` (None: its default; today's crop and color exactly)."""
    if strength is None and name in _OPS:
        return _OPS[name]
    if name == "crop":  # strength 0.5 shifts by up to 4 px at 28 px, as the default does (2/7 of the side at 1)
        return lambda x, g: _crop(x, g, pad=max(1, round(strength * x.shape[-1] * 2 / 7)))
    if name == "color":  # strength 0.2 is the default's ranges
        return lambda x, g: _color(x, g, radius=strength, hue=strength / 4)
    op = augment_ops.OPS[name]
    m = augment_ops.DEFAULT_STRENGTH[name] if strength is None else strength

    def run(x: Tensor, g: torch.Generator) -> Tensor:
        return op(x, torch.full((x.shape[0],), m, device=x.device, dtype=x.dtype), g, limits)

    return run


def make_augment(spec: str, *, channels: int, strength: float | None = None,
                 limits: Limits | None = None) -> Augment | None:
    """The augmentation for ``spec`` on ``channels``-channel images, or ``None`` for ``"none"``. ``strength``: that
    of every op the spec gives none (TrainConfig.aug_strength); ``limits``: the dataset's rule (data.augment_limits).

    >>> augment = make_augment("dihedral+color", channels=3)
    >>> x = torch.rand(8, 3, 28, 28)
    >>> augment(x, torch.Generator().manual_seed(0)).shape
    torch.Size([8, 3, 28, 28])
    """
    parsed = parse_ops(spec)
    if not parsed:
        return None
    names = tuple(name for name, _ in parsed)
    if "color" in names and channels not in (1, 3):
        raise ValueError(f"color augmentation needs 1 or 3 channels, got {channels}")
    limits = limits or Limits()
    ops = [_op(name, own if own is not None else strength if name not in FIXED_POLICIES else None, limits)
           for name, own in parsed]

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"expected a batch of shape (N, {channels}, H, W), got {tuple(x.shape)}")
        for op in ops:
            x = op(x, generator)
        return x

    augment.__name__ = augment.__qualname__ = f"augment_{'_'.join(names)}"
    return augment


# --- test-time views ------------------------------------------------------------------------------------------

View = Callable[[Tensor], Tensor]


def _dihedral_view(flip: bool, quarter_turns: int) -> View:
    def view(x: Tensor) -> Tensor:
        x = x.flip(-1) if flip else x
        return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns else x

    view.__name__ = f"{'flip_' if flip else ''}rot{90 * quarter_turns}"
    return view


def tta_views(tta: str) -> tuple[View, ...]:
    """The deterministic views of a batch (N, C, H, W) that a test-time augmentation ``tta`` (data.TTA) averages
    over, the identity first: none -> 1 view, flip -> 2 (the horizontal mirror, as ``flip`` trains), dihedral -> 8
    (every element of D4, as ``dihedral`` trains; square images). Spatial views commute with the per-channel
    normalisation, so they may be applied before or after it.

    >>> [v.__name__ for v in tta_views("flip")]
    ['rot0', 'flip_rot0']
    """
    if tta == "none":
        return (_dihedral_view(False, 0),)
    if tta == "flip":
        return (_dihedral_view(False, 0), _dihedral_view(True, 0))
    if tta == "dihedral":
        return tuple(_dihedral_view(f, k) for f in (False, True) for k in range(4))
    raise ValueError(f"unknown tta {tta!r}; valid: none, flip, dihedral")
