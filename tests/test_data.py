import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from search.errors import SearchError
from search.train import data
from tests.support.data import SHARED_MNIST, write_medmnist_npz, write_mnist

CPU = torch.device("cpu")


def test_medmnist_file_loads_as_uint8_tensors(pathmnist_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="search"):
        d = data.load("pathmnist", str(pathmnist_dir), CPU)
    assert d.info.channels == 3 and d.info.num_classes == 9 and d.info.task == "multi-class"
    assert d.train.images.shape == (120, 3, 28, 28) and d.train.images.dtype == torch.uint8
    assert d.val.labels.shape == (40,) and d.val.labels.dtype == torch.int64
    assert len(d.test) == 40
    # The raw file's first image, channel last, must be the tensor's first image, channel first.
    raw = np.load(pathmnist_dir / "pathmnist.npz")["train_images"][0]
    assert torch.equal(d.train.images[0], torch.from_numpy(raw).permute(2, 0, 1))
    assert d.mean.shape == (1, 3, 1, 1) and torch.all(d.std > 0)
    # A subset of the official counts is used, with a warning that says so.
    assert "89996" in caplog.text and "pathmnist" in caplog.text
    assert data.load("pathmnist", str(pathmnist_dir), CPU) is d  # cached per process


def test_every_medmnist_2d_flag_is_registered():
    from medmnist.info import INFO

    names = set(data.list_datasets())
    assert {"pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
            "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"} <= names
    assert not any(n.endswith("3d") for n in names)
    assert data.get_info("chestmnist").num_classes == len(INFO["chestmnist"]["label"])


def test_multi_label_labels_are_float_matrices(tmp_path):
    write_medmnist_npz(tmp_path / "chestmnist.npz", channels=1, classes=14, multi_label=True)
    d = data.load("chestmnist", str(tmp_path), CPU)
    assert d.info.multi_label and d.train.labels.shape == (120, 14) and d.train.labels.dtype == torch.float32
    assert d.train.images.shape == (120, 1, 28, 28)


def test_data_dir_then_env_then_default(tmp_path, monkeypatch):
    assert data.data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path / "env"))
    assert data.data_root(None) == tmp_path / "env"
    monkeypatch.delenv("SEARCH_DATA_DIR")
    from medmnist.info import get_default_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # medmnist's default root, made where it does no harm
    assert data.data_root(None) == tmp_path / "home" / ".medmnist" == data.Path(get_default_root())


def files_under(*folders):
    return {str(p) for folder in folders for p in folder.rglob("*")}


# Each dataset's failing path, offline (every download fails): where the files are, what the command is.
FAILING = {
    "pathmnist in an empty data folder": ("train", "dataset: pathmnist\nepochs: 1\n", "data"),
    "pathmnist_64 in a folder whose parents are missing": ("train", "dataset: pathmnist\nsize: 64\nepochs: 1\n",
                                                           "data/a/b"),
    "chestmnist in the default folder": ("train", "dataset: chestmnist\nepochs: 1\n", None),
    "mnist in an empty data folder": ("train", "dataset: mnist\nepochs: 1\n", "data"),
    "mnist in the default folder": ("train", "dataset: mnist\nepochs: 1\n", None),
    "search start --study pathmnist": ("start", None, "data"),
}


@pytest.mark.e2e
def test_a_failed_download_leaves_nothing_behind_in_home_or_the_data_folder(tmp_path):
    """Each dataset's failing download through the real command line, with a scratch HOME (no ~/.medmnist unless
    it is the data folder used, and then removed again) and a scratch data folder: one line, exit 2, no new file
    anywhere in either (nor in the working folder)."""
    from tests.support.cli import cli_env, search_cmd

    runs = {}
    for case, (command, text, data_dir) in FAILING.items():
        scratch = tmp_path / str(len(runs))
        home, work, folder = scratch / "home", scratch / "work", scratch / "data"
        for made in (home, work, folder):
            made.mkdir(parents=True)
        args = ["train", "c.yaml", "--out", str(scratch / "out")] if command == "train" else \
            ["start", "--study", "pathmnist", "--trials", "1"]
        if text is not None:
            (work / "c.yaml").write_text(text + (f"data_dir: {scratch / data_dir}\n" if data_dir else ""))
        elif data_dir:
            args += ["--data-dir", str(scratch / data_dir)]
        env = {k: v for k, v in cli_env(HOME=str(home)).items() if k != "SEARCH_DATA_DIR"}
        before = files_under(home, folder, work)
        proc = subprocess.Popen(search_cmd() + args, cwd=work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        runs[case] = (proc, before, (home, folder, work))
    for case, (proc, before, folders) in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, (case, out, err)
        assert len(err.strip().splitlines()) == 1 and "download" in err and "Traceback" not in err, (case, err)
        assert files_under(*folders) == before, case


def test_truncated_npz_is_a_clear_error(pathmnist_dir):
    path = pathmnist_dir / "pathmnist.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SearchError, match=r"pathmnist\.npz is corrupt or truncated") as err:
        data.prepare("pathmnist", str(pathmnist_dir))
    assert "\n" not in err.value.format_message()


def test_wrong_layout_is_a_clear_error(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=1, classes=9)  # grey where RGB is expected
    with pytest.raises(SearchError, match=r"expected uint8 \(N, 28, 28, 3\)"):
        data.prepare("pathmnist", str(tmp_path))


def test_missing_medmnist_offline_says_what_to_place_where(tmp_path):
    root = tmp_path / "not-yet"
    with pytest.raises(SearchError) as err:
        data.prepare("pathmnist", str(root))
    msg = err.value.format_message()
    assert "\n" not in msg and "download" in msg
    assert f"place pathmnist.npz" in msg and str(root) in msg and "a8b06965200029087d5bd730944a56c1" in msg
    assert not root.exists()  # nothing half-written


@pytest.mark.parametrize("gz, sub", [(True, ""), (False, "MNIST/raw")])
def test_mnist_idx_files_split_9_to_1(tmp_path, gz, sub):
    write_mnist(tmp_path / sub if sub else tmp_path, n_train=300, n_test=100, gz=gz)
    d = data.load("mnist", str(tmp_path), CPU)
    assert (len(d.train), len(d.val), len(d.test)) == (270, 30, 100)
    assert d.train.images.shape[1:] == (1, 28, 28)
    # train and val are a partition of the training file, fixed whatever the run's seed
    arrays = data.prepare("mnist", str(tmp_path))
    both = np.concatenate([arrays["train"][0], arrays["val"][0]]).reshape(300, -1)
    raw = data.read_idx(next(tmp_path.rglob("train-images-idx3-ubyte*"))).reshape(300, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw))


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(SearchError, match="t10k-images-idx3-ubyte is truncated"):
        data.prepare("mnist", str(tmp_path))


def test_idx_reader_reads_the_real_mnist_test_labels():
    if not SHARED_MNIST.exists():
        pytest.skip(f"real MNIST test set not found at {SHARED_MNIST}")
    labels = data.read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_missing_mnist_offline_is_one_line(tmp_path):
    root = tmp_path / "mnist-here"
    with pytest.raises(SearchError) as err:
        data.prepare("mnist", str(root))
    msg = err.value.format_message()
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg and str(root) in msg
    assert not root.exists()


def test_digits_is_real_and_split_fixed():
    arrays = data.prepare("digits")
    sizes = {s: len(arrays[s][0]) for s in data.SPLITS}
    assert sizes == {"train": 1259, "val": 269, "test": 269}
    assert arrays["train"][0].shape[1:] == (28, 28) and arrays["train"][0].dtype == np.uint8
    assert set(np.unique(arrays["train"][1])) == set(range(10))
    again = data.prepare("digits")
    assert np.array_equal(again["test"][0], arrays["test"][0])


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(SearchError, match="dataset 'cifar10' is not known; valid: .*digits.*mnist.*pathmnist"):
        data.get_info("cifar10")


@pytest.mark.e2e  # a fresh interpreter: a process
def test_digits_are_scikit_learns_and_a_digits_run_loads_neither_scikit_learn_nor_medmnist():
    from sklearn.datasets import load_digits

    images, target = data.digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    code = ("import sys; from search.train import data; from search.train.config import TrainConfig; "
            "TrainConfig(dataset='digits'); data.prepare('digits'); "
            "print(sorted(m for m in ('sklearn', 'medmnist', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # about 2 s less start-up for every digits or MNIST process
    assert "pathmnist" in data.list_datasets() and data.class_names("pathmnist", 9)[0] == "adipose"
