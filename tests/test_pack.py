"""Trial packs (search/train/pack.py): K runs trained as one fused model equal the same runs trained alone.

Where the arithmetic allows equality, the tests prove it: in float64 (the `float64` fixture makes torch's default
dtype float64, so models, inputs, losses and optimizer states are float64 on both paths). A fused layer sums each
member's products in another order than the member's own layer (oneDNN picks its kernels by the CPU: AVX2 and
AVX-512 machines differ), so the two paths may differ by reassociation noise: ~1e-16 relative a step in float64.
Even Adam, which turns noise in a near-zero gradient into a whole step when that noise exceeds its eps (1e-8), as
float32's ~1e-7 does, cannot amplify noise 1e-8 times smaller than its eps; a few steps on 32 images leave the
runs within 1e-12, and TOL = 1e-9 holds on any CPU. Any real difference moves the numbers by ~1e-3 at once: a
member trained on another member's batch, augmentation or dropout mask, a gradient summed into the wrong member,
or a wrong label (checked once: with Pack.inputs augmenting every member from the first member's generator, the
float64 simple_cnn_v2 case fails).

One float32 check stays, for the path runs take (test_fused_float32_is_close): SGD, whose update is linear in the
gradient, so float32's reassociation noise (~1e-7 relative an operation) stays of that order over a few steps;
F32_TOL = 1e-4 leaves a factor of ~100 on either side (noise below, a real difference above). It compares losses
and weights, not accuracies: a discrete metric on 16 images flips on noise.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import register_model, registry
from search.errors import SearchError
from search.train import checkpoint, engine
from search.train.config import TrainConfig
from search.train.fuse import _Dropout, _Linear
from search.train.pack import Pack, batched_loss, fit_pack, pack_key, unsupported
from tests.support.data import write_medmnist_npz

TOL = 1e-9
F32_TOL = 1e-4
KEYS = ("epoch", "train_loss", "val_acc", "val_auc", "val_loss", "lr")


@pytest.fixture
def float64():
    """torch's default dtype float64 for one test: models are built, and images scaled (engine.scaled), in it."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def organ(tmp_path):
    """A tiny one-channel, 4-class MedMNIST file: 32 training images (two batches), 16 for validation."""
    write_medmnist_npz(tmp_path / "octmnist.npz", channels=1, classes=4, counts=(32, 16, 8))
    return str(tmp_path)


def config(data_dir: str, **kw) -> TrainConfig:
    return TrainConfig(**{"dataset": "octmnist", "data_dir": data_dir, "device": "cpu", "epochs": 2,
                          "batch_size": 16, **kw})


def four(data_dir: str, **common) -> list[TrainConfig]:
    """Four members that differ in everything a pack lets differ."""
    return [config(data_dir, **common, lr=1e-3, seed=0),
            config(data_dir, **common, lr=3e-3, dropout=0.2, augmentation="flip", seed=1),
            config(data_dir, **common, lr=1e-3, weight_decay=1e-2, label_smoothing=0.1, dropout=0.0, seed=2),
            config(data_dir, **common, lr=5e-4, augmentation="flip+crop", schedule="cosine", warmup_epochs=0.5,
                   seed=3)]


def assert_same_history(packed: engine.FitResult, alone: engine.FitResult, tol: float = TOL) -> None:
    assert len(packed.history) == len(alone.history)
    for p, a in zip(packed.history, alone.history):
        assert set(p) == set(a)
        for key in KEYS:
            assert p[key] == pytest.approx(a[key], rel=tol, abs=tol, nan_ok=True), (key, p, a)


def assert_same_weights(a: nn.Module, b: nn.Module, tol: float = TOL) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.allclose(sa[key].double(), sb[key].double(), rtol=tol, atol=tol), key


# fused=True: the fused layers a GPU pack runs; False: the CPU's default, the members' own models side by side.
@pytest.mark.parametrize("architecture, epochs, fused", [("simple_cnn_v2", 2, True), ("simple_cnn_v2", 1, False),
                                                         ("alexnet", 1, True)])  # AlexNet: one epoch, for CPU time
def test_fused_equals_separate(organ, float64, architecture, epochs, fused):
    cfgs = four(organ, architecture=architecture, epochs=epochs)
    heard: list[list[int]] = [[] for _ in cfgs]
    packed = fit_pack(cfgs, on_epoch=[lambda e, m, h=h: h.append(e) for h in heard], fused=fused)
    for cfg, result, epochs_heard in zip(cfgs, packed, heard):
        alone = engine.fit(cfg)
        assert result.outcome == "completed" and epochs_heard == list(range(1, epochs + 1))
        assert_same_history(result, alone)
        assert result.best_epoch == alone.best_epoch and result.best == pytest.approx(alone.best, rel=TOL)
        # the returned model holds the best epoch's weights, as engine.fit's does, and is a plain unfused model
        assert_same_weights(result.model, alone.model)
        assert next(result.model.parameters()).dtype == torch.float64
        assert result.params == alone.params
        assert result.trainer.evaluate(result.trainer.data.val) == pytest.approx(
            alone.trainer.evaluate(alone.trainer.data.val), rel=TOL)


def test_resnet18_fuses_its_residual_blocks(tmp_path, float64):
    """Residual adds and strided 1x1 shortcuts; two members, one epoch (ResNet-18 is slow on a CPU, more so in
    float64). The strided grouped convolutions are summed in another order than the lone ones: float64 keeps that
    noise far below TOL."""
    write_medmnist_npz(tmp_path / "octmnist.npz", channels=1, classes=4, counts=(16, 8, 8))  # two batches of 8
    cfgs = [config(str(tmp_path), architecture="resnet18", optimizer="sgd", epochs=1, batch_size=8, seed=s, lr=lr,
                   momentum=mom, dropout=d)
            for s, lr, mom, d in ((0, 0.01, 0.9, 0.5), (1, 0.03, 0.0, 0.0))]
    for result, cfg in zip(fit_pack(cfgs, on_epoch=[None, None], fused=True), cfgs):
        alone = engine.fit(cfg)
        assert_same_history(result, alone)
        assert_same_weights(result.model, alone.model)


def test_fused_float32_is_close(organ):
    """The float32 path every run takes: fused and alone within F32_TOL (the module docstring says why SGD, and why
    losses and weights rather than accuracies)."""
    cfgs = [config(organ, optimizer="sgd", momentum=0.9, lr=0.05, seed=0),
            config(organ, optimizer="sgd", lr=0.02, dropout=0.2, augmentation="flip", label_smoothing=0.1, seed=1)]
    for result, cfg in zip(fit_pack(cfgs, on_epoch=[None, None], fused=True), cfgs):
        alone = engine.fit(cfg)
        assert len(result.history) == len(alone.history) == 2
        for p, a in zip(result.history, alone.history):
            for key in ("epoch", "train_loss", "val_loss", "lr"):
                assert p[key] == pytest.approx(a[key], rel=F32_TOL, abs=F32_TOL), (key, p, a)
        assert_same_weights(result.model, alone.model, tol=F32_TOL)
        assert next(result.model.parameters()).dtype == torch.float32


def test_members_leave_and_the_pack_really_shrinks(organ, float64):
    """A member stopped by its on_epoch and one whose loss blew up leave after epoch 1; the fused model then runs the
    one left, which goes on exactly as alone."""
    cfgs = [config(organ, optimizer="sgd", lr=0.05, seed=0),
            config(organ, optimizer="sgd", lr=0.01, seed=1),
            config(organ, optimizer="sgd", lr=1e300, momentum=0.0, seed=2)]  # float64's overflow
    hooks = [None, lambda epoch, metrics: epoch == 1, None]
    pack = Pack(cfgs, on_epoch=hooks, fused=True)
    assert pack.size == 3
    pack.epoch(1)
    assert pack.size == 1 and pack.live == pack.members[:1]
    # the fused model takes one member's channels now and gives one member's logits (in eval mode: a training-mode
    # pass would move the running statistics and draw dropout masks)
    x = torch.zeros(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert pack.fused.eval()(x).shape == (2, 4)
    assert pack.fused.features_0_0.members[0].weight.shape == (32, 1, 3, 3)
    pack.epoch(2)
    pack.close()
    kept, stopped, diverged = (m.result for m in pack.members)
    assert (kept.outcome, stopped.outcome, diverged.outcome) == ("completed", "stopped", "diverged")
    alone = [engine.fit(cfg, on_epoch=hook) for cfg, hook in zip(cfgs, hooks)]
    assert_same_history(kept, alone[0])
    assert_same_history(stopped, alone[1]) and len(stopped.history) == 1
    assert diverged.reason == alone[2].reason == "training diverged at epoch 1: the loss became nan"
    assert diverged.history == [] and diverged.best_epoch is None


def test_a_member_checkpoint_resumes_alone_exactly(organ, tmp_path, float64):
    cfgs = four(organ, epochs=3)[:2]
    path = tmp_path / "member.pt"
    fit_pack(cfgs, on_epoch=[lambda e, m: e == 2, None], checkpoints=[path, None], fused=True)
    state = checkpoint.load(path, cfgs[0].to_dict())
    assert state["epoch"] == 2
    uninterrupted = engine.fit(cfgs[0])
    resumed = engine.fit(cfgs[0], resume=state)
    assert resumed.resumed_at == 3
    assert_same_history(resumed, uninterrupted)
    assert_same_weights(resumed.model, uninterrupted.model)
    # resumed in a pack too, beside a member that is not: refused in one line
    with pytest.raises(SearchError, match=r"resume after the same epoch; got epochs 2, 0") as err:
        fit_pack(cfgs, on_epoch=[None, None], resumes=[state, None])
    assert "\n" not in str(err.value)
    again = fit_pack(cfgs[:1], on_epoch=[None], resumes=[checkpoint.load(path, cfgs[0].to_dict())])[0]
    assert_same_history(again, uninterrupted)


class _Concat(nn.Module):
    """Two branches joined along the channels: fusing it would mix the members."""

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(in_channels, 4, 3, padding=1), nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


@pytest.fixture
def concat_registered():
    """In the model registry for one test only: other tests check the registry's exact names."""
    register_model("pack_test_concat", reference="tests/test_pack.py")(lambda **kw: _Concat(**kw))
    yield
    registry._REGISTRY.pop("pack_test_concat")  # our own registry has no public removal; tests alone need one
    registry.MODEL_REFERENCES.pop("pack_test_concat")


def test_what_does_not_fuse_says_why(organ, concat_registered):
    assert unsupported(config(organ)) is None
    assert unsupported(config(organ, architecture="resnet18")) is None
    assert unsupported(config(organ, architecture="pack_test_concat")) == (
        "pack_test_concat does not fuse into a pack yet: its operation cat")
    assert "pretrained resnet18 does not fuse" in unsupported(config(organ, architecture="resnet18", pretrained=True))
    assert unsupported(config(organ, compile=True)) is None  # on the CPU, where a lone run ignores it too
    with pytest.raises(SearchError, match="^pack_test_concat does not fuse"):
        fit_pack([config(organ, architecture="pack_test_concat")], on_epoch=[None])


def test_members_must_share_the_pack_key(organ):
    a = config(organ)
    assert pack_key(a) == pack_key(a.replace(lr=0.1, seed=4, dropout=0.1, augmentation="flip", schedule="cosine"))
    assert pack_key(a) != pack_key(a.replace(batch_size=32))
    with pytest.raises(SearchError) as err:
        fit_pack([a, a.replace(seed=1), a.replace(batch_size=32)], on_epoch=[None] * 3)
    assert str(err.value) == ("pack member 3 has batch_size 32 but member 1 has 16; the members of a pack agree on "
                              "dataset, data_dir, size, architecture, pretrained, batch_size, epochs, optimizer, "
                              "precision, compile, device, mix, val_fraction, test_fraction, split_seed, "
                              "skip_bad_images")


def test_the_cuda_paths_keep_each_member_s_loss_and_dropout_rate():
    """On CUDA a pack computes its members' linear layers and losses in one batch and draws their dropout masks in
    one call (tested here on the CPU, where packs use the members' own, exact paths)."""
    torch.manual_seed(0)
    out, smoothing = torch.randn(64, 3, 5), torch.tensor([0.0, 0.1, 0.3])
    labels = torch.randint(0, 5, (3, 64))
    want = torch.stack([nn.CrossEntropyLoss(label_smoothing=float(s))(out[:, k], labels[k])
                        for k, s in enumerate(smoothing)])
    assert torch.allclose(batched_loss(out, labels, smoothing, multi_label=False), want, rtol=1e-6, atol=1e-6)
    targets = torch.randint(0, 2, (3, 64, 5)).float()
    want = torch.stack([nn.BCEWithLogitsLoss()(out[:, k], targets[k] * (1 - s) + 0.5 * s)
                        for k, s in enumerate(smoothing)])
    assert torch.allclose(batched_loss(out, targets, smoothing, multi_label=True), want, rtol=1e-6, atol=1e-6)

    linears = [nn.Linear(6, 3), nn.Linear(6, 3, bias=True)]
    x = torch.randn(8, 12)
    fused = _Linear(linears)
    assert torch.allclose(fused.batched(x), fused(x), atol=1e-6)  # the batched matmul against one per member
    assert torch.allclose(fused(x)[:, 3:], linears[1](x[:, 6:]))

    rates = [0.0, 0.25, 0.5]
    drop = _Dropout([nn.Dropout(p) for p in rates], [torch.Generator().manual_seed(1)])
    x = torch.ones(64, 3 * 4, 8, 8).contiguous(memory_format=torch.channels_last)
    y = drop.shared(x)
    for k, p in enumerate(rates):
        part = y[:, 4 * k:4 * (k + 1)]
        assert (part == 0).float().mean().item() == pytest.approx(p, abs=0.02)
        assert torch.allclose(part[part != 0], torch.tensor(1 / (1 - p)))
