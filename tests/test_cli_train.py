"""`search train`: the happy path as a real process, and every bad input as one line with exit status 2."""
import json
import re
import subprocess

import pytest
import torch
from click.testing import CliRunner

from search.cli import main
from search.train import config
from tests.support.cli import cli_env, search_cmd
from tests.support.data import write_medmnist_npz


@pytest.mark.e2e
def test_train_writes_metrics_model_and_config(tmp_path):
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("dataset: digits\nepochs: 3\nbatch_size: 64\naugmentation: crop\n")
    out = tmp_path / "run"
    proc = subprocess.run(search_cmd() + ["train", str(cfg), "--out", str(out), "--epochs", "2", "--device", "cpu"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("digits simple_cnn_v2: test_acc") and str(out) in summary
    m = json.loads((out / "metrics.json").read_text())
    for key in ("val_acc", "val_auc", "test_acc", "test_auc", "best_epoch", "epochs", "seconds", "params"):
        assert key in m
    assert m["epochs"] == 2 and 1 <= m["best_epoch"] <= 2 and m["test_acc"] > 0.5 and m["params"] > 100_000
    assert len(m["history"]) == 2
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["config"]["epochs"] == 2 and saved["config"]["augmentation"] == "crop"
    assert config.load(out / "config.yaml") == config.from_dict(saved["config"])
    # Into a pipe: one plain line per epoch, no progress-bar frames (no carriage return, no escape sequence)
    epochs = re.findall(r"^epoch (\d)/2: loss \S+ val_acc \S+ val_auc \S+ \([\d,]+ images/s\)$", proc.stderr, re.M)
    assert epochs == ["1", "2"], proc.stderr
    assert not re.search(r"[\r\x1b\x08]", proc.stdout + proc.stderr)
    # a second run into the same folder would overwrite a finished run: refused
    again = subprocess.run(search_cmd() + ["train", str(cfg), "--out", str(out)], capture_output=True, text=True,
                           env=cli_env(), timeout=120)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert "Traceback" not in again.stderr


def bad(tmp_path, text: str | None, *args: str) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(out), *args])
    assert not out.exists(), "a failed run must write nothing"
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("text, args, words", [
    (None, [], "file not found"),
    ("dataset: digits\nlr: [0.1\n  x: 1\n", [], "YAML error"),
    ("dataset: digits\nbatchsize: 64\n", [], "unknown key 'batchsize'"),
    ("dataset: cifar10\n", [], "valid: "),
    ("dataset: digits\narchitecture: vgg16\n", [], "architecture 'vgg16' is not known; valid: alexnet"),
    ("dataset: digits\nlr: -1\n", [], "lr must be greater than 0"),
    ("dataset: digits\nepochs: -2\n", [], "epochs must be at least 1"),
    ("dataset: digits\nbatch_size: 4096\n", ["--device", "cpu"], "batch_size 4096 is larger than the 1259"),
    ("dataset: pathmnist\n", ["--device", "cpu"], "place pathmnist.npz"),
    ("dataset: digits\n", ["--device", "cuda"], "no CUDA GPU is visible"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, text, args, words):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, output = bad(tmp_path, text, *args)
    assert code == 2, output
    assert len(output.splitlines()) == 1 and output.startswith("Error: ") and words in output, output


def test_yaml_error_names_the_line(tmp_path):
    code, output = bad(tmp_path, "dataset: digits\nepochs: 2\nlr: 0.1: 2\n")
    assert code == 2 and "line 3" in output


def test_corrupt_data_file_is_one_line(tmp_path):
    npz = write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    npz.write_bytes(npz.read_bytes()[:5000])
    code, output = bad(tmp_path, f"dataset: pathmnist\ndata_dir: {tmp_path}\n", "--device", "cpu")
    assert code == 2 and "pathmnist.npz is corrupt or truncated" in output and len(output.splitlines()) == 1


@pytest.mark.e2e
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nlr: -1\n")
    proc = subprocess.run(search_cmd() + ["train", str(tmp_path / "c.yaml")], capture_output=True, text=True,
                          env=cli_env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "Error: lr must be greater than 0, got -1.0"
    assert not (tmp_path / "runs").exists()
