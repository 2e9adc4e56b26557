"""Ctrl-C at any moment of `search start`, `search worker` and `search train`: exit status 130, one line that says
how to go on, no traceback from any process, no RUNNING trial left, and the same command resumes.

Real processes in their own process group, SIGINT sent to the whole group (what a terminal's Ctrl-C does), a real
SQLite study. bench/ctrl_c.py runs the same check at 100 random moments.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import cli_env, search_cmd

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STOP_LIMIT_S = 30  # the promise: stopped within 30 s of the signal

STUDY = """\
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
class Run:
    """A `search` process in its own group, its output read line by line as it comes."""

    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], cwd: Path) -> Run:
        proc = subprocess.Popen(search_cmd() + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env(), start_new_session=True)
        run = cls(proc)
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
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.05)


def trials_of(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def running(db: Path, name: str) -> bool:
    try:
        return db.exists() and any(t.state == TrialState.RUNNING and "worker" in t.user_attrs
                                   for t in trials_of(db, name))
    except sqlalchemy.exc.OperationalError:  # the command is creating the tables at this moment
        return False


def assert_clean_stop(run: Run, seconds: float, db: Path, name: str) -> None:
    """The outcome the user is promised, whatever the moment."""
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S, f"stopped {seconds:.1f} s after the signal"
    errors = [line for line in run.err if line.strip()]
    assert len(errors) == 1, run.text()  # one line, from the supervisor: nothing from the workers
    assert errors[0].startswith("Error: interrupted (SIGINT)"), errors
    assert "Run the same command again" in errors[0] or "run the same command" in errors[0], errors
    assert "Traceback" not in run.text() and "Exception ignored" not in run.text(), run.text()
    trials = trials_of(db, name) if db.exists() else []
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("reason") == "interrupted", t.user_attrs


# The moments: while the command itself starts (interpreter, imports), as the workers start (spawned, importing),
# during a first epoch, right after a trial finished (between two trials), and later, mid-run.
MOMENTS = {
    "command start-up 0.1 s": lambda run, db, name: time.sleep(0.1),
    "command start-up 1 s": lambda run, db, name: time.sleep(1.0),
    "workers spawned": lambda run, db, name: wait_until(lambda: run.printed("workers on")),
    "workers importing": lambda run, db, name: (wait_until(lambda: run.printed("workers on")), time.sleep(1.0)),
    "first epoch": lambda run, db, name: wait_until(lambda: running(db, name)),
    "first epoch, later": lambda run, db, name: (wait_until(lambda: running(db, name)), time.sleep(0.7)),
    "between trials": lambda run, db, name: wait_until(lambda: run.printed("] finished")),
    "between trials, later": lambda run, db, name: (wait_until(lambda: run.printed("] finished")), time.sleep(0.3)),
    "mid-run": lambda run, db, name: (wait_until(lambda: run.printed("] finished")), time.sleep(1.5)),
    "command start-up 3 s": lambda run, db, name: time.sleep(3.0),
}


def test_ctrl_c_at_ten_moments_of_a_two_worker_search_then_the_same_command_resumes(tmp_path):
    """Ten runs of the same command, each stopped by Ctrl-C at another moment; each run resumes the one before
    (its first line counts the trials finished before); the eleventh, uninterrupted, completes the budget."""
    name, db = "ctrlc", tmp_path / "search.db"
    study = tmp_path / f"{name}.yaml"
    study.write_text(STUDY.format(name=name, trials=100))
    command = ["start", "--study", str(study), "--workers", "2"]
    for moment, wait in MOMENTS.items():
        before = sum(t.state in FINISHED for t in trials_of(db, name)) if db.exists() else 0
        run = Run.start(command, tmp_path)
        wait(run, db, name)
        seconds = run.ctrl_c()
        try:
            assert_clean_stop(run, seconds, db, name)
        except AssertionError as err:
            raise AssertionError(f"Ctrl-C at '{moment}': {err}") from None
        if run.printed("workers on"):
            assert run.printed(f"{before} finished before"), run.text()  # it resumed the study as it stood
    done = sum(t.state in FINISHED for t in trials_of(db, name))
    final = subprocess.run(search_cmd() + command + ["--trials", str(done + 2)], cwd=tmp_path,
                           capture_output=True, text=True, env=cli_env(), timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    trials = trials_of(db, name)
    assert sum(t.state in FINISHED for t in trials) == done + 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_ctrl_c_stops_a_standalone_worker_mid_trial(tmp_path):
    name, db = "solo", tmp_path / "search.db"
    study = tmp_path / f"{name}.yaml"
    study.write_text(STUDY.format(name=name, trials=50).replace("epochs: 2", "epochs: 20"))
    run = Run.start(["worker", "--study", str(study), "--device", "cpu"], tmp_path)
    wait_until(lambda: running(db, name))
    assert_clean_stop(run, run.ctrl_c(), db, name)
    failed = [t for t in trials_of(db, name) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "interrupted"


@pytest.mark.parametrize("seeds", [None, 2])
def test_ctrl_c_stops_search_train_mid_epoch_and_saves_nothing_half_done(tmp_path, seeds):
    (tmp_path / "cfg.yaml").write_text("dataset: digits\narchitecture: simple_cnn_v2\nepochs: 30\nbatch_size: 32\n")
    args = ["train", "cfg.yaml", "--out", "run"] + (["--seeds", str(seeds)] if seeds else [])
    run = Run.start(args, tmp_path)
    wait_until(lambda: any("epoch" in line for line in run.err) or run.proc.poll() is not None)
    time.sleep(0.5)
    seconds = run.ctrl_c()
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S
    last = [line for line in "".join(run.err).replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("Error: interrupted (SIGINT): the run in progress was stopped"), run.text()
    assert "Traceback" not in run.text()
    assert not list(tmp_path.glob("run/**/metrics.json")) and not list(tmp_path.glob("run/**/.*.tmp"))
