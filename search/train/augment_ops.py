"""Augmentations with a strength: batched on the device, one generator, per-sample parameters, no loop over images.

Each op is ``op(x, m, generator, rule) -> x'`` on a float batch ``x`` (N, C, H, W) in [0, 1] before normalisation;
``m`` is (N,) per-sample magnitudes in [0, 1] (a policy's strength, or TrivialAugment's draw below it), and
``rule`` the dataset's limits (data.augment_limits). At magnitude m each op draws its parameters uniformly inside:

- ``affine``: rotation +-30m degrees (never past the dataset's ``max_rotation``), scale 1 +- 0.2m, shear +-15m
  degrees, translation +-0.1m of the side; one ``affine_grid`` / ``grid_sample`` (bilinear, zero fill) per batch;
- ``rcrop`` (random resized crop): a window of 1 - 0.6m..1 of the area, aspect (4/3)^(+-m), anywhere in the image,
  zoomed back to H x W; the same single grid sample;
- ``gamma``: x^g, g = 2^(+-m); ``contrast``: c * x + (1 - c) * mean(grey(x)), c = 1 +- m;
- ``blur``: a Gaussian of sigma 0..1.5m pixels at 28 px (scaled with the side), separable, per-sample kernels as
  one grouped convolution; ``noise``: additive Gaussian noise of std 0..0.1m;
- ``erase`` (cutout): one rectangle of 0..0.4m of the area, aspect 1/3..3, filled with the image's mean;
- ``trivial`` (TrivialAugment, Mueller & Hutter 2021): each image gets one op, uniformly among identity, rotate,
  shear, translate, scale, the flips and quarter turns the dataset allows, brightness, contrast, gamma, blur and
  noise, at a magnitude uniform in [0, m]. Every geometric choice is one affine matrix per image (one grid sample for
  the batch); the photometric ones are computed for the batch and selected per image.

Outputs stay in [0, 1]. The same generator state gives the same output (tests/test_augment.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from search.train.data import Limits

# the strength each new policy has when the config names none (neither `name@m` nor aug_strength)
DEFAULT_STRENGTH = {"affine": 0.3, "rcrop": 0.5, "gamma": 0.5, "contrast": 0.5, "blur": 0.5, "noise": 0.5,
                    "erase": 0.5, "trivial": 1.0}
MAX_DEGREES = 30.0  # affine's rotation at strength 1


def _u(n: int, x: Tensor, g: torch.Generator) -> Tensor:
    """(N,) uniform in [-1, 1]."""
    return 2 * torch.rand(n, generator=g, device=x.device, dtype=x.dtype) - 1


def _sample(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def _affine_theta(m: Tensor, x: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    """(N, 2, 3) sampling matrices: rotation, shear and scale about the centre, then translation."""
    n = x.shape[0]
    degrees = torch.clamp(MAX_DEGREES * m, max=rule.max_rotation)
    angle = torch.deg2rad(_u(n, x, g) * degrees)
    scale = 1 + 0.2 * m * _u(n, x, g)
    shear = torch.tan(torch.deg2rad(15 * m * _u(n, x, g)))
    # +-0.1 of the side: 0.2 in affine_grid's [-1, 1] units
    shift = 0.2 * m.view(-1, 1) * torch.stack([_u(n, x, g), _u(n, x, g)], dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (N, 2, 2)
    s = torch.zeros_like(a)
    s[:, 0, 0], s[:, 0, 1], s[:, 1, 1] = 1, shear, 1
    linear = (a @ s) / scale.view(-1, 1, 1)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=2)


def affine(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    return _sample(x, _affine_theta(m, x, g, rule))


def rcrop(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    n = x.shape[0]
    area = 1 - 0.6 * m * (_u(n, x, g) + 1) / 2
    ratio = torch.exp(math.log(4 / 3) * m * _u(n, x, g))
    w = torch.sqrt(area * ratio).clamp(max=1)
    h = torch.sqrt(area / ratio).clamp(max=1)
    cx, cy = (1 - w) * _u(n, x, g), (1 - h) * _u(n, x, g)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    return _sample(x, theta)


def _grey_mean(x: Tensor) -> Tensor:
    grey = x if x.shape[1] == 1 else (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return grey.mean(dim=(1, 2, 3), keepdim=True)


def gamma(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    power = torch.pow(2.0, m * _u(x.shape[0], x, g)).view(-1, 1, 1, 1)
    return x.clamp_min(0).pow(power).clamp(0, 1)


def contrast(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    c = (1 + m * _u(x.shape[0], x, g)).view(-1, 1, 1, 1)
    return (c * x + (1 - c) * _grey_mean(x)).clamp(0, 1)


def brightness(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    return (x * (1 + m * _u(x.shape[0], x, g)).view(-1, 1, 1, 1)).clamp(0, 1)


def blur(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    n, c, h, w = x.shape
    sigma = (1.5 * h / 28) * m * (_u(n, x, g) + 1) / 2  # 0..1.5m px at 28 px
    radius = max(1, math.ceil(3 * 1.5 * h / 28))
    d = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-d.view(1, -1) ** 2 / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))  # sigma ~0: a delta
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K): each image's kernel per channel
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w).clamp(0, 1)


def noise(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    std = (0.1 * m * (_u(x.shape[0], x, g) + 1) / 2).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)).clamp(0, 1)


def erase(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    n, _, h, w = x.shape
    area = 0.4 * m * (_u(n, x, g) + 1) / 2
    ratio = torch.exp(math.log(3) * _u(n, x, g))
    eh = (torch.sqrt(area / ratio) * h).clamp(max=h)
    ew = (torch.sqrt(area * ratio) * w).clamp(max=w)
    top = (h - eh) * (_u(n, x, g) + 1) / 2
    left = (w - ew) * (_u(n, x, g) + 1) / 2
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1))).unsqueeze(1)
    return torch.where(inside, x.mean(dim=(2, 3), keepdim=True), x)


# --- TrivialAugment ------------------------------------------------------------------------------------------------

_GEOMETRIC = ("identity", "rotate", "shear", "translate", "scale")
_PHOTOMETRIC = ("brightness", "contrast", "gamma", "blur", "noise")
_PHOTO_OPS = {"brightness": brightness, "contrast": contrast, "gamma": gamma, "blur": blur, "noise": noise}


def trivial_ops(rule: Limits) -> tuple[str, ...]:
    """The ops TrivialAugment draws from for a dataset: its flips and quarter turns only where they keep labels."""
    turns = {"none": (), "flip": ("flip",), "dihedral": ("flip", "rot90", "rot180", "rot270")}[rule.symmetry]
    return (*_GEOMETRIC, *turns, *_PHOTOMETRIC)


def _one_geometric(name: str, m: Tensor, x: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    """(N, 2, 2) sampling matrices of one geometric op (translate's shift is the caller's)."""
    n = x.shape[0]
    eye = torch.eye(2, device=x.device, dtype=x.dtype).expand(n, 2, 2).clone()
    u = _u(n, x, g)  # every op draws once, so the draws do not depend on which op an image got
    if name == "rotate":
        angle = torch.deg2rad(u * torch.clamp(MAX_DEGREES * m, max=rule.max_rotation))
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    if name == "shear":
        eye[:, 0, 1] = torch.tan(torch.deg2rad(15 * m * u))
    elif name == "scale":
        eye = eye / (1 + 0.2 * m * u).view(-1, 1, 1)
    elif name == "flip":
        eye[:, 0, 0] = -1
    elif name.startswith("rot") and name != "rotate":
        k = int(name[3:]) // 90
        cos, sin = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
        eye[:, 0, 0], eye[:, 0, 1], eye[:, 1, 0], eye[:, 1, 1] = cos, -sin, sin, cos
    return eye


def trivial(x: Tensor, m: Tensor, g: torch.Generator, rule: Limits) -> Tensor:
    n = x.shape[0]
    ops = trivial_ops(rule)
    choice = torch.randint(0, len(ops), (n,), generator=g, device=x.device)
    mag = m * (_u(n, x, g) + 1) / 2  # uniform in [0, m]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    shift = 0.2 * mag.view(-1, 1) * torch.stack([_u(n, x, g), _u(n, x, g)], dim=1)
    for k, name in enumerate(ops):
        if name in _PHOTOMETRIC:
            continue
        picked = (choice == k).view(-1, 1, 1)
        theta[:, :, :2] = torch.where(picked, _one_geometric(name, mag, x, g, rule), theta[:, :, :2])
        if name == "translate":
            theta[:, :, 2] = torch.where(picked.view(-1, 1), shift, theta[:, :, 2])
    out = _sample(x, theta)  # one grid sample (identity samples at the pixel centres: equal within float rounding)
    for k, name in enumerate(ops):
        if name in _PHOTOMETRIC:
            out = torch.where((choice == k).view(-1, 1, 1, 1), _PHOTO_OPS[name](out, mag, g, rule), out)
    return out


OPS = {"affine": affine, "rcrop": rcrop, "gamma": gamma, "contrast": contrast, "blur": blur, "noise": noise,
       "erase": erase, "trivial": trivial}
