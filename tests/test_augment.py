"""Augmentation policies: shapes, ranges, reproducibility and the exact geometry of each op."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from search.errors import SearchError
from search.train.augment import POLICIES, make_augment, parse_policy

N, SIZE = 64, 28
SPECS = ["flip", "dihedral", "crop", "color", "dihedral+color", "flip+crop+color"]
# The CUDA case carries the marker `gpu` (bench/gpu_proof.py runs `pytest -m gpu`) and skips where no GPU is visible.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU is visible (torch.cuda.is_available() is False)")])]


def batch(channels: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """Distinct random images in (0, 1]: no image is symmetric under any flip or rotation, and, being non-zero
    everywhere, a shifted copy is told apart from the zero fill."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N, channels, SIZE, SIZE, generator=g, dtype=torch.float64) * 0.9 + 0.1).to(device)


def run(spec: str, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    augment = make_augment(spec, channels=x.shape[1])
    assert augment is not None
    return augment(x, torch.Generator(device=x.device).manual_seed(seed))


def dihedral_images(x: torch.Tensor) -> torch.Tensor:
    """(8, N, C, H, W): the 8 dihedral transforms of every image."""
    return torch.stack([torch.rot90(y, k, dims=(-2, -1)) for y in (x, x.flip(-1)) for k in range(4)])


def shifted_images(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """(81, N, C, H, W): every image translated by each (dy, dx) in [-pad, pad]^2 with zero fill."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    return torch.stack(
        [padded[..., dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    )


def matches_one_of(out: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N,) bool: out[i] equals candidates[j, i] exactly for some j."""
    return (candidates == out.unsqueeze(0)).flatten(2).all(dim=2).any(dim=0)


def test_parse_policy() -> None:
    assert POLICIES == ("none", "flip", "dihedral", "crop", "color", "affine", "rcrop", "gamma", "contrast", "blur",
                        "noise", "erase", "trivial")
    assert parse_policy("none") == ()
    assert parse_policy(" none ") == ()
    assert parse_policy("color") == ("color",)
    assert parse_policy(" dihedral + color") == ("dihedral", "color")
    assert parse_policy("flip+crop+color") == ("flip", "crop", "color")


@pytest.mark.parametrize(
    ("spec", "named"),
    [("rotate", "'rotate'"), ("flip+jitter", "'jitter'"), ("flip+", "''"), ("none+flip", "'none'"),
     ("flip+flip", "'flip'")],
)
def test_parse_policy_errors(spec: str, named: str) -> None:
    with pytest.raises(SearchError) as info:
        parse_policy(spec)
    message = info.value.format_message()
    assert "\n" not in message and named in message
    assert info.value.exit_code == 2
    if spec in ("rotate", "flip+jitter"):
        assert message == (
            f"unknown augmentation {named}; valid: none, flip, dihedral, crop, color, affine, rcrop, gamma, "
            "contrast, blur, noise, erase, trivial, each with an optional strength (affine@0.3), or a "
            "combination such as dihedral+color"
        )


def test_none_is_skipped() -> None:
    assert make_augment("none", channels=3) is None
    with pytest.raises(SearchError):
        make_augment("swirl", channels=1)


def test_takes_images_only() -> None:
    # Labels never pass through augmentation; that it keeps each image at its index is checked per op below.
    augment = make_augment("dihedral+color", channels=3)
    assert list(inspect.signature(augment).parameters) == ["x", "generator"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec", SPECS)
def test_shape_range_change_and_seed(spec: str, channels: int, device: str) -> None:
    x = batch(channels, device)
    before = x.clone()
    out = run(spec, x, seed=1)
    assert (out.shape, out.dtype, out.device) == (x.shape, x.dtype, x.device)
    assert torch.equal(x, before), "the input batch (the cached dataset) must not be modified"
    assert out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(dim=1)
    assert changed.sum() >= N // 4, f"only {int(changed.sum())} of {N} images changed"
    assert torch.equal(out, run(spec, x, seed=1))
    assert not torch.equal(out, run(spec, x, seed=2))


def test_float32_and_generator_state() -> None:
    x = batch(3).float()
    augment = make_augment("flip+crop+color", channels=3)
    g = torch.Generator().manual_seed(0)
    first, second = augment(x, g), augment(x, g)
    assert first.dtype == torch.float32
    assert not torch.equal(first, second), "successive batches must draw fresh randomness"


@pytest.mark.parametrize("channels", [1, 3])
def test_flip_is_identity_or_mirror(channels: int) -> None:
    x = batch(channels)
    out = run("flip", x)
    mirrored = (out == x.flip(-1)).flatten(1).all(dim=1)
    assert torch.all(mirrored | (out == x).flatten(1).all(dim=1))
    assert 8 < int(mirrored.sum()) < N - 8  # p = 0.5 each


@pytest.mark.parametrize("channels", [1, 3])
def test_dihedral_is_one_of_eight_transforms(channels: int) -> None:
    x = batch(channels)
    out = run("dihedral", x)
    assert torch.all(matches_one_of(out, dihedral_images(x)))
    # All 8 group elements occur in a batch of 512 (a miss has probability < 8 * (7/8)^512).
    xs = batch(channels).repeat(8, 1, 1, 1)
    out = run("dihedral", xs)
    which = (dihedral_images(xs) == out.unsqueeze(0)).flatten(2).all(dim=2).float().argmax(dim=0)
    assert set(which.tolist()) == set(range(8))


def test_dihedral_needs_square_images() -> None:
    with pytest.raises(ValueError, match="square"):
        make_augment("dihedral", channels=1)(torch.rand(2, 1, 28, 30), torch.Generator())


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_is_a_shift_by_at_most_four(channels: int) -> None:
    x = batch(channels)
    out = run("crop", x)
    candidates = shifted_images(x)
    assert torch.all(matches_one_of(out, candidates))
    shifts = (candidates == out.unsqueeze(0)).flatten(2).all(dim=2).float().argmax(dim=0)
    assert len(set(shifts.tolist())) > 20  # offsets vary per sample (81 possible)


def test_color_on_grey_is_affine_per_image() -> None:
    # Brightness then contrast is x -> a x + b per image with a = brightness * contrast in [0.64, 1.44];
    # mid-range inputs keep every step away from the clamp, so the fit must be exact.
    x = batch(1) * 0.2 + 0.4
    out = run("color", x)
    assert out.shape[1] == 1
    flat_x, flat_out = x.flatten(1), out.flatten(1)
    dx = flat_x - flat_x.mean(dim=1, keepdim=True)
    dy = flat_out - flat_out.mean(dim=1, keepdim=True)
    a = (dx * dy).sum(dim=1) / (dx * dx).sum(dim=1)
    assert torch.allclose(dy, a.unsqueeze(1) * dx, atol=1e-12)
    assert torch.all((a >= 0.64) & (a <= 1.44)) and a.std() > 0.05


def test_color_keeps_each_image_at_its_index() -> None:
    x = batch(3)
    out = run("color", x)
    # Colour jitter is a mild per-pixel change: every output stays nearest to its own input of 64.
    distances = torch.cdist(out.flatten(1), x.flatten(1))
    assert torch.equal(distances.argmin(dim=1), torch.arange(N))


def test_hue_and_saturation_change_chroma_and_keep_greys() -> None:
    # A grey RGB image (R = G = B) has no chroma: saturation and hue leave it grey.
    grey = batch(1).repeat(1, 3, 1, 1) * 0.5 + 0.25
    out = run("color", grey)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-12) and torch.allclose(out[:, 1], out[:, 2], atol=1e-12)
    # Brightness, contrast and saturation scale a uniform colour's chroma (I, Q) without turning it; hue turns
    # it by h in [-0.05, 0.05] of a turn. A mid-range colour keeps every step away from the clamp.
    x = torch.tensor([0.6, 0.4, 0.45], dtype=torch.float64).view(1, 3, 1, 1).expand(N, 3, SIZE, SIZE)
    out = run("color", x)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]],
                          dtype=torch.float64)
    before, after = to_yiq @ x[:, :, 0, 0].T, to_yiq @ out[:, :, 0, 0].T
    turns = (torch.atan2(after[2], after[1]) - torch.atan2(before[2], before[1])) / (2 * torch.pi)
    assert torch.all(turns.abs() <= 0.05 + 1e-12) and turns.std() > 0.02


def test_channel_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="3"):
        make_augment("color", channels=3)(torch.rand(2, 1, 28, 28), torch.Generator())
