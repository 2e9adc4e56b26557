"""Policies with a strength (search/train/augment_ops.py), mixing (search/train/mixing.py) and the datasets' rules:
shape, range, determinism, per-sample independence, today's numbers kept, label-changing ops refused."""
from __future__ import annotations

import pytest
import torch

from search.errors import SearchError
from search.train.augment import make_augment
from search.train.augment_ops import trivial_ops
from search.train.config import TrainConfig, parse_ops
from search.train.data import Limits, augment_limits, get_info

NEW = ["affine", "rcrop", "gamma", "contrast", "blur", "noise", "erase", "trivial"]


def batch(n: int = 32, channels: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 0.8 + 0.1


def run(spec: str, x: torch.Tensor, seed: int = 0, **kw) -> torch.Tensor:
    augment = make_augment(spec, channels=x.shape[1], **kw)
    return augment(x.clone(), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_range_determinism(name, channels):
    x = batch(channels=channels)
    out = run(f"{name}@0.8", x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, run(f"{name}@0.8", x))  # the same seed, the same output
    assert not torch.equal(out, run(f"{name}@0.8", x, seed=1))
    assert not torch.allclose(out, x, atol=1e-3)  # it does something


@pytest.mark.parametrize("name", NEW)
def test_each_image_its_own_draw_and_its_own_pixels(name):
    same = batch(n=1).repeat(16, 1, 1, 1)
    out = run(f"{name}@1.0", same)
    assert len({tuple(o.flatten()[:200].tolist()) for o in out}) > 8  # per-sample parameters
    # an image's result depends on its own pixels only (no batch statistics): change image 0, the rest stay
    x = batch()
    y = x.clone()
    y[0] = 1 - y[0]
    assert torch.equal(run(f"{name}@0.6", x)[1:], run(f"{name}@0.6", y)[1:])


@pytest.mark.parametrize("name", ["affine", "rcrop", "gamma", "contrast", "blur", "noise", "erase"])
def test_strength_zero_changes_nothing_that_matters(name):
    x = batch()
    assert torch.allclose(run(f"{name}@0", x), x, atol=1e-5)


def test_stronger_means_further():
    x = batch(n=64)
    gaps = [(run(f"affine@{m}", x) - x).abs().mean().item() for m in (0.1, 0.5, 1.0)]
    assert gaps[0] < gaps[1] < gaps[2]


def test_todays_policies_keep_todays_numbers():
    """crop and color without a strength are the fixed ops; at the strength that names today's ranges they are
    the same draws and the same pixels."""
    x = batch()
    assert torch.equal(run("crop@0.5", x), run("crop", x))  # 4 px at 28 px
    assert torch.equal(run("color@0.2", x), run("color", x))
    assert torch.equal(run("crop+color", x, strength=None), run("crop+color", x))
    assert not torch.equal(run("crop", x, strength=1.0), run("crop", x))  # aug_strength reaches ops without one


def test_strength_spelling_and_bad_values():
    assert parse_ops("affine@0.3+color") == (("affine", 0.3), ("color", None))
    for spec, says in (("affine@1.5", "must be a number in [0, 1]"), ("affine@x", "must be a number in [0, 1]"),
                       ("flip@0.3", "flip takes no strength"), ("swirl", "unknown augmentation 'swirl'")):
        with pytest.raises(SearchError, match=says.replace("[", r"\[").replace("]", r"\]")):
            parse_ops(spec)


def test_datasets_refuse_what_changes_their_labels():
    assert augment_limits(get_info("digits")) == Limits("none", 15.0)
    with pytest.raises(SearchError, match="augmentation flip can change the labels of digits"):
        TrainConfig(dataset="digits", augmentation="flip")
    with pytest.raises(SearchError, match=r"rotates up to 30 degrees; digits allows 15 \(affine@0.5 at most\)"):
        TrainConfig(dataset="digits", augmentation="affine@1.0")
    TrainConfig(dataset="digits", augmentation="affine@0.5+crop+trivial")  # small rotations keep a digit
    with pytest.raises(SearchError, match="symmetry is set for own data only"):
        TrainConfig(dataset="digits", symmetry="dihedral")


def test_trivial_draws_only_the_turns_a_dataset_allows():
    assert not {"flip", "rot90"} & set(trivial_ops(Limits("none", 15.0)))
    assert "flip" in trivial_ops(Limits("flip", 15.0)) and "rot90" not in trivial_ops(Limits("flip", 15.0))
    assert {"flip", "rot90", "rot180", "rot270"} <= set(trivial_ops(Limits()))
    # on a digit-like rule an image is never mirrored: a left-right asymmetric image keeps its heavy side
    x = torch.zeros(256, 1, 28, 28)
    x[:, :, :, :10] = 1.0
    out = run("trivial@1.0", x, limits=Limits("none", 15.0))
    assert (out[..., :14].sum(dim=(1, 2, 3)) > out[..., 14:].sum(dim=(1, 2, 3))).all()


# --- mixing --------------------------------------------------------------------------------------------------------

def test_beta_draws_have_beta_moments():
    from search.train.mixing import beta

    g = torch.Generator().manual_seed(0)
    for alpha in (0.4, 1.0, 2.0):
        draws = torch.stack([beta(alpha, g, torch.device("cpu")) for _ in range(4000)])
        assert ((draws >= 0) & (draws <= 1)).all()
        assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
        assert draws.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_the_mixed_loss_is_the_loss_on_the_mixed_soft_target(kind):
    from search.train.mixing import make_mixer, mixed_loss

    x = batch(n=16)
    y = torch.arange(16) % 4
    mixed, perm, lam = make_mixer(kind, 1.0, 1.0)(x, torch.Generator().manual_seed(3))
    assert 0 < lam.item() < 1 and not torch.equal(mixed, x)
    if kind == "cutmix":  # each pixel is its own image's or its partner's, and lam is the share kept
        own = (mixed == x).all(dim=1)
        assert ((mixed == x[perm]).all(dim=1) | own).all()
        assert own.float().mean().item() == pytest.approx(lam.item(), abs=1e-6)
    logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    soft = lam.float() * torch.nn.functional.one_hot(y, 4) + (1 - lam.float()) * torch.nn.functional.one_hot(y[perm], 4)
    assert mixed_loss(ce, logits, y, perm, lam) == pytest.approx(ce(logits, soft.float()).item(), rel=1e-6)
    # multi-label: BCE on smoothed targets is linear in the target too
    multi = (torch.rand(16, 3, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    bce = torch.nn.BCEWithLogitsLoss()
    smooth = lambda out, t: bce(out, t * 0.9 + 0.05)  # noqa: E731
    target = lam.float() * multi + (1 - lam.float()) * multi[perm]
    assert mixed_loss(smooth, logits[:, :3], multi, perm, lam) == pytest.approx(smooth(logits[:, :3], target).item(),
                                                                                   rel=1e-6)


def test_mixing_trains_only_and_prob_zero_changes_nothing(tmp_path):
    from search.train import engine
    from tests.support.data import write_medmnist_npz

    write_medmnist_npz(tmp_path / "bloodmnist.npz", channels=3, classes=4, counts=(64, 32, 16))
    common = dict(dataset="bloodmnist", data_dir=str(tmp_path), device="cpu", epochs=1, batch_size=16)
    plain = engine.fit(TrainConfig(**common))
    never = engine.fit(TrainConfig(**common, mix="mixup", mix_prob=0.0))
    assert plain.history[0]["train_loss"] == never.history[0]["train_loss"]  # lam = 1 is the batch as it was
    mixed = engine.fit(TrainConfig(**common, mix="cutmix", mix_alpha=0.4))
    assert mixed.history[0]["train_loss"] != plain.history[0]["train_loss"]
    # evaluation never mixes: the same weights give the same validation metrics with or without mixing
    other = engine.Trainer(TrainConfig(**common), mixed.trainer.data, torch.device("cpu"))
    other.model.load_state_dict(mixed.model.state_dict())
    assert other.evaluate(other.data.val) == pytest.approx(mixed.trainer.evaluate(mixed.trainer.data.val), nan_ok=True)
    with pytest.raises(SearchError, match="mix 'blend' is not known; valid: none, mixup, cutmix"):
        TrainConfig(**common, mix="blend")
