"""`search submit`: a search as one SLURM job array, each task one `search worker` on the same study.

The job is a generated sbatch script (printed by --dry-run), not submitit's pickled callables: a task runs the same
`search worker` command a user would type, so the script can be read, kept and resubmitted by hand; nothing
pickled crosses machines (files read back are data, never code); and resuming needs nothing of submitit's: the
study store and the trials' checkpoints already hold all the state, so a task that is stopped, or requeued after
a preemption, loses at most the epoch in flight.

Stopping: SLURM sends SIGTERM at the time limit, at a scancel and at a preemption (then SIGKILL after the
cluster's KillWait), and USR1 a little before the time limit (``--signal=B:USR1@WARN``: a quarter of the limit, at
most two minutes). The script's shell passes either on to the worker as SIGTERM: the worker stops its trial at the
next batch and queues it again in the store (search/hpo/standalone.py), and another task resumes it from its
checkpoint. After the warning the shell also requeues its own task (`scontrol requeue`), which joins the study
again when SLURM starts it, so a study longer than the time limit still meets its budget; a preempted task is
requeued by SLURM itself (`--requeue`). A task killed outright (node failure) stops beating: its trial is failed
and retried through the store's heartbeat.

GPUs: ``--gres=gpu:1`` per task, and the worker trains on the GPU SLURM allocated to it, through the
CUDA_VISIBLE_DEVICES SLURM sets (cuda:0 inside the task); no physical index is chosen here.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from search.errors import SearchError
from search.hpo.store import Store, mask

# sbatch's --time forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2})$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Job:
    """What `search submit` asks SLURM for."""

    study: str  # what the tasks pass to `search worker --study`: a shipped study's name or an absolute path
    name: str  # the study's name in the store
    workers: int
    storage: Store  # the study store (its URL given to the tasks through the environment, never in the script)
    gpus: int = 1
    cpus: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)
    folder: Path = field(default_factory=Path.cwd)  # where the tasks start and write their logs
    artifacts: Path | None = None  # the trials' files and checkpoints, a folder every node reaches
    pack: int | None = None  # `search submit --pack K`, passed on to each task's worker (None: the study file's)

    @property
    def url(self) -> str:
        """The store's URL as the tasks on other nodes reach it (Store.for_cluster)."""
        return self.storage.for_cluster().url

    def artifact_dir(self) -> Path:
        """``artifacts``, else the store's own default (beside a journal file), else artifacts/ in ``folder``:
        without one the tasks keep no checkpoints, and a stopped trial would start again from epoch 1."""
        from search.hpo.artifacts import artifact_dir

        return (self.artifacts or artifact_dir(self.url) or self.folder / "artifacts").absolute()


def check(job: Job) -> None:
    """Every option, before anything is written or queued: one line for the first that is wrong."""
    if job.gpus > 1:
        raise SearchError(f"--gpus-per-worker {job.gpus}: a worker trains one trial at a time on one GPU; for more "
                          f"GPUs ask for more workers (--workers {job.workers * job.gpus} --gpus-per-worker 1)")
    if job.time is not None and not _TIME.match(job.time):
        raise SearchError(f"--time {job.time!r} is not a SLURM time limit; e.g. 90 (minutes), 4:00:00 or 1-12:00:00")
    if job.mem is not None and not _MEMORY.match(job.mem):
        raise SearchError(f"--mem {job.mem!r} is not a SLURM memory size; e.g. 16G or 8000M")
    for option, value in (("--partition", job.partition), ("--account", job.account)):
        if value is not None and not _NAME.match(value):
            raise SearchError(f"{option} {value!r} is not a SLURM name (letters, digits, '_', '.', '-')")
    for arg in job.sbatch_args:
        if not arg.startswith("-") or "\n" in arg:
            raise SearchError(f"--sbatch-arg {arg!r} is not an sbatch option; e.g. --sbatch-arg=--qos=long")
    job.storage.for_cluster()  # the store last: one line for the first option that is wrong, in the usual order


def launcher() -> str:
    """The `search` command the tasks run: this installation's, by its absolute path (the nodes share it)."""
    here = Path(sys.executable).with_name("search")
    found = str(here) if here.exists() else shutil.which("search")
    return shlex.quote(found) if found else f"{shlex.quote(sys.executable)} -m search"


def script(job: Job) -> str:
    """The sbatch script of the job array."""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=search-{job.name}",
             f"#SBATCH --array=0-{job.workers - 1}",
             "#SBATCH --ntasks=1",
             f"#SBATCH --chdir={job.folder}",
             f"#SBATCH --output={job.folder}/search-{job.name}-%A_%a.out",
             "#SBATCH --open-mode=append",  # a requeued task's log goes on in the same file
             "#SBATCH --requeue"]
    if job.cpus is not None:
        lines.append(f"#SBATCH --cpus-per-task={job.cpus}")
    if job.gpus:
        lines.append(f"#SBATCH --gres=gpu:{job.gpus}")
    for option, value in (("mem", job.mem), ("time", job.time), ("partition", job.partition),
                          ("account", job.account)):
        if value is not None:
            lines.append(f"#SBATCH --{option}={value}")
    if not any(arg.startswith("--signal") for arg in job.sbatch_args):
        lines.append(f"#SBATCH --signal=B:USR1@{warning(job.time)}")
    lines += [f"#SBATCH {arg}" for arg in job.sbatch_args]
    device = "cuda" if job.gpus else "cpu"
    lines += [
        "",
        f"# The study store, {mask(job.url)}, comes in $SEARCH_STORAGE from the environment of `search submit`",
        "# (sbatch exports it), so that no password is written here.",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "# The trials' files and the checkpoints a stopped trial resumes from:",
        f"export SEARCH_ARTIFACTS={shlex.quote(str(job.artifact_dir()))}",
        f"{launcher()} worker --study {shlex.quote(job.study)} --device {device}"
        f"{f' --pack {job.pack}' if job.pack is not None else ''} &",
        _SUPERVISE,
    ]
    return "\n".join(lines)


# The worker runs in the background so that this shell can pass SLURM's signals on and, after the warning before
# the time limit, requeue its task. A signal ends `wait` early: it is called again until the worker has ended.
_SUPERVISE = """\
worker=$!
requeue=0
trap 'requeue=1; kill -TERM "$worker" 2>/dev/null' USR1
trap 'kill -TERM "$worker" 2>/dev/null' TERM INT
while :; do
    wait "$worker"
    status=$?
    kill -0 "$worker" 2>/dev/null || break
done
if [ "$requeue" = 1 ] && [ "$status" != 0 ]; then
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$status"
"""


def warning(limit: str | None) -> int:
    """Seconds before the time limit at which SLURM warns the task: a quarter of the limit, 10 s to 2 minutes."""
    if limit is None:
        return 120
    days, _, clock = limit.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        seconds = int(days) * 86400 + sum(v * u for v, u in zip(parts, (3600, 60, 1)))
    else:  # minutes, minutes:seconds, hours:minutes:seconds
        seconds = sum(v * u for v, u in zip(reversed(parts), (1, 60, 3600)))
        seconds = seconds * 60 if len(parts) == 1 else seconds
    return max(10, min(120, seconds // 4))


def submit(job: Job, *, test_only: bool = False) -> str:
    """Queue the job array; returns its job id. ``test_only``: sbatch checks the script and its options and queues
    nothing (--test-only). sbatch's own refusal is one line, and nothing is queued then."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SearchError("sbatch is not on the PATH: run search submit on a SLURM login node")
    env = {**os.environ, "SEARCH_STORAGE": job.url}
    try:
        done = subprocess.run([sbatch, "--test-only" if test_only else "--parsable", "--export=ALL"],
                              input=script(job), text=True, capture_output=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        raise SearchError("sbatch did not answer within 120 s; is slurmctld reachable? (try: sinfo)") from None
    if done.returncode != 0:
        said = next((line for line in (done.stderr + done.stdout).splitlines() if line.strip()), "")
        for prefix in ("sbatch: ", "error: "):
            said = said.strip().removeprefix(prefix)
        raise SearchError(f"sbatch refused the job: {said or f'exit status {done.returncode}'}")
    return done.stdout.strip().split(";")[0]
