"""`search submit` on a real SLURM: the one-node slurmctld + slurmd of deploy/slurm/local.sh (which .ci/run installs
and starts). Job arrays meet their budget on the journal store and on PostgreSQL; a task cancelled mid-trial leaves its
trial to be resumed from its checkpoint by another task; a task warned of its time limit stops its trial, requeues
itself, and the study still meets its budget exactly.

Skipped, with the reason, where SLURM is not installed or does not start; failed instead under
$SEARCH_REQUIRE_SLURM=1 (.ci/run sets it in CI)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.support import pg
from tests.support.cli import cli_env, search_cmd
from tests.support.required import skip_or_fail
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import ONE_LR, write_medmnist_study
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e  # every test here starts real processes

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("SEARCH_SLURM_DIR", "/tmp/search-slurm"))
CONF = STATE / "slurm.conf"


def _slurm_up() -> str | None:
    """Start the local SLURM if it is installed and not running; the reason it cannot be used, or None."""
    try:
        done = subprocess.run(["bash", str(ROOT / "deploy" / "slurm" / "local.sh"), "start"], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "the local SLURM did not start within 120 s (deploy/slurm/local.sh start)"
    if done.returncode != 0:
        return f"no local SLURM: {' '.join((done.stderr or done.stdout).split())}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _slurm() -> None:
    """Started when the first test here runs, not at collection (which every xdist worker does)."""
    why = _slurm_up()
    if why:
        skip_or_fail(why, "SEARCH_REQUIRE_SLURM", "the SLURM tests")

def _study(tmp_path: Path, name: str, *, epochs: int, trials: int) -> Path:
    """Trials of many short epochs (one batch of a small MedMNIST-format file): a stop always falls inside a trial,
    and the whole file costs little CPU on a small machine. No pruner: every trial runs all its epochs."""
    return write_medmnist_study(tmp_path, name, epochs=epochs, trials=trials,
                                space={**ONE_LR, "dropout": {"type": "float", "low": 0.0, "high": 0.5}},
                                fixed={"architecture": "simple_cnn_v1", "batch_size": 256, "optimizer": "adam"})


def _env(**extra: str) -> dict[str, str]:
    return cli_env(SLURM_CONF=str(CONF), SEARCH_HEARTBEAT_S="2", SEARCH_GRACE_S="10", **extra)


def _submit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd() + ["submit", *args], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(), timeout=300)


def _job_id(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("submitted job array "), done.stdout
    job = first.split()[3].rstrip(":")
    assert f"squeue -j {job}" in done.stdout and "search status --study" in done.stdout
    return job


def _queued(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True, env=_env(),
                         timeout=60)
    return out.stdout.split("\n") if out.stdout.strip() else []


def _wait_gone(job: str, timeout: float) -> None:
    try:
        wait_for(lambda: not _queued(job), timeout, f"job {job} to end")
    finally:
        if _queued(job):
            subprocess.run(["scancel", job], env=_env(), timeout=60)


def _running_past_epoch_1(url: str, name: str, until: int | None = None):  # type: ignore[no-untyped-def]
    """A running trial with at least one epoch done (and at most `until`)."""
    return next((t for t in by_state(trials_of(url, name), TrialState.RUNNING)
                 if 1 <= len(t.intermediate_values) <= (until or len(t.intermediate_values))), None)


def _task_of(trial: optuna.trial.FrozenTrial) -> str:
    """ARRAY_TASK (as scancel takes it) of the array task whose worker runs ``trial`` (this machine is the only
    node: the worker's environment says)."""
    pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"


def _assert_resumed(trials: list[optuna.trial.FrozenTrial], victim: int, epochs: int) -> None:
    stopped = trials[victim]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["reason"] == "interrupted"
    retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == victim)
    assert retry.state in FINISHED and retry.params == stopped.params
    # From the checkpoint of the last epoch the stopped task finished: no finished epoch is trained again.
    assert retry.user_attrs["resumed_at_epoch"] >= len(stopped.intermediate_values) + 1
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))
    for step, value in stopped.intermediate_values.items():
        assert retry.intermediate_values[step] == value  # the stopped trial's curve, continued


def _assert_budget(trials: list[optuna.trial.FrozenTrial], budget: int, stopped: list[int], tasks: int) -> None:
    # Met, and overshot by no more than the promise of search/hpo/standalone.py (no supervisor hands out tickets:
    # each of the other tasks may finish the one trial it had started as the budget filled); one task: exactly.
    finished = len(by_state(trials, *FINISHED))
    assert budget <= finished <= budget + tasks - 1, (finished, budget, tasks)
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    assert [t.number for t in by_state(trials, TrialState.FAIL)] == stopped


def test_a_4_task_array_on_the_journal_store_resumes_a_cancelled_task_s_trial(tmp_path):
    url = f"journal://{tmp_path}/study.log"
    spec = _study(tmp_path, "sj", epochs=10, trials=6)
    job = _job_id(_submit(tmp_path, "--study", str(spec), "--workers", "4", "--gpus-per-worker", "0",
                          "--storage", url))
    try:
        victim = wait_for(lambda: _running_past_epoch_1(url, "sj"), 240, "a trial past its first epoch")
        task = _task_of(victim)
        subprocess.run(["scancel", task], env=_env(), check=True, timeout=60)
        _wait_gone(job, 300)
    finally:
        subprocess.run(["scancel", job], env=_env(), timeout=60)
    trials = trials_of(url, "sj")
    _assert_budget(trials, 6, [victim.number], tasks=4)
    _assert_resumed(trials, victim.number, 10)
    assert next(t for t in trials if t.user_attrs.get("resumed_from_trial") == victim.number
                ).user_attrs["resumed_at_epoch"] >= 2  # it was cancelled after its first epoch
    assert "Restarts=0" in _state(task)  # a cancelled task is not requeued
    logs = "".join(p.read_text() for p in tmp_path.glob(f"search-sj-{job}_*.out"))
    assert f"trial {victim.number} was stopped and will resume from its last finished epoch" in logs, logs
    assert "Traceback" not in logs, logs


def _state(job: str) -> str:
    return " ".join(subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=_env(),
                                   timeout=60).stdout.split())


def test_a_task_warned_of_its_time_limit_requeues_itself_and_meets_the_study_s_budget_on_postgresql(tmp_path,
                                                                                                       pg_db):
    """One task, so that the requeued task itself resumes the stopped trial and finishes the budget: a study longer
    than one run of the task meets its budget, exactly."""
    url = pg.url_of(pg_db)
    spec = _study(tmp_path, "sp", epochs=20, trials=3)
    job = _job_id(_submit(tmp_path, "--study", str(spec), "--workers", "1", "--gpus-per-worker", "0",
                          "--storage", url, "--time", "10"))
    try:
        # Early in a trial (at most half its epochs done), so that the warning surely falls inside it.
        victim = wait_for(lambda: _running_past_epoch_1(url, "sp", until=10), 240, "a trial past its first epoch")
        task = _task_of(victim)
        # The warning SLURM sends the task's shell before its time limit (the script's --signal=B:USR1@WARN), sent
        # while a trial runs: SLURM's own comes up to a minute early (its timer's resolution), so at a short limit
        # it could fall before the worker runs any trial.
        subprocess.run(["scancel", "--batch", "--signal=USR1", task], env=_env(), check=True, timeout=60)
        wait_for(lambda: "Restarts=1" in _state(task), 120, "the task to stop its trial and requeue itself")
        _wait_gone(job, 300)  # its second run starts once its credentials expire (deploy/slurm/slurm.conf: 10 s)
    finally:
        subprocess.run(["scancel", job], env=_env(), timeout=60)
    trials = trials_of(url, "sp")
    _assert_budget(trials, 3, [victim.number], tasks=1)  # exactly: one task, stopped and requeued
    _assert_resumed(trials, victim.number, 20)
    state = _state(task)
    assert "Restarts=1" in state and "JobState=COMPLETED" in state, state  # its second run ended well too
    retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == victim.number)
    assert retry.user_attrs["worker"] != victim.user_attrs["worker"]  # resumed by the task's second run
    log = next(tmp_path.glob(f"search-sp-{task}.out")).read_text()
    assert f"trial {victim.number} was stopped and will resume" in log and "(SIGTERM)" in log, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(("args", "says"), [
    (["--workers", "0"], "--workers"),
    (["--time", "soon"], "--time 'soon' is not a SLURM time limit"),
    (["--gpus-per-worker", "2"], "a worker trains one trial at a time on one GPU"),
    (["--sbatch-arg=--no-such-sbatch-option"], "sbatch refused the job"),
    (["--storage", "sqlite:///search.db"], "not SQLite"),
])
def test_a_bad_option_is_one_line_exit_2_and_nothing_is_queued(tmp_path, args, says):
    spec = _study(tmp_path, "bad", epochs=1, trials=1)
    storage = [] if "--storage" in args else ["--storage", f"journal://{tmp_path}/bad.log"]
    gpus = [] if "--gpus-per-worker" in args else ["--gpus-per-worker", "0"]
    done = _submit(tmp_path, "--study", str(spec), *gpus, *storage,
                   *([] if "--workers" in args else ["--workers", "2"]), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    out = (done.stdout + done.stderr).strip()
    assert len(out.splitlines()) == 1 and says in out and "Traceback" not in out, out
    queued = subprocess.run(["squeue", "-h", "--states=all", "-n", "search-bad", "-o", "%i"], capture_output=True,
                            text=True, env=_env(), timeout=60)
    assert queued.returncode == 0 and queued.stdout == "", queued.stdout  # no job of this study, in any state
    assert not list(tmp_path.glob("search-bad-*.out"))


def test_dry_run_prints_the_job_script_and_submits_nothing(tmp_path):
    spec = _study(tmp_path, "dry", epochs=1, trials=1)
    done = _submit(tmp_path, "--study", str(spec), "--workers", "3", "--gpus-per-worker", "1", "--cpus-per-worker",
                   "4", "--mem", "16G", "--time", "4:00:00", "--storage", f"journal://{tmp_path}/dry.log", "--dry-run")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for line in ("#SBATCH --array=0-2", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                 "#SBATCH --time=4:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
        assert line in script.splitlines(), script
    assert f"worker --study {spec} --device cuda" in script
    assert not (tmp_path / "dry.log").exists()  # nothing written, nothing queued
