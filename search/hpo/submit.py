"""`search submit`: the sequence that puts a study on SLURM (search/hpo/slurm.py writes and submits the job).

Every check comes before anything is written: the options (slurm.check), then sbatch's own (a test-only
submission), and only then is the data prepared on the login node (compute nodes often cannot download), the study
created in the store, and the job array submitted.
"""
from __future__ import annotations

from pathlib import Path

from search import env
from search.hpo import artifacts, slurm
from search.hpo.store import Store, locate, mask
from search.hpo.studies import load_study


def submit(study: str, storage: Store | str | None, *, workers: int, gpus: int, cpus: int | None, mem: str | None,
           time_limit: str | None, partition: str | None, account: str | None, sbatch_args: tuple[str, ...],
           pack: int | None, dry_run: bool, allow_changes: bool) -> str:
    """Submit the job array (or, with ``dry_run``, only write its script); returns what the command prints."""
    spec = load_study(study, pack=pack)
    shipped = not Path(study).exists()  # a name of a shipped study; a file is given to the tasks by its full path
    job = slurm.Job(study=study if shipped else str(Path(study).absolute()), name=spec.name, workers=workers,
                    storage=locate(storage), gpus=gpus, cpus=cpus, mem=mem, time=time_limit,
                    partition=partition, account=account, sbatch_args=sbatch_args,
                    artifacts=env.path(artifacts.ENV), pack=pack)
    slurm.check(job)
    if dry_run:
        return slurm.script(job)
    from search.hpo import supervisor  # loads torch, which a dry run does without

    slurm.submit(job, test_only=True)  # sbatch's checks of the options, before the study is written
    supervisor.prepare_data(spec)
    supervisor.ensure_study(spec, job.storage, allow_changes=allow_changes)
    job_id = slurm.submit(job)
    shown = mask(job.url)
    where = f" --storage {shown}" if shown == job.url else "   (with $SEARCH_STORAGE set to the store's URL)"
    return (f"submitted job array {job_id}: {workers} workers on study '{spec.name}' in {shown}, trial files and "
            f"checkpoints in {job.artifact_dir()}\n"
            f"watch it:  squeue -j {job_id}\n"
            f"           search status --study {spec.name}{where}\n")
