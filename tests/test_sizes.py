"""Image sizes 28, 64, 128, 224 (MedMNIST+): files in the true layout, the data path, the models, the config."""
from __future__ import annotations

import optuna
import pytest
import torch

from models import SIZES, ModelError, build_model
from search.errors import SearchError
from search.hpo.studies import load_study, suggest_config
from search.train import data, engine
from search.train.config import TrainConfig
from tests.support.data import write_medmnist_npz

LARGER = [s for s in SIZES if s != 28]


@pytest.mark.parametrize("size", LARGER)
def test_medmnist_plus_file_of_each_size_loads_through_medmnist(tmp_path, size):
    # MedMNIST+ names: pathmnist.npz (28 px), pathmnist_64.npz, pathmnist_128.npz, pathmnist_224.npz
    write_medmnist_npz(tmp_path / f"pathmnist_{size}.npz", channels=3, classes=9, counts=(12, 6, 6), size=size)
    d = data.load("pathmnist", str(tmp_path), torch.device("cpu"), size)
    assert d.train.images.shape == (12, 3, size, size) and d.train.images.dtype == torch.uint8
    assert d.val.images.shape == (6, 3, size, size) and d.test.labels.shape == (6,)
    assert data.load("pathmnist", str(tmp_path), torch.device("cpu"), size) is d  # cached per size


def test_grey_flag_at_64_and_each_size_has_its_own_file(tmp_path):
    write_medmnist_npz(tmp_path / "chestmnist_64.npz", channels=1, classes=14, counts=(8, 4, 4), multi_label=True,
                       size=64)
    d = data.load("chestmnist", str(tmp_path), torch.device("cpu"), 64)
    assert d.train.images.shape == (8, 1, 64, 64)
    # the 28-px file is another file: without it, size 28 is missing (and offline the error says which file)
    with pytest.raises(SearchError, match="chestmnist.npz"):
        data.prepare("chestmnist", str(tmp_path / "empty"), size=28)


def test_a_file_of_the_wrong_size_is_a_clear_error(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist_64.npz", channels=3, classes=9, counts=(8, 4, 4), size=28)
    with pytest.raises(SearchError, match=r"expected uint8 \(N, 64, 64, 3\)"):
        data.prepare("pathmnist", str(tmp_path), size=64)


def test_missing_64_px_file_offline_names_the_file_and_its_md5(tmp_path):
    root = tmp_path / "not-yet"
    with pytest.raises(SearchError) as err:
        data.prepare("pathmnist", str(root), size=64)
    msg = err.value.format_message()
    assert "\n" not in msg and "pathmnist_64.npz" in msg and "55aa9c1e0525abe5a6b9d8343a507616" in msg
    assert not root.exists()


@pytest.mark.parametrize("bad, fragment", [
    ({"size": 32}, "size 32 does not exist for pathmnist; valid: 28, 64, 128, 224"),
    ({"size": 64, "dataset": "mnist"}, "size 64 does not exist for mnist; valid: 28"),
    ({"size": 224, "dataset": "digits"}, "does not exist for digits"),
    ({"precision": "fp8"}, "precision 'fp8' is not known; valid: auto, bf16, fp16, fp32"),
    ({"compile": "yes"}, "compile must be true or false"),
])
def test_bad_size_precision_compile_are_one_line(bad, fragment):
    with pytest.raises(SearchError, match=fragment) as err:
        TrainConfig(**{"dataset": "pathmnist", **bad})
    assert "\n" not in err.value.format_message()


@pytest.mark.parametrize("name", ["simple_cnn_v1", "simple_cnn_v2", "alexnet", "resnet18", "resnet50", "xception"])
@pytest.mark.parametrize("size", LARGER)
def test_every_model_takes_every_size(name, size):
    opts = {"middle_repeats": 1} if name == "xception" else {}
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=9, size=size, **opts).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 9) and torch.isfinite(out).all()


def test_small_cnns_keep_their_layers_and_parameters_at_every_size():
    for name in ("simple_cnn_v1", "simple_cnn_v2", "alexnet"):
        counts = {s: sum(p.numel() for p in build_model(name, in_channels=3, num_classes=9, size=s).parameters())
                  for s in SIZES}
        assert len(set(counts.values())) == 1, (name, counts)


def test_resnets_use_the_imagenet_stem_above_28_px():
    small = build_model("resnet18", in_channels=3, num_classes=9, size=28)
    large = build_model("resnet18", in_channels=3, num_classes=9, size=64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, torch.nn.MaxPool2d)


def test_bad_size_for_build_model_is_one_line():
    with pytest.raises(ModelError, match="size must be one of"):
        build_model("simple_cnn_v2", in_channels=3, num_classes=9, size=100)


def test_engine_trains_at_64_px_and_records_size_and_precision(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist_64.npz", channels=3, classes=9, counts=(64, 32, 32), size=64)
    cfg = TrainConfig(dataset="pathmnist", data_dir=str(tmp_path), size=64, epochs=1, batch_size=32, device="cpu",
                      augmentation="dihedral+crop+color")
    m = engine.train(cfg, tmp_path / "run", progress=False)
    assert m["size"] == 64 and m["precision"] == "fp32" and m["compiled"] is False
    assert 0 <= m["test_acc"] <= 1


def test_a_study_may_search_the_size(tmp_path):
    path = tmp_path / "sized.yaml"
    path.write_text("name: sized\ndataset: pathmnist\nepochs: 1\ntrials: 2\n"
                    "space:\n  size: {type: categorical, choices: [28, 64]}\n"
                    "  precision: {type: categorical, choices: [auto, fp32]}\n"
                    "fixed:\n  compile: false\n")
    spec = load_study(str(path))
    assert spec.sizes() == [28, 64]
    trial = optuna.create_study().ask()
    cfg = suggest_config(spec, trial)
    assert cfg.size in (28, 64) and cfg.precision in ("auto", "fp32")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("name: fixed\ndataset: pathmnist\nepochs: 1\ntrials: 2\nfixed:\n  size: 128\n")
    assert load_study(str(fixed)).sizes() == [128]


def test_a_study_with_an_impossible_size_fails_to_load(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndataset: mnist\nepochs: 1\ntrials: 2\n"
                    "space:\n  size: {type: categorical, choices: [28, 64]}\n")
    with pytest.raises(SearchError, match="size 64 does not exist for mnist"):
        load_study(str(path))
