"""Ctrl-C at any moment of `search start`, `search worker` and `search train`: exit status 130, one line that says
how to go on, no traceback from any process, no RUNNING trial left, and the same command resumes.

Real processes in their own process group, SIGINT sent to the whole group (what a terminal's Ctrl-C does), a real
SQLite study. bench/ctrl_c.py runs the same check at 100 random moments.
"""
from __future__ import annotations

import functools
import subprocess
import time

import pytest
from optuna.trial import TrialState

from tests.support.cli import cli_env, search_cmd
from tests.support.signals import STOP_LIMIT_S, Interruptible, assert_clean_stop
from tests.support.store import FINISHED, running, trials_of
from tests.support.studies import ctrl_c_study
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e  # every test here starts real processes

# The moments: while the interpreter itself starts (30 ms after exec: before bin/search blocked the stop signals,
# CPython printed its own "Fatal Python error" there), while the command starts (imports), as the workers start
# (spawned, importing, loading), during a first epoch, right after a trial finished (between two trials), and later.
MOMENTS = {  # moment: (what to wait for, or nothing; then seconds more)
    "interpreter start-up 0.03 s": (None, 0.03),
    "command start-up 0.5 s": (None, 0.5),
    "workers spawned": (lambda run, db, name: run.printed("workers on"), 0.0),
    "workers importing": (lambda run, db, name: run.printed("workers on"), 1.0),
    "workers loading": (lambda run, db, name: run.printed("workers on"), 3.0),
    "first epoch": (lambda run, db, name: running(db, name), 0.0),
    "first epoch, later": (lambda run, db, name: running(db, name), 0.7),
    "between trials": (lambda run, db, name: run.printed("] finished"), 0.0),
    "mid-run": (lambda run, db, name: run.printed("] finished"), 1.5),
    "command start-up 1.5 s": (None, 1.5),
}


def test_ctrl_c_at_ten_moments_of_a_two_worker_search_then_the_same_command_resumes(tmp_path):
    """Ten runs of the same command, each stopped by Ctrl-C at another moment; each run resumes the one before
    (its first line counts the trials finished before); the eleventh, uninterrupted, completes the budget."""
    name, db = "ctrlc", tmp_path / "search.db"
    study = ctrl_c_study(tmp_path, name, trials=100)
    command = ["start", "--study", str(study), "--workers", "2"]
    for moment, (until, delay) in MOMENTS.items():
        before = sum(t.state in FINISHED for t in trials_of(db, name))
        run = Interruptible.start(command, tmp_path)
        if until:  # polled often: the moment can be short (between two trials)
            wait_for(functools.partial(until, run, db, name), 300, f"the moment '{moment}'", every=0.05)
        time.sleep(delay)
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


def test_ctrl_c_while_the_interpreter_itself_starts_is_one_line_too(tmp_path):
    """The command's interpreter starts with the stop signals blocked (bin/search): a Ctrl-C before any line of
    the project runs waits for its handler. Held deterministically inside the interpreter's own start-up by a
    sitecustomize module (imported by `site`, before the command's first line); a console script started the
    interpreter with SIGINT open, and Python printed its own "Error in sitecustomize ... KeyboardInterrupt"."""
    hold = tmp_path / "site"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(
        "import os, pathlib, time\n"
        "if not os.environ.get('HELD'):\n"
        "    os.environ['HELD'] = '1'  # the command's own interpreter only, not its workers\n"
        "    pathlib.Path(os.environ['MARK']).touch()\n"
        "    time.sleep(1.0)\n")
    mark = tmp_path / "in-start-up"
    study = ctrl_c_study(tmp_path, "early", trials=10)
    run = Interruptible.start(["start", "--study", str(study), "--workers", "2"], tmp_path,
                              PYTHONPATH=str(hold), MARK=str(mark))
    wait_for(lambda: mark.exists() or run.proc.poll() is not None, 30, "the start-up held", every=0.05)
    assert run.proc.poll() is None, run.text()
    assert_clean_stop(run, run.ctrl_c(), tmp_path / "search.db", "early")
    assert run.proc.returncode == 130  # our handler saw it: not SIGINT's default action
    assert "no trial had started" in run.text() or "nothing" in run.text(), run.text()


def test_a_folder_named_like_the_package_does_not_shadow_it(tmp_path):
    """bin/search takes the current folder off sys.path, as a console script does: a user's models/ folder (a
    common name for saved weights) must not replace the package."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise ImportError('the folder, not the package')\n")
    (tmp_path / "cfg.yaml").write_text("dataset: digits\narchitecture: nosuch\n")
    out = subprocess.run(search_cmd() + ["train", "cfg.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "architecture 'nosuch' is not known; valid: alexnet" in out.stderr, out.stderr


def test_ctrl_c_stops_a_standalone_worker_mid_trial(tmp_path):
    name, db = "solo", tmp_path / "search.db"
    study = ctrl_c_study(tmp_path, name, trials=50, epochs=20)
    run = Interruptible.start(["worker", "--study", str(study), "--device", "cpu"], tmp_path)
    wait_for(lambda: running(db, name), 300, "a running trial", every=0.05)
    assert_clean_stop(run, run.ctrl_c(), db, name)
    failed = [t for t in trials_of(db, name) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "interrupted"


@pytest.mark.parametrize("seeds", [None, 2])
def test_ctrl_c_stops_search_train_mid_epoch_and_saves_nothing_half_done(tmp_path, seeds):
    (tmp_path / "cfg.yaml").write_text("dataset: digits\narchitecture: simple_cnn_v2\nepochs: 30\nbatch_size: 32\n")
    args = ["train", "cfg.yaml", "--out", "run"] + (["--seeds", str(seeds)] if seeds else [])
    run = Interruptible.start(args, tmp_path)
    wait_for(lambda: any("epoch" in line for line in run.err) or run.proc.poll() is not None, 300,
             "the first epoch", every=0.05)
    time.sleep(0.5)
    seconds = run.ctrl_c()
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S
    last = [line for line in "".join(run.err).replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("Error: interrupted (SIGINT): the run in progress was stopped"), run.text()
    assert "Traceback" not in run.text()
    assert not list(tmp_path.glob("run/**/metrics.json")) and not list(tmp_path.glob("run/**/.*.tmp"))


@pytest.mark.parametrize("delay", [0.0, 4.0], ids=["processes starting", "processes training"])
def test_ctrl_c_stops_search_train_parallel_seeds_with_one_line(tmp_path, delay):
    """`--seeds 2 --devices cpu,cpu`: the parent takes the Ctrl-C, stops its two processes with SIGTERM and ends
    like the sequential run: the one line, exit status 130, no traceback from any process, no half-written run."""
    (tmp_path / "cfg.yaml").write_text("dataset: digits\narchitecture: simple_cnn_v2\nepochs: 30\nbatch_size: 32\n")
    run = Interruptible.start(["train", "cfg.yaml", "--out", "run", "--seeds", "2", "--devices", "cpu,cpu"],
                              tmp_path)
    wait_for(lambda: any("in parallel on" in line for line in run.err) or run.proc.poll() is not None, 300,
             "the seeds' processes", every=0.05)
    time.sleep(delay)
    seconds = run.ctrl_c()
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S
    last = [line for line in "".join(run.err).splitlines() if line.strip()][-1]
    assert last.startswith("Error: interrupted (SIGINT): the run in progress was stopped"), run.text()
    assert "Traceback" not in run.text()
    assert not list(tmp_path.glob("run/**/metrics.json")) and not list(tmp_path.glob("run/**/.*.tmp"))


def test_every_command_says_how_it_stops():
    """Each command is marked by its decorator in search/cli.py: stops at once, or at its work's safe points."""
    from search.cli import main

    kinds = {name: getattr(cmd.callback, "stops", None) for name, cmd in main.commands.items()}
    assert all(kind in ("at once", "at safe points") for kind in kinds.values()), kinds
    assert {name for name, kind in kinds.items() if kind == "at safe points"} == {"start", "worker", "train", "export",
                                                                                        "init"}


def _pack_past_epoch_1(db, name: str, members: int):  # type: ignore[no-untyped-def]
    packed = [t for t in trials_of(db, name) if t.state == TrialState.RUNNING and "pack" in t.user_attrs]
    return packed if len(packed) == members and all(t.intermediate_values for t in packed) else None


def test_ctrl_c_stops_a_packed_worker_and_every_member_resumes_from_its_own_checkpoint(tmp_path):
    """A worker training a pack of two trials in lockstep: one line, no traceback, both members left to resume;
    the same command then resumes each from its own last finished epoch, its curve continued."""
    name, db = "packed", tmp_path / "search.db"
    study = ctrl_c_study(tmp_path, name, trials=2, epochs=4)
    command = ["start", "--study", str(study), "--workers", "1", "--pack", "2"]
    run = Interruptible.start(command, tmp_path)
    members = wait_for(lambda: _pack_past_epoch_1(db, name, 2), 300, "a pack of 2 past its first epoch",
                       every=0.05)
    assert_clean_stop(run, run.ctrl_c(), db, name)
    stopped = {t.number: t for t in trials_of(db, name) if t.state == TrialState.FAIL}
    assert sorted(stopped) == sorted(t.number for t in members), run.text()  # every member, none finished
    assert all(t.user_attrs["reason"] == "interrupted" for t in stopped.values())

    again = subprocess.run(search_cmd() + command, cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = trials_of(db, name)
    assert sum(t.state in FINISHED for t in trials) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, victim in stopped.items():
        retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == number)
        assert retry.state == TrialState.COMPLETE and retry.params == victim.params
        assert retry.user_attrs["resumed_at_epoch"] >= len(victim.intermediate_values) + 1  # no epoch trained twice
        assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
        for step, value in victim.intermediate_values.items():
            assert retry.intermediate_values[step] == value  # the member's own curve, continued
