"""A lab's own images (search/train/owndata.py, imagecache.py): folder, CSV and .npz sources, splits, the cache, and
every bad input as one line."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from search.errors import SearchError
from search.train import data, imagecache, owndata, owninfo
from search.train.config import TrainConfig
from search.train.imagecache import CACHE_FOLDER
from tests.support.data import write_image_folder, write_medmnist_npz

RULE = owndata.SplitRule()


def read(spec: str, size: int = 28, rule: owndata.SplitRule = RULE, **kw):
    return imagecache.read_arrays(spec, size, rule, **kw)


def test_folder_classes_from_names_and_a_stratified_split(tmp_path):
    root = write_image_folder(tmp_path / "patches", classes=("tumour", "normal", "stroma"), per_class=20)
    arrays, listing = read(f"folder:{root}")
    assert listing.classes == ("normal", "stroma", "tumour")  # sorted folder names, as ImageFolder
    for split, want in (("train", 16), ("val", 2), ("test", 2)):
        images, labels = arrays[split]
        assert images.shape == (3 * want, 28, 28, 3) and images.dtype == np.uint8
        assert np.bincount(labels[:, 0], minlength=3).tolist() == [want] * 3  # every class in proportion
    info = data.get_info(f"folder:{root}")
    assert (info.channels, info.num_classes, info.task, info.labels) == (3, 3, "multi-class", listing.classes)
    # the same seed draws the same split; another seed another one
    again, _ = read(f"folder:{root}")
    other, _ = read(f"folder:{root}", rule=owndata.SplitRule(seed=1))
    assert np.array_equal(again["val"][0], arrays["val"][0])
    assert not np.array_equal(other["val"][0], arrays["val"][0])


def test_given_splits_are_kept_and_a_missing_one_is_drawn_from_train(tmp_path):
    root = write_image_folder(tmp_path / "cells", classes=("a", "b"), per_class=10, splits=("train", "test"),
                              mode="L")
    arrays, listing = read(f"folder:{root}")
    assert len(arrays["test"][0]) == 20  # as given
    assert len(arrays["val"][0]) == 2 and len(arrays["train"][0]) == 18  # val: 10% of each class of train
    assert arrays["train"][0].shape[1:] == (28, 28)  # grey stays one channel


def test_csv_relative_paths_splits_and_multi_label(tmp_path):
    root = write_image_folder(tmp_path / "xray", classes=("x", "y"), per_class=8)
    rows = ["path,label,split"]
    for i in range(8):
        rows.append(f"x/{i}.png,effusion;nodule,{'train' if i < 6 else 'val' if i < 7 else 'test'}")
        rows.append(f"y/{i}.png,{'nodule' if i % 2 else ''},{'train' if i < 6 else 'val' if i < 7 else 'test'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    arrays, listing = read(f"csv:{root / 'labels.csv'}")
    assert listing.multi_label and listing.classes == ("effusion", "nodule")
    assert [len(arrays[s][0]) for s in ("train", "val", "test")] == [12, 2, 2]
    assert arrays["train"][1].shape == (12, 2)
    assert arrays["train"][1][0].tolist() == [1, 1] and arrays["train"][1][1].tolist() == [0, 0]  # "" is no label
    assert data.get_info(f"csv:{root / 'labels.csv'}").multi_label


def test_npz_of_any_size_is_resized_once(tmp_path):
    path = write_medmnist_npz(tmp_path / "mine.npz", channels=3, classes=4, counts=(40, 12, 12), size=40)
    arrays, listing = read(f"npz:{path}")
    assert arrays["train"][0].shape == (40, 28, 28, 3) and len(arrays["test"][0]) == 12
    assert listing.classes == ("0", "1", "2", "3")
    with np.load(path) as npz:
        assert np.array_equal(arrays["val"][1][:, 0], npz["val_labels"][:, 0])  # its own splits, in order


def test_the_cache_is_reused_and_refreshed_when_a_file_changes(tmp_path, caplog):
    root = write_image_folder(tmp_path / "p", classes=("a", "b"), per_class=6)
    caplog.set_level(logging.WARNING, logger="search")
    first, _ = read(f"folder:{root}", rule=owndata.SplitRule(0.2, 0.2))
    assert sum("converted" in r.getMessage() for r in caplog.records) == 1
    assert len(list((root / CACHE_FOLDER).glob("*.npy"))) == 1
    caplog.clear()
    again, _ = read(f"folder:{root}", rule=owndata.SplitRule(0.2, 0.2))
    assert not any("converted" in r.getMessage() for r in caplog.records)  # from the cache
    assert np.array_equal(first["train"][0], again["train"][0])
    # a changed file: a new key, converted again, and the new pixels are read
    from PIL import Image

    Image.fromarray(np.full((36, 36, 3), 255, np.uint8)).save(root / "a" / "0.png")
    os.utime(root / "a" / "0.png", ns=(1, 1))
    changed, _ = read(f"folder:{root}", rule=owndata.SplitRule(0.2, 0.2))
    assert sum("converted" in r.getMessage() for r in caplog.records) == 1
    white = [int((images == 255).all(axis=(1, 2, 3)).sum()) for images, _ in changed.values()]
    assert sum(white) == 1  # the new pixels, not the cached old ones
    assert len(list((root / CACHE_FOLDER).glob("*.npy"))) == 1  # the stale cache went


def test_mixed_modes_go_to_the_majority_with_one_line(tmp_path, caplog):
    root = write_image_folder(tmp_path / "m", classes=("a", "b"), per_class=6, mode="L")
    write_image_folder(tmp_path / "rgb", classes=("a",), per_class=2, mode="RGB")
    for i, f in enumerate(sorted((tmp_path / "rgb" / "a").iterdir())):
        shutil.copy(f, root / "a" / f"colour{i}.png")
    caplog.set_level(logging.WARNING, logger="search")
    arrays, _ = read(f"folder:{root}", rule=owndata.SplitRule(0.2, 0.2))
    assert arrays["train"][0].ndim == 3  # grey
    assert [r.getMessage() for r in caplog.records if "converted to grey" in r.getMessage()] == [
        f"folder:{root}: 2 of 14 images are colour; converted to grey like the rest"]


def test_sixteen_bit_tiffs_are_scaled_to_eight(tmp_path):
    root = write_image_folder(tmp_path / "t", classes=("a", "b"), per_class=6, mode="I;16", suffix=".tif", side=28)
    arrays, _ = read(f"folder:{root}", rule=owndata.SplitRule(0.2, 0.2))
    assert arrays["train"][0].max() > 100  # not clipped to 255 and not all black


def bad(spec: str, **kw) -> str:
    with pytest.raises(SearchError) as err:
        read(spec, **kw)
    assert "\n" not in err.value.message
    return err.value.message


def test_bad_sources_are_one_line_each(tmp_path):
    assert "no folder at" in bad(f"folder:{tmp_path / 'missing'}")
    one = write_image_folder(tmp_path / "one", classes=("only",), per_class=5)
    assert "one class (only)" in bad(f"folder:{one}")
    empty = write_image_folder(tmp_path / "empty", classes=("a", "b"), per_class=5)
    (empty / "c").mkdir()
    assert "class folder" in bad(f"folder:{empty}") and "holds no images" in bad(f"folder:{empty}")
    few = write_image_folder(tmp_path / "few", classes=("a", "b"), per_class=5)
    for f in list((few / "b").iterdir())[2:]:
        f.unlink()
    message = bad(f"folder:{few}")
    assert "class 'b' has 2 image(s)" in message and "val_fraction/test_fraction" in message
    assert "no CSV file" in bad(f"csv:{tmp_path / 'none.csv'}")
    assert "own data is named" in bad("folder:")


def test_a_bad_image_is_named_and_can_be_skipped(tmp_path, caplog):
    root = write_image_folder(tmp_path / "b", classes=("a", "b"), per_class=10)
    (root / "a" / "broken.png").write_bytes(b"")
    message = bad(f"folder:{root}")
    assert str(root / "a" / "broken.png") in message and "--skip-bad-images" in message
    assert not list((root / CACHE_FOLDER).glob("*.json"))  # nothing cached from a failed conversion
    caplog.set_level(logging.WARNING, logger="search")
    arrays, listing = read(f"folder:{root}", skip_bad=True)
    assert len(listing) == 20 and sum(len(a[0]) for a in arrays.values()) == 20
    assert any("skipped 1 unreadable image" in r.getMessage() for r in caplog.records)
    assert "broken.png" in bad(f"folder:{root}")  # the cache remembers the bad file; without the flag: refused


def test_csv_rows_that_name_no_class_or_leave_the_folder(tmp_path):
    root = write_image_folder(tmp_path / "c", classes=("a", "b"), per_class=4)
    (root / "l.csv").write_text("a/0.png,a,train\nb/0.png,b,train\na/1.png,c,test\n")
    assert "the label 'c'" in bad(f"csv:{root / 'l.csv'}") and "valid: a, b" in bad(f"csv:{root / 'l.csv'}")
    (root / "o.csv").write_text("a/0.png,a\n../outside.png,b\n")
    assert "lies outside the CSV's folder" in bad(f"csv:{root / 'o.csv'}")
    (root / "s.csv").write_text("a/0.png,a,training\n")
    assert "split 'training' is not known" in bad(f"csv:{root / 's.csv'}")


def test_duplicates_across_splits_are_counted(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6, splits=("train", "test"))
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "copy.png")
    caplog.set_level(logging.WARNING, logger="search")
    read(f"folder:{root}")
    assert [r.getMessage() for r in caplog.records if "identical copy" in r.getMessage()][0].startswith(
        f"folder:{root}: 2 images have an identical copy")


def test_data_too_large_for_the_device_says_how_much_it_needs():
    info = data.DatasetInfo("folder:/big", 3, 2, "binary-class", lambda *a: {})
    huge = np.broadcast_to(np.zeros((1, 224, 224, 3), np.uint8), (200_000, 224, 224, 3))  # no memory taken
    arrays = {s: (huge, np.zeros((1, 1))) for s in ("train", "val", "test")}
    with pytest.raises(SearchError, match=r"600,000 images at 224 px need 84.1 GiB on cpu"):
        owninfo.check_fits(info, arrays, torch.device("cpu"))


def test_a_config_on_own_data_trains_and_its_weights_carry_the_classes(tmp_path):
    from search.train import engine, ensemble

    root = write_image_folder(tmp_path / "own", classes=("benign", "malignant"), per_class=16)
    cfg = TrainConfig(dataset=f"folder:{root}", device="cpu", epochs=1, batch_size=8, val_fraction=0.25,
                      test_fraction=0.25)
    metrics = engine.train(cfg, tmp_path / "run", progress=False)
    assert metrics["task"] == "binary-class" and len(metrics["test_confusion"]) == 2
    assert (tmp_path / "run" / "test_predictions.csv").read_text().splitlines()[0].endswith("p_benign,p_malignant")
    # the weights predict where the training images are gone (another machine): the classes travel in model.pt
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    owninfo._OWN.clear()
    member = ensemble.load_member(tmp_path / "run" / "model.pt")
    assert data.get_info(member.cfg.dataset).labels == ("benign", "malignant")


def test_split_fractions_are_checked():
    with pytest.raises(SearchError, match=r"val_fraction must be in \[0, 0.5\), got 0.7"):
        TrainConfig(dataset="digits", val_fraction=0.7)


@pytest.mark.e2e
def test_init_search_export_train_predict_through_the_command_line(tmp_path):
    """The whole path of the README for one's own folder, as a user types it."""
    import yaml

    from tests.support.cli import run

    root = write_image_folder(tmp_path / "patches", classes=("benign", "malignant"), per_class=16)
    done = run(["init", str(root), "--val-fraction", "0.25", "--test-fraction", "0.25"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "32 images in 2 classes, RGB, 28 px; train 16 / val 8 / test 8" in done.stdout
    study = yaml.safe_load((tmp_path / "studies" / "patches.yaml").read_text())
    assert study["dataset"] == f"folder:{root.resolve()}" and study["fixed"]["val_fraction"] == 0.25
    study.update(epochs=2, space={k: v for k, v in study["space"].items() if k != "architecture"})
    (tmp_path / "studies" / "patches.yaml").write_text(yaml.safe_dump(study))  # two short trials for the test
    done = run(["start", "--study", "patches", "--workers", "2", "--trials", "2"], tmp_path)
    assert done.returncode == 0 and "2/2 finished" in done.stdout, done.stdout + done.stderr
    assert "converted" not in done.stderr  # init made the cache: no worker converts again
    assert run(["export", "--study", "patches", "-o", "best.yaml"], tmp_path).returncode == 0
    done = run(["train", "best.yaml", "--out", "runs/best"], tmp_path)
    assert done.returncode == 0 and "test_acc" in done.stdout, done.stderr
    (tmp_path / "new").mkdir()
    shutil.copy(root / "malignant" / "3.png", tmp_path / "new" / "a.png")
    done = run(["predict", "runs/best", "new", "-o", "pred.csv"], tmp_path)
    assert done.returncode == 0, done.stderr
    header, row = (tmp_path / "pred.csv").read_text().splitlines()
    assert header == "image,prediction,predicted_label,p_benign,p_malignant" and row.startswith("a.png,")
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_two_processes_missing_the_cache_convert_once(tmp_path):
    """A SLURM array's tasks start together: one converts, the other waits for its cache (imagecache's lock)."""
    import subprocess
    import sys

    root = write_image_folder(tmp_path / "many", classes=("a", "b"), per_class=150)
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(message)s');"
            "from search.train import imagecache, owndata;"
            "imagecache.read_arrays(sys.argv[1], 28, owndata.SplitRule())")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"folder:{root}"], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert sum(log.count("images converted") for log in logs) == 1, logs


def _map_in_a_daemon(queue) -> None:  # a supervised worker is a daemonic process
    from search.train.imagecache import _map

    try:
        queue.put(len(_map(abs, list(range(-300, 0)), "test", unit="item")))
    except Exception as err:  # reported to the test, which names it
        queue.put(repr(err))


@pytest.mark.e2e
def test_a_daemonic_worker_converts_without_a_pool():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_map_in_a_daemon, args=(queue,), daemon=True)
    process.start()
    assert queue.get(timeout=120) == 300
    process.join(timeout=60)
