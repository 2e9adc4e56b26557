"""The `search` command line: parse, call one function, print. No logic lives here."""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import click

from search import __version__, interrupt, quiet
from search.errors import Interrupted, SearchError, store_fault
from search.hpo.urls import DEFAULT_STORAGE

# `search --help` lists the commands in the order a user meets them; a command left out comes last.
COMMAND_ORDER = ("start", "status", "dashboard", "export", "train", "report", "predict", "enqueue", "worker", "submit",
                 "studies", "proxy")


class _OneLineErrors(click.Group):
    """The one place that turns errors into what the user sees: a user error as one line ("Error: ...") and its
    exit code (2, or 130 for an interrupted command); a usage error (a bad option value) too, without the usage
    block. A stop signal (search/interrupt.py) ends every command with one line and exit status 130, whenever it
    came."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in COMMAND_ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return self._invoke(ctx)
        except click.UsageError as err:
            err.ctx = None
            err.message = " ".join(err.message.split())  # one line, whatever line breaks the bad value held
            raise
        except SearchError as err:
            raise _one_line(err) from None
        except Exception:
            # The store failed under a library call, which then failed in its own clean-up: the store's line says
            # what happened and what to do (search/errors.py: StoreFault).
            fault = store_fault()
            if fault is None:
                raise
            raise _one_line(fault) from None

    def _invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            result = super().invoke(ctx)
        except KeyboardInterrupt:  # interrupt.Stop, raised where stopping is safe
            raise Interrupted(f"interrupted ({interrupt.requested() or 'SIGINT'})") from None
        return result


# Every command is one of two kinds (search/interrupt.py), said by its decorator below.
def _stops_at_safe_points(fn):  # type: ignore[no-untyped-def]
    """For commands with long work: a stop signal is recorded and polled at the work's safe points; one that came
    after the last of them still ends the command with exit 130, its work done and saved."""
    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = fn(*args, **kwargs)
        if interrupt.requested():
            raise Interrupted(f"interrupted ({interrupt.requested()}) as the command ended; its work is complete")
        return result

    run.stops = "at safe points"  # type: ignore[attr-defined]
    return run


def _one_line(err: SearchError) -> click.ClickException:
    shown = click.ClickException(err.message)
    shown.exit_code = err.exit_code
    return shown


def _stops_at_once(fn):  # type: ignore[no-untyped-def]
    """For commands that have no long work to finish cleanly: the first Ctrl-C stops them where they are."""
    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        with interrupt.raising():
            return fn(*args, **kwargs)

    run.stops = "at once"  # type: ignore[attr-defined]
    return run


PACK = click.option("--pack", type=click.IntRange(min=1), metavar="K",
                    help="Train up to K trials at once as one fused model, each still a trial of its own (replaces "
                         "the study file's pack; 1: one at a time). See docs/packs.md.")
ALLOW_CHANGES = click.option(
    "--allow-changes", is_flag=True,
    help="Go on with a study although its file differs from the definition it was created with (recorded).")


def storage_option(what: str = "Study store URL"):  # type: ignore[no-untyped-def]
    """The --storage option of every command that opens the study store (only the first words of its help differ),
    with --allow-network-sqlite beside it."""
    url = click.option("--storage", help=f"{what} (default $SEARCH_STORAGE or {DEFAULT_STORAGE}; on a shared "
                                         f"filesystem: journal:///abs/path/study.log).")
    allow = click.option("--allow-network-sqlite", is_flag=True, expose_value=False, callback=_allow_network_sqlite,
                         help="Use a SQLite store on a network filesystem (NFS, Lustre, GPFS, ...) although its "
                              "locking is unsafe there.")
    return lambda fn: url(allow(fn))


def _allow_network_sqlite(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # Through the environment, so that the workers this command starts allow it too.
    if value:
        os.environ["SEARCH_ALLOW_NETWORK_SQLITE"] = "1"


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
@_stops_at_safe_points
def train(config_file: Path, out: Path | None, epochs: int | None, device: str | None, seeds: int | None,
          devices: str | None) -> None:
    """Train CONFIG.yaml, keep the best validation epoch and report test ACC and AUC. An ensemble folder (or its
    ensemble.yaml, from `search export --ensemble`) is evaluated instead, nothing trained: OUT gets its metrics.json
    and test_predictions.csv, as a run's."""
    from search.train import config

    if _evaluate_ensemble(config_file, out, epochs, device, seeds, devices):
        return
    if devices is not None and seeds is None:
        raise SearchError("--devices needs --seeds N: it spreads the seeds over one process per device; "
                          "a single run takes --device")
    cfg = config.load(config_file, epochs=epochs, device=device)
    if out is None:
        out = Path("runs") / f"{cfg.dataset}-{cfg.architecture}-{time.strftime('%Y%m%d-%H%M%S')}"

    def line(folder: Path, m: dict) -> None:  # type: ignore[type-arg]
        seed = f" seed {m['seed']}" if seeds is not None else ""
        click.echo(f"{cfg.dataset} {cfg.architecture}{seed}: test_acc {m['test_acc']:.4f} "
                   f"test_auc {m['test_auc']:.4f} (best epoch {m['best_epoch']}/{m['epochs']}, val_acc "
                   f"{m['val_acc']:.4f}, {m['params']:,} params, {m['seconds']:.1f} s on {m['device']}) -> {folder}")

    try:
        _train(cfg, out, seeds, devices, line)
    except KeyboardInterrupt:  # interrupt.Stop from the training loop
        kept = f"the seeds that finished are kept in {out}" if seeds is not None else "nothing was saved"
        raise Interrupted(f"interrupted ({interrupt.requested()}): the run in progress was stopped; {kept}") from None


def _evaluate_ensemble(path: Path, out: Path | None, epochs: int | None, device: str | None, seeds: int | None,
                       devices: str | None) -> bool:
    """`search train ENSEMBLE`: False when ``path`` is no ensemble (a config to train)."""
    from search.train import ensemble

    if not ensemble.is_ensemble(path):
        return False
    used = [name for name, v in (("--epochs", epochs), ("--seeds", seeds), ("--devices", devices)) if v is not None]
    if used:
        raise SearchError(f"{path} is an ensemble: `search train` evaluates it, training nothing, so {used[0]} does "
                          f"not apply (valid with an ensemble: --out, --device)")
    out = out or Path("runs") / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "metrics.json").exists():
        raise SearchError(f"{out} already holds a finished run (metrics.json); choose another --out")
    m = ensemble.evaluate(path, out, device)
    click.echo(ensemble_line(m, out))
    return True


def ensemble_line(m: dict, out: Path) -> str:  # type: ignore[type-arg]
    from search.train.replicates import mean_sd

    each = mean_sd([e["test_acc"] for e in m["members"]])
    spread = f" ± {each['sd']:.4f}" if each["sd"] is not None else ""
    return (f"{m['dataset']} {m['architecture']}: test_acc {m['test_acc']:.4f} test_auc {m['test_auc']:.4f} (val_acc "
            f"{m['val_acc']:.4f}; its members' test_acc {each['mean']:.4f}{spread}; {m['seconds']:.1f} s on "
            f"{m['device']}) -> {out}")


def _train(cfg, out: Path, seeds: int | None, devices: str | None, line) -> None:  # type: ignore[no-untyped-def]
    from search.train import engine, parallel, replicates

    if seeds is not None:
        if devices is not None:
            s = parallel.train_seeds(cfg, out, seeds, devices, on_run=line)
        else:
            s = replicates.train_seeds(cfg, out, seeds, on_run=line)
        sd = lambda k: f" ± {s[k]['sd']:.4f}" if s[k]["sd"] is not None else ""  # noqa: E731
        e = s.get("ensemble")
        both = (f"; seed ensemble (mean of the {seeds} runs' probabilities): test_acc {e['test_acc']:.4f} test_auc "
                f"{e['test_auc']:.4f}" if e else "")
        click.echo(f"{cfg.dataset} {cfg.architecture}, {seeds} seeds: test_acc {s['test_acc']['mean']:.4f}"
                   f"{sd('test_acc')} test_auc {s['test_auc']['mean']:.4f}{sd('test_auc')} (mean ± sample sd){both} "
                   f"-> {out / 'summary.json'}")
        return
    if (out / "metrics.json").exists():
        raise SearchError(f"{out} already holds a finished run (metrics.json); choose another --out")
    line(out, engine.train(cfg, out))


def _spec(study: str, seed: int | None = None, **overrides):  # type: ignore[no-untyped-def]
    import dataclasses

    from search.hpo.studies import load_study

    spec = load_study(study, **overrides)
    return dataclasses.replace(spec, sampler={**spec.sampler, "seed": seed}) if seed is not None else spec


@main.command(short_help="Run a search: N worker processes on one study.")
@click.option("--study", required=True, help="A study name (studies/NAME.yaml) or a path to a study file.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes: one per GPU, or sharing the CPU cores.")
@click.option("--trials", type=click.IntRange(min=1), help="Total finished trials for the study (all workers).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds before no new trial starts.")
@storage_option()
@click.option("--devices", help="Where the workers run, round-robin: GPU indices among the visible GPUs and cpu, "
                                "e.g. 0,1 or cpu (default: every visible GPU, else the CPU).")
@click.option("--data-dir", help="Folder holding the dataset files.")
@click.option("--seed", type=int, help="Sampler seed, replacing the study file's (worker k uses seed + k).")
@PACK
@ALLOW_CHANGES
@_stops_at_safe_points
def start(study: str, workers: int, trials: int | None, timeout: float | None, storage: str | None,
          devices: str | None, data_dir: str | None, seed: int | None, pack: int | None, allow_changes: bool) -> None:
    """Run a search: N workers on one study store until the trial budget is done."""
    from search.hpo.urls import resolve_url

    try:
        # Loading torch and Optuna takes seconds and writes nothing: a Ctrl-C meanwhile stops it at once.
        with interrupt.raising():
            from search.hpo import supervisor

            spec = _spec(study, data_dir=data_dir, trials=trials, timeout=timeout, seed=seed, pack=pack)
    except KeyboardInterrupt:  # interrupt.Stop
        raise Interrupted.before_start(interrupt.requested()) from None
    raise SystemExit(supervisor.start(spec, resolve_url(storage), workers=workers, devices=devices, echo=click.echo,
                                      allow_changes=allow_changes))



@main.command(short_help="One worker without a supervisor, e.g. on another machine.")
@click.option("--study", required=True, help="A study name (studies/NAME.yaml) or a path to a study file.")
@storage_option("Study store URL shared by all workers")
@click.option("--trials", type=click.IntRange(min=1), help="Stop once the study has this many finished trials.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds before no new trial starts.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for training on the CPU (default: $OMP_NUM_THREADS when set, else the cores divided "
                   "by the workers on this host: $SEARCH_WORKERS_PER_HOST, else the worker slots held now; at "
                   "least 1).")
@click.option("--data-dir", help="Folder holding the dataset files.")
@click.option("--seed", type=int, help="Sampler seed of this worker, replacing the study file's (default: the "
                                      "study's seed plus a number derived from this worker's host name and pid).")
@PACK
@ALLOW_CHANGES
@_stops_at_safe_points
def worker(study: str, storage: str | None, trials: int | None, timeout: float | None, device: str,
           threads: int | None, data_dir: str | None, seed: int | None, pack: int | None, allow_changes: bool) -> None:
    """One worker without a supervisor: joins the study, e.g. from another machine."""
    from search.hpo.standalone import standalone

    spec = _spec(study, seed=seed, data_dir=data_dir, trials=trials, timeout=timeout, pack=pack)
    raise SystemExit(standalone(spec, storage, device=device, threads=threads, seeded=seed is not None,
                                allow_changes=allow_changes, echo=click.echo))


@main.command(short_help="Run a search on SLURM: one job array of `search worker` tasks.")
@click.option("--study", required=True, help="A study name (studies/NAME.yaml) or a path to a study file.")
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
@_stops_at_once
def submit(study: str, workers: int, gpus: int, cpus: int | None, mem: str | None, time_limit: str | None,
           partition: str | None, account: str | None, sbatch_args: tuple[str, ...], storage: str | None,
           dry_run: bool, pack: int | None, allow_changes: bool) -> None:
    """Run a search on SLURM: one job array of N tasks, each a `search worker` on the study."""
    from search import env
    from search.hpo import slurm
    from search.hpo.urls import mask, resolve_url

    spec = _spec(study, pack=pack)
    shipped = not Path(study).exists()  # a name of a shipped study; a file is given to the tasks by its full path
    job = slurm.Job(study=study if shipped else str(Path(study).absolute()), name=spec.name, workers=workers,
                    storage=slurm.absolute(resolve_url(storage)), gpus=gpus, cpus=cpus, mem=mem, time=time_limit,
                    partition=partition, account=account, sbatch_args=sbatch_args,
                    artifacts=env.path("SEARCH_ARTIFACTS"), pack=pack)
    slurm.check(job)
    if dry_run:
        click.echo(slurm.script(job), nl=False)
        return
    from search.hpo import supervisor

    slurm.submit(job, test_only=True)  # sbatch's checks of the options, before the study is written
    supervisor.prepare_data(spec)  # on the login node: compute nodes often cannot download
    supervisor.ensure_study(spec, job.storage, allow_changes=allow_changes)
    job_id = slurm.submit(job)
    click.echo(f"submitted job array {job_id}: {workers} workers on study '{spec.name}' in {mask(job.storage)}, "
               f"trial files and checkpoints in {job.artifact_dir()}")
    click.echo(f"watch it:  squeue -j {job_id}")
    shown = mask(job.storage)
    where = f" --storage {shown}" if shown == job.storage else "   (with $SEARCH_STORAGE set to the store's URL)"
    click.echo(f"           search status --study {spec.name}{where}")


@main.command("init", short_help="Write a study file for your own images (a folder, a CSV or an .npz).")
@click.argument("data", metavar="DATA")
@click.option("--name", help="The study's name (default: the folder's or file's name).")
@click.option("--size", type=int, help="Image side in pixels: 28, 64, 128 or 224 (default: 64 for images of 96 px "
                                       "and more, else 28).")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5, max_open=True), default=0.1, show_default=True,
              help="Share of each class drawn into val where the data name no val split.")
@click.option("--test-fraction", type=click.FloatRange(0, 0.5, max_open=True), default=0.1, show_default=True,
              help="Share of each class drawn into test where the data name no test split.")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of that draw.")
@click.option("--skip-bad-images", is_flag=True, help="Leave out (and count) files that are no readable image.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the study file (default: studies/NAME.yaml).")
@click.option("--force", is_flag=True, help="Replace a study file that exists.")
@_stops_at_safe_points
def init_(data: str, name: str | None, size: int | None, val_fraction: float, test_fraction: float, split_seed: int,
          skip_bad_images: bool, out: Path | None, force: bool) -> None:
    """Look at DATA (a folder of class folders, a CSV of path,label[,split] rows, or a MedMNIST-layout .npz),
    convert its images once, and write a study file for it (docs/own-data.md)."""
    from search.hpo import init_study

    written = init_study.write(data, name=name, size=size, out=out, force=force, val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=split_seed, skip_bad=skip_bad_images)
    click.echo(f"{written.summary}\n{written.path} written; run: search start --study {written.name} --workers 2")


@main.command(short_help="A study's progress and best trials, or one trial in detail.")
@click.option("--study", required=True)
@storage_option()
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every trial (state, value, parameters, epochs run, seconds) to this CSV file.")
@click.option("--trial", type=click.IntRange(min=0),
              help="One trial: its state, parameters, values per epoch, reason, worker, device and log's end.")
@_stops_at_once
def status(study: str, storage: str | None, csv_file: Path | None, trial: int | None) -> None:
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
@click.option("--study", required=True)
@storage_option()
@click.option("--run", "runs", multiple=True, metavar="[LABEL=]DIR",
              help="A group of final runs: a `search train` output folder, or a `--seeds` folder; LABEL names it "
                   "(default: the folder's name). Repeat to compare groups: the first is the baseline.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: report-STUDY); files already there are replaced.")
@_stops_at_once
def report(study: str, storage: str | None, runs: tuple[str, ...], out: Path | None) -> None:
    """Figures (PNG, PDF) and tables (Markdown, LaTeX) of a study and its final runs, on one HTML page."""
    from search.results import trials
    from search.results.report import write_report

    loaded = trials.load(study, storage)
    done = write_report(loaded, list(runs), out or Path(f"report-{loaded.study_name}"))
    click.echo(f"{done['figures']} figures, {done['tables']} tables -> {done['index']}")


@main.command("export", short_help="The best trial as a TrainConfig file (--rerank K: by seeds).")
@click.option("--study", required=True)
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
@_stops_at_safe_points
def export_cmd(study: str, storage: str | None, out: Path, rank: int, trial_number: int | None, pareto: bool,
               weights: bool, rerank_k: int | None, seeds: int | None, devices: str | None,
               rerank_dir: Path | None, ensemble_m: int | None, ensemble_dir: Path | None) -> None:
    """Write the best (or K-th best) trial as a TrainConfig file for `search train`; with --rerank K, the best of the
    K best trials retrained with several seeds each."""
    from search.results import detail, trials
    from search.train.config import atomic_write

    ranked = click.get_current_context().get_parameter_source("rank") != click.core.ParameterSource.DEFAULT
    trials.check_export_options(rank if ranked else None, trial_number, pareto, weights, rerank_k,
                                {"--seeds": seeds, "--devices": devices, "--rerank-dir": rerank_dir,
                                 "--ensemble": ensemble_m, "--ensemble-dir": ensemble_dir})
    if ensemble_dir is not None and ensemble_m is None:
        raise SearchError("--ensemble-dir needs --ensemble M: it names the ensemble's folder")
    with interrupt.raising():  # no long work here: the first Ctrl-C stops it at once
        loaded = trials.load(study, storage)
        if pareto:
            click.echo("\n".join(trials.pareto_lines(loaded)))
            return
        if rerank_k is None:
            # missing weights: one line, nothing written
            model = detail.kept_weights(loaded, storage, rank, trial_number) if weights else None
            cfg, trial = trials.export(loaded, out, rank, trial_number)
            what = f"trial {trial.number} ({trials.value_text(loaded, trial)}, {cfg.architecture}) -> {out}"
            if model is not None:
                atomic_write(out.with_suffix(".pt"), lambda path: path.write_bytes(model))
                click.echo(f"{what}, its weights -> {out.with_suffix('.pt')}")
                return
            click.echo(f"{what}; train it with: search train {out}")
            return
    # --rerank trains: it stops at the training loop's safe points, as `train` does, keeping the trials that finished
    from search.results import rerank  # loads torch, which a plain export does without

    folder = rerank_dir if rerank_dir is not None else rerank.default_dir(loaded)
    metric = loaded.user_attrs.get("metric", "value")
    try:
        together = (ensemble_m, ensemble_dir or rerank.default_ensemble_dir(loaded)) if ensemble_m else None
        done = rerank.rerank(loaded, out, rerank_k, seeds or 3, devices=devices, rerank_dir=folder,
                             on_run=lambda n, path, m: click.echo(rerank.run_line(n, path, m, metric)),
                             say=click.echo, ensemble=together)
    except KeyboardInterrupt:  # interrupt.Stop from the training loop
        raise Interrupted(f"interrupted ({interrupt.requested() or 'SIGINT'}): the run in progress was stopped; the "
                          f"trial folders that finished (with summary.json) are kept in {folder}; nothing was "
                          f"exported") from None
    click.echo("\n".join(rerank.table(done)))


@main.command(short_help="Class probabilities of images from a run or an ensemble.")
@click.argument("model_dir", metavar="RUN_OR_ENSEMBLE_DIR", type=click.Path(path_type=Path))
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("predictions.csv"),
              show_default=True, help="The CSV file: a row per image, its class probabilities and predicted label.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Which split of a MedMNIST-layout .npz INPUT.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead: export the run's network to this ONNX file (a single run; input: normalised float "
                   "images N x C x S x S; output: logits). INPUT is then not read and may be '-'.")
@_stops_at_once
def predict(model_dir: Path, source: Path, out: Path, split: str, device: str, onnx_file: Path | None) -> None:
    """Apply a `search train` run (RUN_OR_ENSEMBLE_DIR: its folder, a --seeds folder or an ensemble folder) to
    INPUT: a MedMNIST-layout .npz (its --split), a folder of PNG/JPEG images or one image, each already of the run's
    size and channels. Writes a row per image: the class probabilities and the predicted label."""
    if onnx_file is not None:
        from search.train import onnx

        click.echo(onnx.export(model_dir, onnx_file))
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
@_stops_at_once
def enqueue(study: str, file: Path, storage: str | None) -> None:
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
@_stops_at_once
def dashboard(storage: str | None, host: str, port: int, artifacts_dir: Path | None) -> None:
    """optuna-dashboard on the study store, with each trial's learning curve and confusion matrix."""
    import threading
    from wsgiref.simple_server import make_server

    import optuna_dashboard

    from search.hpo.storage import open_storage
    from search.hpo.urls import check_port, mask, resolve_url
    from search.results import artifacts

    url = resolve_url(storage)
    store = open_storage(url, must_exist=True, heartbeat=False)
    folder = artifacts.artifact_dir(url, artifacts_dir)
    check_port(host, port)
    if host in ("0.0.0.0", "::", ""):
        logging.getLogger("search").warning("the dashboard is bound to all interfaces (%s): anyone who can reach "
                                            "this machine can see and change the study", host)
    app = optuna_dashboard.wsgi(store, artifact_store=artifacts.open_store(folder) if folder is not None else None)
    try:
        server = make_server(host, port, app)
    except OSError as err:
        raise SearchError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port") from None
    where = f", trial files in {folder}" if folder is not None else ""
    click.echo(f"optuna-dashboard for {mask(url)} at http://{host}:{port}/{where} (Ctrl-C to stop)")
    # wsgiref catches every exception raised while it answers a request, a stop signal's too: served from a thread,
    # so that the signal reaches this one (Python runs handlers in the main thread), waiting here.
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        while serving.is_alive():
            serving.join(0.5)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: not an error
        click.echo("dashboard stopped")


@main.command(short_help="The study files, and the studies in the store.")
@storage_option()
@_stops_at_once
def studies(storage: str | None) -> None:
    """The study files, and the studies in the store with their trial counts."""
    import optuna

    from search.hpo.storage import open_storage
    from search.hpo.studies import list_study_files
    from search.hpo.urls import mask, resolve_url, store_file

    click.echo("study files:")
    for name, path in list_study_files().items():
        click.echo(f"  {name:<16} {path}")
    url = resolve_url(storage)
    path = store_file(url)
    if path is not None and not path.exists():
        click.echo(f"no study store at {path} yet")
        return
    summaries = optuna.get_all_study_summaries(open_storage(url, heartbeat=False), include_best_trial=False)
    click.echo(f"studies in {mask(url)}:" + ("" if summaries else " none"))
    for s in summaries:
        click.echo(f"  {s.study_name:<16} {s.n_trials} trials")


@main.command(short_help="Optuna's gRPC storage proxy, for very many workers.")
@storage_option("The database the proxy serves")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0: workers on other machines; the proxy has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True)
@_stops_at_once
def proxy(storage: str | None, host: str, port: int) -> None:
    """Optuna's gRPC storage proxy in front of the store, for many workers: they use --storage grpc://HOST:PORT."""
    from search.hpo.proxy import database_url, serve
    from search.hpo.storage import open_storage
    from search.hpo.urls import resolve_url

    url = database_url(resolve_url(storage), host, port)
    serve(open_storage(url, heartbeat=False), url, host=host, port=port, echo=click.echo)
