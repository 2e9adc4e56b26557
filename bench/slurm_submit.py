"""From `search submit` to the first trial: seconds until the job array is queued, until its first task starts
(SLURM's StartTime) and until the first trial starts (its datetime_start in the store), on the local SLURM of
deploy/slurm/local.sh (started here if needed). The study is the tiny digits study of the tests, on a journal file.

    python bench/slurm_submit.py                  # 4 workers, 3 runs
    python bench/slurm_submit.py --workers 2 --runs 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cli import cli_env, search_cmd  # noqa: E402
from tests.support.store import trials_of  # noqa: E402
from tests.support.studies import study_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(os.environ.get("SEARCH_SLURM_DIR", "/tmp/search-slurm")) / "slurm.conf"


def first_trial_start(url: str, timeout: float = 600) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        trials = trials_of(url, "tiny")  # none before the file and the study are there
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        if starts:
            return min(starts)
        time.sleep(0.1)
    raise SystemExit("no trial started")


def task_start(job: str, env: dict[str, str]) -> float:
    for _ in range(600):
        out = subprocess.run(["squeue", "-h", "-j", job, "-t", "R", "-o", "%S"], capture_output=True, text=True,
                             env=env).stdout.split()
        if out:
            return min(time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) for s in out)
        time.sleep(0.1)
    raise SystemExit("no task started")


def one_run(workers: int) -> tuple[float, float, float]:
    env = cli_env(SLURM_CONF=str(CONF))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = study_file(folder, "tiny", epochs=1, trials=workers)
        url = f"journal://{folder}/tiny.log"
        began = time.time()
        done = subprocess.run(search_cmd() + ["submit", "--study", str(spec), "--workers", str(workers),
                                              "--gpus-per-worker", "0", "--storage", url],
                              cwd=folder, capture_output=True, text=True, env=env)
        queued = time.time()
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        job = done.stdout.split()[3].rstrip(":,")
        try:
            started = task_start(job, env)
            first = first_trial_start(url)
        finally:
            subprocess.run(["scancel", job], env=env)
        return queued - began, started - began, first - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run(["bash", str(ROOT / "deploy" / "slurm" / "local.sh"), "start"], check=True)
    runs = []
    for i in range(args.runs):
        queued, started, first = one_run(args.workers)
        runs.append(first)
        print(f"run {i + 1}: queued after {queued:.1f} s, first task running after {started:.1f} s "
              f"(SLURM's whole seconds), first trial started after {first:.1f} s")
    print(f"submit -> first trial: median {statistics.median(runs):.1f} s over {len(runs)} runs "
          f"({args.workers} one-CPU tasks, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
