"""The model registry and architectures: shapes, gradients, structure, parameter counts, errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18 as tv_resnet18

from models import MODEL_REFERENCES, build_model, list_models, pretrained_models
from models import ModelError as SearchError
from models.resnet import ImageNetInput, checkpoint_path

ALL = [
    "alexnet", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "simple_cnn_v1", "simple_cnn_v2", "xception",
]
# The deepest ResNets run at batch 2 to keep the file fast on two CPU cores.
DEEP = {"resnet101", "resnet152"}


def _build(name: str, *, in_channels: int, num_classes: int, **kwargs: object) -> nn.Module:
    if name == "xception":
        kwargs.setdefault("middle_repeats", 1)  # the 8-block default is tested for size, not trained here
    return build_model(name, in_channels=in_channels, num_classes=num_classes, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_names_and_references() -> None:
    assert list_models() == ALL
    assert sorted(MODEL_REFERENCES) == ALL
    assert all(MODEL_REFERENCES[name].strip() for name in ALL)
    assert pretrained_models() == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]


def test_the_table_of_shipped_names_is_what_the_modules_register() -> None:
    """registry.SHIPPED names each architecture before its module (and torch) is imported: it must say where
    each one registers itself, and name them all."""
    from models import registry

    registry.load()
    shipped = {name: entry.builder.__module__ for name, entry in registry._REGISTRY.items()
               if entry.builder.__module__.startswith("models.")}
    assert shipped == {name: f"models.{module}" for name, module in registry.SHIPPED.items()}


@pytest.mark.e2e  # a fresh interpreter: a process
def test_checking_a_config_or_a_study_loads_no_torch() -> None:
    """What `search start` does before its workers start (check the study file's every value, plan the devices
    on a machine without a GPU, check the data) and what `search export` does: no torch (3 s on two cores)."""
    code = ("import sys; from search.hpo.studies import load_study; "
            "from search.devices import placements; from search.hpo.supervisor import prepare_data; "
            "from search.train.config import TrainConfig; "
            "spec = load_study('digits'); placements(None, 2); prepare_data(spec); "
            "TrainConfig(dataset='digits', architecture='resnet50', augmentation='trivial+color'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# The deep ResNets share resnet18/50's code, so they run once, in RGB, to keep the file fast.
FORWARD_CASES = [(name, c) for name in ALL for c in (1, 3) if not (name in DEEP and c == 1)]


@pytest.mark.parametrize(("name", "in_channels"), FORWARD_CASES)
def test_forward_backward(name: str, in_channels: int) -> None:
    batch = 2 if name in DEEP else 4
    model = _build(name, in_channels=in_channels, num_classes=7).train()
    x = torch.randn(batch, in_channels, 28, 28)
    logits = model(x)
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()

    F.cross_entropy(logits, torch.arange(batch) % 7).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", [n for n in ALL if n not in DEEP])  # the deep ResNets share resnet50's code
def test_eval_is_deterministic(name: str) -> None:
    model = _build(name, in_channels=3, num_classes=7).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_dropout_is_active_in_train_mode_only() -> None:
    # Guards the eval test above: it would pass trivially if dropout were never applied.
    model = build_model("simple_cnn_v1", in_channels=1, num_classes=7, dropout=0.5).train()
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(model(x), model(x))


def test_simple_cnn_v1_structure() -> None:
    model = build_model("simple_cnn_v1", in_channels=1, num_classes=10, dropout=0.0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 7 * 7, 10)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
    ]
    assert sum(isinstance(m, nn.LeakyReLU) for m in model.modules()) == 2
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.0]


def test_simple_cnn_v2_structure_and_dropout_scaling() -> None:
    model = build_model("simple_cnn_v2", in_channels=3, num_classes=9, dropout=0.4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3)), (128, (3, 3))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128 * 3 * 3, 256), (256, 9)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 1

    block_p = [m.p for m in model.features.modules() if isinstance(m, nn.Dropout)]
    head_p = [m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)]
    assert block_p == [pytest.approx(0.2)] * 3
    assert head_p == [pytest.approx(0.4)]


def test_simple_cnn_v2_default_dropout_is_the_reports() -> None:
    model = build_model("simple_cnn_v2", in_channels=1, num_classes=10)
    assert sorted(m.p for m in model.modules() if isinstance(m, nn.Dropout)) == [0.25, 0.25, 0.25, 0.5]


def test_alexnet_hidden_width_and_final_map() -> None:
    model = build_model("alexnet", in_channels=3, num_classes=9, hidden=256)
    assert model.features(torch.zeros(1, 3, 28, 28)).shape == (1, 256, 4, 4)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 256), (256, 256), (256, 9)]
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [64, 192, 384, 256, 256]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_medmnist_stem(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=9, dropout=0.3)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    dropout, linear = model.fc
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.3
    assert linear.out_features == 9


def test_resnet18_param_count() -> None:
    count = n_params(build_model("resnet18", in_channels=3, num_classes=10))
    assert count == pytest.approx(11.17e6, rel=0.01)


def test_xception_param_count_matches_paper() -> None:
    count = n_params(build_model("xception", in_channels=3, num_classes=1000))
    assert count == pytest.approx(22.9e6, rel=0.05)


def test_xception_final_map_is_at_least_2x2() -> None:
    model = build_model("xception", in_channels=1, num_classes=2, middle_repeats=0)
    feats = model.exit(model.middle(model.entry(torch.zeros(1, 1, 28, 28))))
    assert feats.shape[1] == 2048
    assert feats.shape[2] >= 2 and feats.shape[3] >= 2


def test_xception_middle_repeats() -> None:
    one = build_model("xception", in_channels=3, num_classes=9, middle_repeats=1)
    three = build_model("xception", in_channels=3, num_classes=9, middle_repeats=3)
    assert len(one.middle) == 1 and len(three.middle) == 3
    # Each middle block: three separable convs of 728 (depthwise 3x3, pointwise 1x1, two BatchNorms).
    per_block = 3 * (728 * 9 + 728 * 728 + 2 * 728 + 2 * 728)
    assert n_params(three) - n_params(one) == 2 * per_block


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(SearchError) as info:
        build_model("foo", in_channels=1, num_classes=10)
    message = info.value.format_message()
    assert "'foo'" in message
    assert ", ".join(ALL) in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"middle_repeats": 2}, "middle_repeats"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": True}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 2.0}, "in_channels"),
    ],
)
def test_bad_arguments_raise_search_error(kwargs: dict[str, object], fragment: str) -> None:
    args: dict[str, object] = {"in_channels": 3, "num_classes": 9, **kwargs}
    with pytest.raises(SearchError, match=fragment):
        build_model("resnet18", **args)


def test_bad_architecture_option_values() -> None:
    with pytest.raises(SearchError, match="middle_repeats"):
        build_model("xception", in_channels=3, num_classes=9, middle_repeats=-1)
    with pytest.raises(SearchError, match="hidden"):
        build_model("alexnet", in_channels=3, num_classes=9, hidden=0)


def test_pretrained_unsupported_architecture() -> None:
    with pytest.raises(SearchError) as info:
        build_model("simple_cnn_v2", in_channels=3, num_classes=9, pretrained=True)
    assert "resnet18" in info.value.format_message()


def _use_empty_torch_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # get_dir() honours TORCH_HOME only while nobody has called torch.hub.set_dir; check before relying on it.
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_pretrained_missing_weights_names_the_cache_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    expected = _use_empty_torch_home(monkeypatch, tmp_path)
    assert checkpoint_path(ResNet18_Weights.IMAGENET1K_V1) == expected
    with pytest.raises(SearchError) as info:
        build_model("resnet18", in_channels=3, num_classes=9, pretrained=True)
    message = info.value.format_message()
    assert str(expected) in message
    assert "pretrained: false" in message
    assert "\n" not in message
    assert not expected.exists()  # failed fast: no download attempt left a file behind


def test_pretrained_loads_cached_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Stand-in checkpoint with the real file name: the loader only reads the cache, so no network is needed.
    path = _use_empty_torch_home(monkeypatch, tmp_path)
    path.parent.mkdir(parents=True)
    reference = tv_resnet18(weights=None).state_dict()
    torch.save(reference, path)

    model = build_model("resnet18", in_channels=1, num_classes=7, dropout=0.2, pretrained=True)
    assert isinstance(model, ImageNetInput)
    assert model.net.conv1.kernel_size == (7, 7)  # ImageNet stem kept
    assert not isinstance(model.net.maxpool, nn.Identity)
    assert torch.equal(model.net.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.net.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert model.net.fc[0].p == 0.2 and model.net.fc[1].out_features == 7

    model.eval()
    grey = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        logits = model(grey)
        # Grey input must equal the same image repeated over RGB, resized to 224 for the ImageNet stem.
        rgb = F.interpolate(grey.repeat(1, 3, 1, 1), size=224, mode="bilinear", align_corners=False)
        assert torch.allclose(logits, model.net(rgb))
    assert logits.shape == (2, 7)


def test_pretrained_corrupt_cache_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _use_empty_torch_home(monkeypatch, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SearchError, match="cannot load"):
        build_model("resnet18", in_channels=3, num_classes=9, pretrained=True)


def test_cpu_dropout_keeps_torch_semantics():
    from models.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01  # each element kept with probability 1 - p
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))  # survivors scaled by 1 / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the same mask and scale
    drop.eval()
    assert torch.equal(drop(x), x)
