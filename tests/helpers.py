"""Helpers shared by the tests (fixtures live in conftest.py): data files in the true on-disk formats, the
`search` command as a real process, small study files, and waiting for things to happen."""
from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from optuna.trial import TrialState

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_medmnist_npz(path: Path, *, channels: int, classes: int, counts=(120, 40, 40), multi_label: bool = False,
                       seed: int = 0, size: int = 28) -> Path:
    """A MedMNIST-layout file: keys {train,val,test}_{images,labels}, uint8 N x S x S (x 3), labels N x 1.

    ``size`` is the image side S (MedMNIST+ writes <flag>_64.npz etc. in the same layout).

    Each class has its own mean brightness pattern, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        if multi_label:
            labels = rng.integers(0, 2, size=(n, classes)).astype(np.uint8)
            base = labels[:, :1].astype(np.float64) * 120
        else:
            labels = rng.integers(0, classes, size=(n, 1)).astype(np.uint8)
            base = labels.astype(np.float64) * (200 / max(1, classes - 1))
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        noise = rng.normal(0, 20, size=shape)
        images = np.clip(base.reshape((n,) + (1,) * (len(shape) - 1)) + 30 + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)
    return path


def write_mnist(folder: Path, *, n_train: int = 300, n_test: int = 100, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.clip(labels[:, None, None] * 20 + rng.normal(0, 10, (n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def search_cmd() -> list[str]:
    """The installed console script, run as a real process."""
    exe = Path(sys.executable).with_name("search")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "search"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(extra)
    return env


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A small, fast study: one of the two learning rates is hopeless, so the median pruner has work to do.
STUDY = """\
name: {name}
dataset: digits
metric: val_acc
epochs: {epochs}
trials: {trials}
sampler: {{name: tpe, seed: 0, n_startup_trials: 4}}
pruner: {{name: median, n_startup_trials: 2, n_warmup_steps: 0}}
space:
  lr: {{type: categorical, choices: [0.00001, 0.003]}}
  dropout: {{type: float, low: 0.0, high: 0.5}}
  optimizer: {{type: categorical, choices: [adam, sgd]}}
  momentum: {{type: float, low: 0.8, high: 0.95, when: {{optimizer: sgd}}}}
fixed:
  architecture: {arch}
  batch_size: 64
"""


def study_file(tmp_path: Path, name: str = "tiny", *, epochs: int = 3, trials: int = 8,
               arch: str = "simple_cnn_v1") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, epochs=epochs, trials=trials, arch=arch))
    return path


def run(args: list[str], cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd() + args, cwd=cwd, capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, **kw)


def trials_of(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials. Read while a `search` command may be creating the store's tables: opening the store
    then races with it ("table ... already exists", a UNIQUE constraint on alembic_version), and the next try
    finds the tables made (the product's own opener retries the same way, search/hpo/storage.py)."""
    for attempt in range(20):
        try:
            return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 19:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def by_state(trials, *states) -> list:
    return [t for t in trials if t.state in states]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str):
    """The body of a 200 answer, else None (not answering yet, or an error)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


# Two architectures, a hopeless learning rate for the pruner to stop, and a conditional parameter (momentum).
# With one worker and sampler seed 5 the four trials are fixed: the two first ones use SGD, the third the
# hopeless rate (pruned after epoch 1), the last simple_cnn_v1 with Adam. The fixture checks what the tests need.
REPORT_STUDY = """\
name: tiny
dataset: digits
metric: val_acc
epochs: 2
trials: 4
sampler: {name: tpe, seed: 5, n_startup_trials: 4}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
space:
  architecture: {type: categorical, choices: [simple_cnn_v1, simple_cnn_v2]}
  lr: {type: categorical, choices: [0.00001, 0.003]}
  dropout: {type: float, low: 0.0, high: 0.5}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
fixed:
  batch_size: 64
"""
REPORT_FINAL = "dataset: digits\narchitecture: simple_cnn_v1\nepochs: 3\nbatch_size: 64\nlr: 0.003\n"


@dataclass
class Searched:
    root: Path
    trials: list[optuna.trial.FrozenTrial]
    train_stdout: str
    report: Path


def search_tiny(tmp_path_factory) -> Searched:
    """One real search, two final runs and their report: what the report and artifact tests read."""
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.yaml").write_text(REPORT_STUDY)
    start = run(["start", "--study", "tiny.yaml", "--workers", "1"], root)
    assert start.returncode == 0, start.stdout + start.stderr
    trials = trials_of(root / "search.db", "tiny")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert any(t.state == TrialState.PRUNED for t in trials), "the study must prune a trial"
    assert len({t.value for t in complete}) >= 2, "importances need two complete trials with different values"
    (root / "final.yaml").write_text(REPORT_FINAL)
    train = run(["train", "final.yaml", "--seeds", "2", "--epochs", "1", "--out", "final", "--device", "cpu"], root)
    assert train.returncode == 0, train.stderr
    made = run(["report", "--study", "tiny", "--run", "final", "-o", "out"], root)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().endswith("out/index.html")
    return Searched(root, trials, train.stdout, root / "out")


def _wait_for_exec(pid: int, word: str, timeout: float = 10) -> None:
    """Until the child runs the command (its /proc cmdline names it). Before that it is still a copy of this
    process between fork and exec: a signal there is a property of this harness (a terminal's shell resets SIGINT
    in that instant), not of the command under test."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if word.encode() in cmdline.read_bytes().split(b"\0"):
                return
        except OSError:  # gone already: the caller sees its exit
            return
        time.sleep(0.001)


def sigint_as_in_a_terminal() -> None:
    """A command a terminal runs in the foreground has SIGINT at its default. This process may have it ignored
    (started in the background by a shell), and ignored signals stay ignored in the commands it starts, which
    would then rightly ignore Ctrl-C: undo that before starting them."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --- Ctrl-C: a command in its own process group, stopped as a terminal stops it (tests/test_ctrl_c.py, bench/ctrl_c.py)

STOP_LIMIT_S = 30  # the promise: stopped within 30 s of the signal

CTRL_C_STUDY = """\
name: {name}
dataset: digits
metric: val_acc
epochs: 2
trials: {trials}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
space:
  lr: {{type: float, low: 0.001, high: 0.01, log: true}}
fixed:
  architecture: simple_cnn_v1
  batch_size: 64
"""


@dataclass
class Interruptible:
    """A `search` process in its own group, its output read line by line as it comes."""

    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], cwd: Path, **env: str) -> Interruptible:
        sigint_as_in_a_terminal()
        proc = subprocess.Popen(search_cmd() + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env(**env), start_new_session=True)
        run = cls(proc)
        _wait_for_exec(proc.pid, args[0])
        run.started = time.monotonic()
        for stream, lines in ((proc.stdout, run.out), (proc.stderr, run.err)):
            threading.Thread(target=lambda s=stream, ls=lines: ls.extend(iter(s.readline, "")), daemon=True).start()
        return run

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.out)

    def ctrl_c(self) -> float:
        os.killpg(self.proc.pid, signal.SIGINT)  # the whole process group, as a terminal does
        sent = time.monotonic()
        self.proc.wait(timeout=120)
        time.sleep(0.2)  # let the reader threads take the last lines
        return time.monotonic() - sent

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def wait_until(predicate, timeout: float = 300) -> None:
    """Poll often: the moment to interrupt can be short (between two trials)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.05)


def trials_so_far(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials while a command may still be creating it: none before the file, tables and study exist."""
    if not db.exists():
        return []
    try:
        return trials_of(db, name)
    except KeyError:  # no study yet
        return []


def running(db: Path, name: str) -> bool:
    """A trial is RUNNING in a worker (it recorded its worker: the objective has started)."""
    return any(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in trials_so_far(db, name))


def assert_clean_stop(run: Interruptible, seconds: float, db: Path, name: str) -> None:
    """The outcome the user is promised, whatever the moment."""
    if run.proc.returncode == -signal.SIGINT and not run.text():
        # The signal came before the interpreter ran a line of ours (its own start-up, a few ms): SIGINT's default
        # action ended it, nothing was printed or written, and a shell reports exit status 130 (128 + 2).
        assert not trials_so_far(db, name) or not [t for t in trials_so_far(db, name)
                                                   if t.state == TrialState.RUNNING]
        return
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S, f"stopped {seconds:.1f} s after the signal"
    errors = [line for line in run.err if line.strip()]
    assert len(errors) == 1, run.text()  # one line, from the supervisor: nothing from the workers
    assert errors[0].startswith("Error: interrupted (SIGINT)"), errors
    assert "Run the same command again" in errors[0] or "run the same command" in errors[0], errors
    assert "Traceback" not in run.text() and "Exception ignored" not in run.text(), run.text()
    trials = trials_so_far(db, name)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("reason") == "interrupted", t.user_attrs
