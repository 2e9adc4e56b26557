"""The `search` command line: parse, call one function, print. No logic lives here."""
from __future__ import annotations

from pathlib import Path

import click

from search import __version__, interrupt, quiet
from search.door import (
    ALLOW_CHANGES,
    DATA_DIR,
    DEVICE,
    PACK,
    STUDY,
    STUDY_FILE,
    TIMEOUT,
    OneLineErrors,
    stops_at_once,
    stops_at_safe_points,
    storage_option,
)
from search.errors import Interrupted
from search.hpo.store import Store
from search.train.data import SPLITS


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="search")
def main() -> None:
    """Hyperparameter search for image classifiers on MNIST and MedMNIST, built on Optuna."""
    quiet.our_log()
    quiet.libraries()


@main.command(short_help="Train a TrainConfig (or evaluate an ensemble); test ACC and AUC.")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json, model.pt and config.yaml (default: a new folder under runs/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the config's epochs.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the config's device).")
@click.option("--seeds", type=click.IntRange(min=1),
              help="Train N times with seeds seed, seed+1, ... (each in OUT/seed-S) and report mean ± sd.")
@click.option("--devices", help="With --seeds: train the seeds in parallel, one process per entry: GPU indices "
                                "among the visible GPUs (0,1; each process sees its card as cuda:0) and cpu (cpu,cpu "
                                "share the cores).")
@stops_at_safe_points
def train(config_file: Path, out: Path | None, epochs: int | None, device: str | None, seeds: int | None,
          devices: str | None) -> None:
    """Train CONFIG.yaml, keep the best validation epoch and report test ACC and AUC. An ensemble folder (or its
    ensemble.yaml, from `search export --ensemble`) is evaluated instead, nothing trained: OUT gets its metrics.json
    and test_predictions.csv, as a run's."""
    from search.train import launch

    done = launch.run(config_file, out, epochs=epochs, device=device, seeds=seeds, devices=devices,
                      on_run=lambda folder, m: click.echo(launch.run_line(m, folder, seeded=seeds is not None)))
    if done.kind != "run":
        click.echo(done.line())


def _spec(study: str, seed: int | None = None, **overrides):  # type: ignore[no-untyped-def]
    import dataclasses

    from search.hpo.studies import load_study

    spec = load_study(study, **overrides)
    return dataclasses.replace(spec, sampler={**spec.sampler, "seed": seed}) if seed is not None else spec


@main.command(short_help="Run a search: N worker processes on one study.")
@STUDY_FILE
@click.option("--workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Worker processes: one per GPU, or sharing the CPU cores.")
@click.option("--trials", type=click.IntRange(min=1), help="Total finished trials for the study (all workers).")
@TIMEOUT
@storage_option()
@click.option("--devices", help="Where the workers run, round-robin: GPU indices among the visible GPUs and cpu, "
                                "e.g. 0,1 or cpu (default: every visible GPU, else the CPU).")
@DATA_DIR
@click.option("--seed", type=int, help="Sampler seed, replacing the study file's (worker k uses seed + k).")
@PACK
@ALLOW_CHANGES
@stops_at_safe_points
def start(study: str, workers: int, trials: int | None, timeout: float | None, storage: Store,
          devices: str | None, data_dir: str | None, seed: int | None, pack: int | None, allow_changes: bool) -> None:
    """Run a search: N workers on one study store until the trial budget is done."""
    try:
        # Loading torch and Optuna takes seconds and writes nothing: a Ctrl-C meanwhile stops it at once.
        with interrupt.raising():
            from search.hpo import supervisor

            spec = _spec(study, data_dir=data_dir, trials=trials, timeout=timeout, seed=seed, pack=pack)
    except KeyboardInterrupt:  # interrupt.Stop
        raise Interrupted.before_start(interrupt.requested()) from None
    raise SystemExit(supervisor.start(spec, storage, workers=workers, devices=devices, echo=click.echo,
                                      allow_changes=allow_changes))



@main.command(short_help="One worker without a supervisor, e.g. on another machine.")
@STUDY_FILE
@storage_option("Study store URL shared by all workers")
@click.option("--trials", type=click.IntRange(min=1), help="Stop once the study has this many finished trials.")
@TIMEOUT
@DEVICE
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for training on the CPU (default: $OMP_NUM_THREADS when set, else the cores divided "
                   "by the workers on this host: $SEARCH_WORKERS_PER_HOST, else the worker slots held now; at "
                   "least 1).")
@DATA_DIR
@click.option("--seed", type=int, help="Sampler seed of this worker, replacing the study file's (default: the "
                                      "study's seed plus a number derived from this worker's host name and pid).")
@PACK
@ALLOW_CHANGES
@stops_at_safe_points
def worker(study: str, storage: Store, trials: int | None, timeout: float | None, device: str,
           threads: int | None, data_dir: str | None, seed: int | None, pack: int | None, allow_changes: bool) -> None:
    """One worker without a supervisor: joins the study, e.g. from another machine."""
    from search.hpo.standalone import standalone

    spec = _spec(study, seed=seed, data_dir=data_dir, trials=trials, timeout=timeout, pack=pack)
    raise SystemExit(standalone(spec, storage, device=device, threads=threads, seeded=seed is not None,
                                allow_changes=allow_changes, echo=click.echo))


@main.command(short_help="Run a search on SLURM: one job array of `search worker` tasks.")
@STUDY_FILE
@click.option("--workers", type=click.IntRange(min=1), required=True, help="Tasks of the job array: one worker each.")
@click.option("--gpus-per-worker", "gpus", type=click.IntRange(min=0), default=1, show_default=True,
              help="GPUs per task (0: train on the CPU).")
@click.option("--cpus-per-worker", "cpus", type=click.IntRange(min=1), help="CPU cores per task (SLURM's default: 1).")
@click.option("--mem", help="Memory per task, e.g. 16G.")
@click.option("--time", "time_limit", metavar="TIME", help="Time limit per task, e.g. 4:00:00 (SLURM's forms).")
@click.option("--partition", help="SLURM partition.")
@click.option("--account", help="SLURM account to charge.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="Any other sbatch option, e.g. --sbatch-arg=--qos=long (repeat for more).")
@storage_option("Study store URL the tasks share: journal:///abs/path or postgresql://")
@click.option("--dry-run", is_flag=True, help="Print the job script; submit nothing.")
@PACK
@ALLOW_CHANGES
@stops_at_once
def submit(study: str, workers: int, gpus: int, cpus: int | None, mem: str | None, time_limit: str | None,
           partition: str | None, account: str | None, sbatch_args: tuple[str, ...], storage: Store,
           dry_run: bool, pack: int | None, allow_changes: bool) -> None:
    """Run a search on SLURM: one job array of N tasks, each a `search worker` on the study."""
    from search.hpo.submit import submit as submitting

    click.echo(submitting(study, storage, workers=workers, gpus=gpus, cpus=cpus, mem=mem, time_limit=time_limit,
                          partition=partition, account=account, sbatch_args=sbatch_args, pack=pack, dry_run=dry_run,
                          allow_changes=allow_changes), nl=False)


FRACTION = click.FloatRange(0, 0.5, max_open=True)


@main.command("init", short_help="A study file for your own images: a folder, a CSV or an .npz.")
@click.argument("data", metavar="DATA")
@click.option("--name", help="The study's name (default: the folder's or file's name).")
@click.option("--size", type=int, help="Image side: 28, 64, 128 or 224 px (default: 64 for 96 px images, else 28).")
@click.option("--val-fraction", type=FRACTION, default=0.1, show_default=True, help="Val share of a class, if drawn.")
@click.option("--test-fraction", type=FRACTION, default=0.1, show_default=True, help="Test share, if drawn.")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of that draw.")
@click.option("--skip-bad-images", "skip_bad", is_flag=True, help="Leave out (and count) unreadable image files.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: studies/NAME.yaml.")
@click.option("--force", is_flag=True, help="Replace a study file that exists.")
@stops_at_safe_points
def init_(data: str, **options) -> None:  # type: ignore[no-untyped-def]
    """Look at DATA (a folder of class folders, a CSV of path,label[,split] rows, or a MedMNIST-layout .npz),
    convert its images once, and write a study file for it (docs/own-data.md)."""
    from search.hpo import init_study

    written = init_study.write(data, **options)
    click.echo(f"{written.summary}\n{written.path} written; run: search start --study {written.name} --workers 2")


@main.command(short_help="A study's progress and best trials, or one trial in detail.")
@STUDY
@storage_option()
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every trial (state, value, parameters, epochs run, seconds) to this CSV file.")
@click.option("--trial", type=click.IntRange(min=0),
              help="One trial: its state, parameters, values per epoch, reason, worker, device and log's end.")
@stops_at_once
def status(study: str, storage: Store, csv_file: Path | None, trial: int | None) -> None:
    """Counts by state, the best trial, the top 5 and the best per architecture; or one trial in detail."""
    from search.results import trials

    loaded = trials.load(study, storage)
    if trial is not None:
        from search.results import detail

        click.echo(detail.describe(loaded, trial, storage))
        return
    written = trials.write_csv(loaded, csv_file) if csv_file is not None else None  # a bad path fails first
    click.echo(trials.summary(loaded))
    if written is not None:
        click.echo(f"{written} trials -> {csv_file}")


@main.command(short_help="Every figure and table of a study and its runs, on one page.")
@STUDY
@storage_option()
@click.option("--run", "runs", multiple=True, metavar="[LABEL=]DIR",
              help="A group of final runs: a `search train` output folder, or a `--seeds` folder; LABEL names it "
                   "(default: the folder's name). Repeat to compare groups: the first is the baseline.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: report-STUDY); files already there are replaced.")
@stops_at_once
def report(study: str, storage: Store, runs: tuple[str, ...], out: Path | None) -> None:
    """Figures (PNG, PDF) and tables (Markdown, LaTeX) of a study and its final runs, on one HTML page."""
    from search.results import trials
    from search.results.report import write_report

    loaded = trials.load(study, storage)
    done = write_report(loaded, list(runs), out or Path(f"report-{loaded.study_name}"))
    click.echo(f"{done['figures']} figures, {done['tables']} tables -> {done['index']}")


@main.command("export", short_help="The best trial as a TrainConfig file (--rerank K: by seeds).")
@STUDY
@storage_option()
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("best.yaml"),
              show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True, help="1 = best, 2 = second...")
@click.option("--trial", "trial_number", type=click.IntRange(min=0),
              help="Export this trial (by number) instead of the K-th best: e.g. one on a Pareto front.")
@click.option("--pareto", is_flag=True,
              help="List the Pareto front of a study with several objectives (trials and values); writes nothing.")
@click.option("--weights", is_flag=True,
              help="Also write the trial's kept weights beside the file (OUT with .pt), as `search train` saves "
                   "model.pt (needs keep_best_weights: true in the study file).")
@click.option("--rerank", "rerank_k", type=click.IntRange(min=1), metavar="K",
              help="Retrain the K best complete trials with --seeds seeds each and export the one with the best mean "
                   "validation metric (the winner's curse of a small validation split).")
@click.option("--seeds", type=click.IntRange(min=1), help="With --rerank: seeds per trial (default 3).")
@click.option("--devices", help="With --rerank: train the K x N runs in parallel, one process per entry: GPU "
                                "indices (0,1) or cpu,cpu, as `search train --devices`.")
@click.option("--rerank-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --rerank: folder for the runs, DIR/trial-N/seed-S (default runs/rerank-STUDY).")
@click.option("--ensemble", "ensemble_m", type=click.IntRange(min=1), metavar="M",
              help="With --rerank: also write the ensemble of the M best reranked trials (all their seeds' kept "
                   "weights, nothing retrained) to --ensemble-dir, and evaluate it.")
@click.option("--ensemble-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --ensemble: the ensemble's folder (default runs/ensemble-STUDY).")
@stops_at_safe_points
def export_cmd(study: str, storage: Store, out: Path, rank: int, trial_number: int | None, pareto: bool,
               weights: bool, rerank_k: int | None, seeds: int | None, devices: str | None,
               rerank_dir: Path | None, ensemble_m: int | None, ensemble_dir: Path | None) -> None:
    """Write the best (or K-th best) trial as a TrainConfig file for `search train`; with --rerank K, the best of the
    K best trials retrained with several seeds each."""
    from search.results import exporting

    given = click.get_current_context().get_parameter_source("rank") != click.core.ParameterSource.DEFAULT
    exporting.export(study, storage, out, rank=rank if given else None, trial_number=trial_number, pareto=pareto,
                     weights=weights, again=exporting.Rerank(rerank_k, seeds, devices, rerank_dir, ensemble_m,
                                                             ensemble_dir), echo=click.echo)


@main.command(short_help="Class probabilities of images from a run or an ensemble.")
@click.argument("model_dir", metavar="RUN_OR_ENSEMBLE_DIR", type=click.Path(path_type=Path))
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("predictions.csv"),
              show_default=True, help="The CSV file: a row per image, its class probabilities and predicted label.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Which split of a MedMNIST-layout .npz INPUT.")
@DEVICE
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead: export the run's network to this ONNX file (a single run; input: normalised float "
                   "images N x C x S x S; output: logits). INPUT is then not read and may be '-'.")
@stops_at_once
def predict(model_dir: Path, source: Path, out: Path, split: str, device: str, onnx_file: Path | None) -> None:
    """Apply a `search train` run (RUN_OR_ENSEMBLE_DIR: its folder, a --seeds folder or an ensemble folder) to
    INPUT: a MedMNIST-layout .npz (its --split), a folder of PNG/JPEG images or one image, each already of the run's
    size and channels. Writes a row per image: the class probabilities and the predicted label."""
    if onnx_file is not None:
        from search.train import onnx_export

        click.echo(onnx_export.export(model_dir, onnx_file))
        return
    from search.train import predict as predicting

    done = predicting.run(model_dir, source, out, split=split, device=device)
    acc = f"; accuracy on its labels {done.acc:.4f}" if done.acc is not None else ""
    by = f"an ensemble of {done.members}" if done.members > 1 else "one model"
    click.echo(f"{done.count} image{'s' if done.count != 1 else ''} predicted by {by}{acc} -> {done.out}")


@main.command(short_help="Queue one trial (a TrainConfig or parameters) in a study.")
@click.option("--study", required=True, help="The study's name in the store (created by `search start`).")
@click.argument("file", metavar="FILE.yaml", type=click.Path(dir_okay=False, path_type=Path))
@storage_option()
@stops_at_once
def enqueue(study: str, file: Path, storage: Store) -> None:
    """Queue one trial in an existing study: FILE.yaml is a TrainConfig file (as `search export` writes) or a
    mapping of some of the study's searched parameters; workers take it before the sampler's own trials."""
    from search.hpo import queue

    done = queue.enqueue_file(study, storage, file)
    params = ", ".join(f"{k}={v}" for k, v in done.params.items())
    after = f", after the {done.ahead} queued before it" if done.ahead else ""
    click.echo(f"trial {done.number} queued in study '{study}' with {params}; "
               + (done.beyond or f"the next free worker takes it{after}"))


@main.command(short_help="The live dashboard (optuna-dashboard) on the study store.")
@storage_option()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--artifacts", "artifacts_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the trials' files (default $SEARCH_ARTIFACTS, else artifacts/ beside a SQLite or journal "
                   "store).")
@stops_at_once
def dashboard(storage: Store, host: str, port: int, artifacts_dir: Path | None) -> None:
    """optuna-dashboard on the study store, with each trial's learning curve and confusion matrix."""
    from search.results.dashboard import serve

    serve(storage, host, port, artifacts_dir, echo=click.echo)


@main.command(short_help="The study files, and the studies in the store.")
@storage_option()
@stops_at_once
def studies(storage: Store) -> None:
    """The study files, and the studies in the store with their trial counts."""
    from search.results.trials import listing

    for line in listing(storage):
        click.echo(line)


@main.command(short_help="Optuna's gRPC storage proxy, for very many workers.")
@storage_option("The database the proxy serves")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0: workers on other machines; the proxy has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True)
@stops_at_once
def proxy(storage: Store, host: str, port: int) -> None:
    """Optuna's gRPC storage proxy in front of the store, for many workers: they use --storage grpc://HOST:PORT."""
    from search.hpo.proxy import database, serve
    from search.hpo.storage import open_storage

    store = database(storage, host, port)
    serve(open_storage(store, heartbeat=False), store, host=host, port=port, echo=click.echo)
