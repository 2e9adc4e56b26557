"""`search train --seeds` with its seed ensemble, a run's test probabilities on disk, and `search predict` on an .npz,
a folder of PNGs and one image: through the real command line, on a tiny generated PathMNIST file."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from search.cli import main
from search.train.data import class_names
from tests.support.cli import run
from tests.support.data import write_medmnist_npz

pytestmark = pytest.mark.e2e  # the real command line: a real `search train`, `search predict` in and out of process

CONFIG = "dataset: pathmnist\ndata_dir: .\narchitecture: simple_cnn_v1\nepochs: 2\nbatch_size: 32\nlr: 0.003\n"
NAMES = class_names("pathmnist", 9)  # MedMNIST's INFO: adipose, background, ...


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Two seeds of a tiny PathMNIST run (3 channels, 9 classes; 120 / 40 / 40 images)."""
    root = tmp_path_factory.mktemp("predict")
    write_medmnist_npz(root / "pathmnist.npz", channels=3, classes=9)
    (root / "c.yaml").write_text(CONFIG)
    proc = run(["train", "c.yaml", "--seeds", "2", "--out", "seeds", "--device", "cpu"], root)
    assert proc.returncode == 0, proc.stderr
    (root / "train.txt").write_text(proc.stdout)
    return root


def predict(root: Path, *args: str) -> tuple[int, str]:
    """`search predict ARGS` in this process (the real command; no new interpreter to start), in ``root``."""
    here = Path.cwd()
    try:
        os.chdir(root)
        result = CliRunner().invoke(main, ["predict", *args])
    finally:
        os.chdir(here)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def probs(table: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f"p_{n}"]) for n in NAMES] for r in table])


def test_a_runs_test_predictions_keep_the_class_probabilities(root):
    table = rows(root / "seeds" / "seed-0" / "test_predictions.csv")
    m = json.loads((root / "seeds" / "seed-0" / "metrics.json").read_text())
    assert list(table[0]) == ["label", "prediction", *(f"p_{n}" for n in NAMES)]
    p = probs(table)
    assert len(table) == 40 and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert [int(r["prediction"]) for r in table] == p.argmax(axis=1).tolist()
    assert np.mean([r["label"] == r["prediction"] for r in table]) == pytest.approx(m["test_acc"])


def test_train_seeds_reports_the_seed_ensemble_beside_the_mean(root):
    summary = json.loads((root / "seeds" / "summary.json").read_text())
    mean = np.mean([probs(rows(root / "seeds" / f"seed-{s}" / "test_predictions.csv")) for s in (0, 1)], axis=0)
    labels = [int(r["label"]) for r in rows(root / "seeds" / "seed-0" / "test_predictions.csv")]
    e = summary["ensemble"]
    assert e["members"] == 2 and e["test_acc"] == pytest.approx(np.mean(mean.argmax(axis=1) == labels))
    assert 0.5 <= e["test_auc"] <= 1
    last = (root / "train.txt").read_text().strip().splitlines()[-1]
    assert (f"(mean ± sample sd); seed ensemble (mean of the 2 runs' probabilities): test_acc {e['test_acc']:.4f} "
            f"test_auc {e['test_auc']:.4f} -> seeds/summary.json") in last, last


def test_predict_on_an_npz_split_gives_the_runs_own_probabilities(root):
    proc = run(["predict", "seeds/seed-0", "pathmnist.npz", "-o", "test.csv", "--device", "cpu"], root)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((root / "seeds" / "seed-0" / "metrics.json").read_text())
    acc = f"accuracy on its labels {m['test_acc']:.4f}"
    assert proc.stdout.strip() == f"40 images predicted by one model; {acc} -> test.csv"
    table = rows(root / "test.csv")
    assert list(table[0])[:4] == ["image", "label", "prediction", "predicted_label"]
    p = probs(table)
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert [r["predicted_label"] for r in table] == [NAMES[int(r["prediction"])] for r in table]
    # the same preprocessing as the run's own test pass: the same probabilities, image by image
    assert np.allclose(p, probs(rows(root / "seeds" / "seed-0" / "test_predictions.csv")), atol=1e-5)
    code, output = predict(root, "seeds/seed-0", "pathmnist.npz", "--split", "val", "-o", "val.csv")
    assert code == 0 and len(rows(root / "val.csv")) == 40, output


def test_predict_on_a_folder_of_pngs_and_on_one_image(root):
    from PIL import Image

    images = np.load(root / "pathmnist.npz")["test_images"][:3]
    (root / "pngs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / "pngs" / f"img{i}.png")
    code, output = predict(root, "seeds/seed-0", "pngs", "-o", "pngs.csv", "--device", "cpu")
    assert code == 0 and output.strip() == "3 images predicted by one model -> pngs.csv", output
    table = rows(root / "pngs.csv")
    assert [r["image"] for r in table] == ["img0.png", "img1.png", "img2.png"] and "label" not in table[0]
    own = probs(rows(root / "seeds" / "seed-0" / "test_predictions.csv"))
    assert np.allclose(probs(table), own[:3], atol=1e-5)  # PNG is lossless: the run's own test probabilities
    assert {r["predicted_label"] for r in table} <= set(NAMES)
    code, output = predict(root, "seeds/seed-0", "pngs/img1.png", "-o", "one.csv")
    assert code == 0, output
    assert np.allclose(probs(rows(root / "one.csv")), probs(table)[1:2], atol=1e-5)


def test_the_seed_ensemble_predicts_the_mean_of_its_members(root):
    code, output = predict(root, "seeds", "pathmnist.npz", "-o", "ens.csv", "--device", "cpu")
    assert code == 0 and output.startswith("40 images predicted by an ensemble of 2; "), output
    members = [probs(rows(root / "seeds" / f"seed-{s}" / "test_predictions.csv")) for s in (0, 1)]
    assert np.allclose(probs(rows(root / "ens.csv")), np.mean(members, axis=0), atol=1e-5)


def _grey_npz(path: Path) -> None:
    np.savez(path, test_images=np.zeros((4, 28, 28), np.uint8), test_labels=np.zeros((4, 1), np.uint8))


@pytest.mark.parametrize("make, source, message", [
    (lambda r: _grey_npz(r / "grey.npz"), "grey.npz",
     "grey.npz: test_images are uint8 (4, 28, 28); the model takes 3-channel 28x28 images (pathmnist)"),
    (lambda r: write_medmnist_npz(r / "big.npz", channels=3, classes=9, counts=(2, 2, 2), size=64), "big.npz",
     "test_images are uint8 (2, 64, 64, 3); the model takes 3-channel 28x28 images"),
    (lambda r: (r / "broken.npz").write_bytes(b"PK\x03\x04 not really"), "broken.npz",
     "broken.npz cannot be read as a .npz file"),
    (lambda r: (r / "nothing").mkdir(), "nothing", "nothing holds no PNG or JPEG image"),
    (lambda r: (r / "bad.png").write_bytes(b"\x89PNG but no more"), "bad.png", "bad.png cannot be read as an image"),
    (None, "missing.npz", "missing.npz not found"),
])
def test_a_mismatched_input_is_one_line_and_writes_nothing(root, make, source, message):
    if make is not None:
        make(root)
    code, output = predict(root, "seeds/seed-0", source, "-o", "bad.csv")
    assert code == 2 and output.count("\n") == 1 and output.startswith("Error: ") and message in output, output
    assert not (root / "bad.csv").exists() and not list(root.glob(".bad.csv*"))


def test_a_grey_png_for_a_colour_model_is_one_line_in_a_real_process(root, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "grey.png")
    proc = run(["predict", str(root / "seeds" / "seed-0"), str(tmp_path / "grey.png"), "-o", "bad.csv"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "grey.png has 1 channel (mode L); the model takes 3-channel 28x28 images (pathmnist)" in proc.stderr


def test_onnx_export_matches_the_runs_probabilities(root):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the dev extra installs it)")
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is not installed (the onnx and dev extras install it)")
    code, output = predict(root, "seeds/seed-0", "-", "--onnx", "model.onnx")
    assert code == 0 and "model.onnx" in output, output
    saved = torch.load(root / "seeds" / "seed-0" / "model.pt", weights_only=True)
    images = np.load(root / "pathmnist.npz")["test_images"].transpose(0, 3, 1, 2) / 255.0
    x = ((images - np.array(saved["mean"])[None, :, None, None]) / np.array(saved["std"])[None, :, None, None])
    session = ort.InferenceSession(str(root / "model.onnx"))
    meta = session.get_modelmeta().custom_metadata_map  # what a user needs to feed it, in the file itself
    assert json.loads(meta["mean"]) == pytest.approx(saved["mean"]) and json.loads(meta["classes"]) == NAMES
    (logits,) = session.run(["logits"], {"images": x.astype(np.float32)})
    p = torch.from_numpy(logits).softmax(dim=1).numpy()
    assert np.allclose(p, probs(rows(root / "seeds" / "seed-0" / "test_predictions.csv")), atol=1e-4)
    code, output = predict(root, "seeds", "-", "--onnx", "two.onnx")
    assert code == 2 and "--onnx exports a single run" in output, output
