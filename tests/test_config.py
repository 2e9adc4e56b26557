import pytest
import yaml

from search.errors import SearchError
from search.train import config
from search.train.config import KEYS, TrainConfig


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_origin_report():
    cfg = TrainConfig(dataset="digits")
    assert (cfg.architecture, cfg.optimizer, cfg.lr, cfg.batch_size) == ("simple_cnn_v2", "adam", 1e-3, 128)


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = TrainConfig(dataset="pathmnist", architecture="resnet18", lr=3e-4, optimizer="sgd", momentum=0.8,
                      augmentation="dihedral+color", schedule="cosine", warmup_epochs=1, epochs=5)
    config.dump(cfg, tmp_path / "c.yaml", notes={"study": "x", "trial": 3})
    assert config.load(tmp_path / "c.yaml") == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["search"] == {"study": "x", "trial": 3}
    assert set(yaml.safe_load((tmp_path / "c.yaml").read_text())) == set(KEYS) | {"search"}


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    # PyYAML reads 1e-3 as a string; users write it that way.
    assert config.load(write(tmp_path, "dataset: digits\nlr: 1e-3\n")).lr == pytest.approx(1e-3)


def test_overrides_win_and_none_is_ignored(tmp_path):
    cfg = config.load(write(tmp_path, "dataset: digits\nepochs: 4\n"), epochs=2, device=None)
    assert cfg.epochs == 2 and cfg.device == "auto"


@pytest.mark.parametrize("text, words", [
    ("dataset: digits\nlearning_rate: 0.1\n", ["unknown key 'learning_rate'", "lr"]),
    ("architecture: resnet18\n", ["'dataset' is required"]),
    ("dataset: cifar\n", ["dataset 'cifar'", "pathmnist", "mnist", "digits"]),
    ("dataset: digits\narchitecture: vgg\n", ["architecture 'vgg'", "simple_cnn_v2", "xception"]),
    ("dataset: digits\nlr: -0.1\n", ["lr must be greater than 0", "-0.1"]),
    ("dataset: digits\nepochs: -3\n", ["epochs must be at least 1", "-3"]),
    ("dataset: digits\nepochs: 2.5\n", ["epochs must be an integer"]),
    ("dataset: digits\ndropout: 1.5\n", ["dropout must be in [0, 1)"]),
    ("dataset: digits\noptimizer: lion\n", ["optimizer 'lion'", "adamw"]),
    ("dataset: digits\nschedule: step\n", ["schedule 'step'", "onecycle"]),
    ("dataset: digits\naugmentation: rotate\n", ["rotate", "dihedral"]),
    ("dataset: digits\ndevice: tpu\n", ["device 'tpu'"]),
    ("dataset: digits\nlr: fast\n", ["lr must be a finite number", "'fast'"]),
    ("- a\n- b\n", ["expected a mapping"]),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path, text, words):
    with pytest.raises(SearchError) as err:
        config.load(write(tmp_path, text))
    msg = err.value.format_message()
    assert "\n" not in msg
    for w in words:
        assert w in msg
    assert err.value.exit_code == 2


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(SearchError, match=r"c\.yaml:.*line 3"):
        config.load(write(tmp_path, "dataset: digits\nlr: 0.1\nepochs: 3: 4\n"))


def test_missing_file(tmp_path):
    with pytest.raises(SearchError, match="file not found"):
        config.load(tmp_path / "nope.yaml")


def test_replace_validates():
    with pytest.raises(SearchError, match="batch_size"):
        TrainConfig(dataset="digits").replace(batch_size=1)
