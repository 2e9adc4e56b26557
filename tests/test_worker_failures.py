"""No traceback reaches the terminal from any process: a worker or training process that fails says one line, and
its traceback goes to its trial's log (`search status --trial N`) or, outside any trial, to a log file beside the
trials' files. Real processes, real faults: a memory limit that the supervisor fits in but a worker loading torch
does not, a run folder that cannot be made, a worker killed by SIGSEGV in the middle of a trial."""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e  # every test here starts real processes

# Address space for a whole `search` process: the supervisor (Optuna, SQLAlchemy, no torch) fits in it; a
# process that loads torch's libraries does not, as in a login node's or a container's `ulimit -v`.
LIMIT = 1 << 30
QUIET_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.fixture(scope="module")
def torch_needs_more_than_the_limit() -> None:
    probe = subprocess.run([sys.executable, "-c", "import torch"], preexec_fn=_limited, capture_output=True,
                           env=cli_env(**QUIET_THREADS), timeout=120)
    if probe.returncode == 0:
        pytest.skip(f"this torch build loads within {LIMIT >> 20} MiB of address space: no fault to inject")


def limited_search(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd() + args, cwd=cwd, capture_output=True, text=True, preexec_fn=_limited,
                          env=cli_env(**QUIET_THREADS), timeout=600)


def logged(output: str, cwd: Path) -> list[Path]:
    """The log files the output's lines name (relative to ``cwd``), each checked to hold a traceback."""
    paths = [cwd / p for p in re.findall(r"traceback in (\S+\.log)", output)]
    assert paths, output
    for path in paths:
        assert "Traceback (most recent call last)" in path.read_text(), path
    return paths


def test_a_supervised_worker_that_fails_outside_any_trial_says_one_line(tmp_path, torch_needs_more_than_the_limit):
    spec = study_file(tmp_path, "nomem", epochs=1, trials=2)
    proc = limited_search(["start", "--study", str(spec), "--workers", "1"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    failed = [line for line in output.splitlines() if re.match(r"worker \d+ \(pid \d+\) failed: ", line)]
    assert len(failed) >= 2, output  # the first worker and a replacement, each one line with its reason
    assert "search stopped: workers keep dying" in output
    paths = logged(output, tmp_path)
    assert {p.parent for p in paths} == {tmp_path / "artifacts"}  # beside the trials' files
    assert all(p.name.startswith("search-worker-") for p in paths)
    assert not trials_of(tmp_path / "search.db", "nomem")  # no trial was started, none is left RUNNING


def test_a_standalone_worker_that_fails_outside_any_trial_says_one_line(tmp_path, torch_needs_more_than_the_limit):
    spec = study_file(tmp_path, "solo", epochs=1, trials=2)
    proc = limited_search(["worker", "--study", str(spec), "--device", "cpu"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: worker "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    [path] = logged(proc.stderr, tmp_path)
    assert path.parent == tmp_path / "artifacts" and path.name.startswith("search-worker-")


def test_a_training_process_that_fails_says_one_line_and_keeps_the_finished_seeds(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nepochs: 1\nbatch_size: 64\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "seed-1").write_text("")  # a file where seed 1's run folder must go
    proc = run(["train", "c.yaml", "--out", "out", "--seeds", "2", "--devices", "cpu,cpu", "--device", "cpu"],
               tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "the process training seed 1" in errors[0] and "FileExistsError" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    [path] = logged(errors[0], tmp_path)
    assert path.parent == out and path.name.startswith("search-train-")


def test_a_worker_killed_in_a_trial_puts_it_in_the_trials_log(tmp_path):
    spec = study_file(tmp_path, "segv", epochs=2, trials=1)
    db = tmp_path / "search.db"
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())

    def running():
        try:
            trials = trials_of(db, "segv") if db.exists() else []
        except KeyError:  # the study is not created yet
            return None
        return next((t for t in by_state(trials, TrialState.RUNNING) if "config" in t.user_attrs), None)

    victim = wait_for(running, 300, "a running trial")
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGSEGV)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in out, out
    line = next(line for line in out.splitlines() if line.startswith(f"trial {victim.number} failed: "))
    assert "died (killed by SIGSEGV)" in line and f"--trial {victim.number}" in line, out
    status = run(["status", "--study", "segv", "--trial", str(victim.number)], tmp_path)
    assert status.returncode == 0, status.stderr
    assert "killed by SIGSEGV): it left no Python traceback" in status.stdout, status.stdout


def test_a_command_that_fails_unexpectedly_says_one_line(tmp_path, torch_needs_more_than_the_limit):
    """`search train` itself cannot load torch: the command's last resort, one line and the traceback in a file."""
    (tmp_path / "c.yaml").write_text("dataset: digits\nepochs: 1\n")
    proc = limited_search(["train", "c.yaml", "--out", "run", "--device", "cpu"], tmp_path)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    [path] = [tmp_path / p for p in re.findall(r"its traceback is in (\S+\.log)", proc.stderr)]
    assert path.parent == tmp_path and "Traceback (most recent call last)" in path.read_text()
    assert not (tmp_path / "run").exists()
