"""`search export --rerank K --seeds N`: the winner's curse, remedied by retraining the K best trials.

A search picks the trial with the best validation value, and with a small validation split part of that value is
luck: the seed that trial happened to train with, the images the split happened to hold. The standard remedy is to
retrain each of the K best COMPLETE trials with N fresh seeds and rank them by the mean of the study's validation
metric over those seeds. Fresh: the seeds after the trial's own (seed + 1 ... seed + N), so the very run that won
the search, whose luck is what is being corrected, is not counted again. The test split
is still never used to choose: each run's test accuracy is reported for information only.

Each trial's runs go to DIR/trial-<number>/ (seed-S folders and summary.json, as `search train --seeds` writes
them), trained by the one training loop: `replicates.train_seeds` one seed after another, or with devices listed, every
trial's runs in one pool over them (`parallel.train_runs`). Everything is checked before the first run: the study,
K, the devices, the output folder, and that no trial folder already holds a finished run. A Ctrl-C stops the run in
progress; the trial folders that finished are kept.

Example, with K = 2 and N = 3 on a study whose search ranked trial 7 first and trial 3 second:

    rank  trial  search rank  search val_acc  val_acc over 3 seeds  test_acc (info)
       1      3            2          0.9912       0.9905 ± 0.0008           0.9890
       2      7            1          0.9937       0.9871 ± 0.0041           0.9862

trial 3 is exported: its mean over seeds is the better one, although trial 7 had the best single value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from search import interrupt
from search.devices import choose as choose_devices
from search.errors import SearchError
from search.results.trials import ranked, trial_config
from search.train import config, ensemble, parallel, replicates
from search.train.config import TrainConfig

OnRun = Callable[[int, Path, dict[str, Any]], None]  # (trial number, run folder, the run's metrics.json)


@dataclass(frozen=True)
class Candidate:
    """One of the K best trials, retrained: its search rank and value, and its summary.json over the seeds."""

    trial: FrozenTrial
    search_rank: int  # 1 = the search's best
    cfg: TrainConfig
    folder: Path
    summary: dict[str, Any]

    def mean(self, key: str) -> float:
        return float(self.summary[key]["mean"])

    def sd(self, key: str) -> float | None:
        return self.summary[key]["sd"]


@dataclass
class Reranked:
    study: str
    metric: str
    seeds: int
    rerank_dir: Path
    out: Path
    ranked: list[Candidate]  # best mean validation value first
    ensemble: dict[str, Any] | None = None  # with --ensemble M: the ensemble folder's metrics.json

    @property
    def winner(self) -> Candidate:
        return self.ranked[0]


def default_dir(study: optuna.Study) -> Path:
    return Path("runs") / f"rerank-{study.study_name}"


def rerank(study: optuna.Study, out: Path, k: int, seeds: int, *, devices: str | None = None,
           rerank_dir: Path | None = None, on_run: OnRun | None = None,
           say: Callable[[str], None] | None = None, ensemble: tuple[int, Path] | None = None) -> Reranked:
    """Retrain the K best complete trials with ``seeds`` seeds each, rank them by the mean validation metric and
    write the winner's TrainConfig to ``out`` (as `search export` does, with the rerank noted under ``search:``).
    ``say`` hears the plan once it is checked and each run as it starts; ``on_run``, each run as it finishes.
    ``ensemble`` (M, folder): also write the ensemble of the M best trials' runs there, and evaluate it."""
    metric = _metric(study)
    folder = rerank_dir if rerank_dir is not None else default_dir(study)
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o path")
    if ensemble is not None:
        _check_ensemble(*ensemble, k)
    # Parsed once, here: a bad entry is one line before anything is trained.
    chosen = choose_devices(devices) if devices is not None else None
    plans = _plan(study, k, seeds, folder)
    say = say or (lambda _line: None)
    say(f"retraining the {len(plans)} best trials ({', '.join(str(p[0].number) for p in plans)}) with {seeds} "
        f"seed{'s' if seeds > 1 else ''} each: {len(plans) * seeds} runs in {folder}")
    if chosen is not None:  # every trial's seeds in one pool: no device waits while another trial finishes
        done = _train_pooled(plans, seeds, chosen, on_run, say)
    else:
        done = []
        for trial, rank, cfg, where, runs in plans:
            say(f"trial {trial.number}: training seeds {runs[0][0]}..{runs[-1][0]}, one after another -> {where}")
            done.append(_train(trial, rank, cfg, where, seeds, on_run))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    order = sorted(done, key=lambda c: (-c.mean(metric) if maximize else c.mean(metric), c.search_rank))
    result = Reranked(study.study_name, metric, seeds, folder, out, order)
    if ensemble is not None:
        result.ensemble = _write_ensemble(result, *ensemble, k)
    w = result.winner
    config.dump(w.cfg, out, notes={
        "study": study.study_name, "trial": w.trial.number, "metric": metric, "value": w.trial.value,
        "search_rank": w.search_rank, "rerank": k, "seeds": w.summary["seeds"], "mean": w.mean(metric),
        "sd": w.sd(metric), "runs": str(w.folder)})
    return result


def default_ensemble_dir(study: optuna.Study) -> Path:
    return Path("runs") / f"ensemble-{study.study_name}"


def _check_ensemble(m: int, folder: Path, k: int) -> None:
    if not 1 <= m <= k:
        raise SearchError(f"--ensemble {m} is out of range: it takes the M best of the --rerank {k} trials; valid: "
                          f"1..{k}")
    if (folder / ensemble.FILE).exists():
        raise SearchError(f"{folder} already holds an ensemble ({ensemble.FILE}); choose another --ensemble-dir or "
                          f"remove it")


def _write_ensemble(result: Reranked, m: int, folder: Path, k: int) -> dict[str, Any]:
    """The M best reranked trials' runs (M x N members: each trial's every seed, kept weights, no retraining) as
    an ensemble folder (search/train/ensemble.py), evaluated into it as a run."""
    runs = [(f"trial-{c.trial.number}-seed-{seed}", c.folder / name,
             {"trial": c.trial.number, "rerank_rank": rank, "search_rank": c.search_rank})
            for rank, c in enumerate(result.ranked[:m], 1) for seed, name in zip(c.summary["seeds"], c.summary["runs"])]
    source = {"study": result.study, "metric": result.metric, "rerank": k, "seeds": result.seeds, "ensemble": m,
              "rerank_dir": str(result.rerank_dir)}
    ensemble.write(folder, runs, source)
    return ensemble.evaluate(folder, folder)


def _metric(study: optuna.Study) -> str:
    if len(study.directions) > 1:
        raise SearchError(f"study '{study.study_name}' has {len(study.directions)} objectives; --rerank ranks by one "
                          f"validation metric and needs a single-objective study")
    metric = study.user_attrs.get("metric")
    if metric not in config.METRICS:
        raise SearchError(f"study '{study.study_name}' records no validation metric (user attribute 'metric' is "
                          f"{metric!r}); --rerank needs one of {', '.join(config.METRICS)}")
    return str(metric)


Plan = tuple[FrozenTrial, int, TrainConfig, Path, list[tuple[int, Path]]]  # trial, search rank, config, folder, runs


def _plan(study: optuna.Study, k: int, seeds: int, folder: Path) -> list[Plan]:
    """(trial, search rank, config, its folder, its (seed, run folder)s) of each of the K best trials; refused,
    before anything is trained, when K is out of range or a folder already holds a finished run."""
    trials = ranked(study)
    if not trials:
        raise SearchError(f"study '{study.study_name}' has no finished (complete) trial yet; nothing to rerank")
    if not 1 <= k <= len(trials):
        raise SearchError(f"--rerank {k} is out of range: study '{study.study_name}' has {len(trials)} complete "
                          f"trials; valid: 1..{len(trials)}")
    plans = []
    for rank, trial in enumerate(trials[:k], 1):
        cfg = trial_config(trial)
        where = folder / f"trial-{trial.number}"
        runs = replicates.seed_runs(_fresh(cfg), where, seeds, instead="choose another --rerank-dir or remove it")
        plans.append((trial, rank, cfg, where, runs))
    return plans


def _fresh(cfg: TrainConfig) -> TrainConfig:
    return cfg.replace(seed=cfg.seed + 1)  # not the search's own run (the module's docstring says why)


def _train(trial: FrozenTrial, rank: int, cfg: TrainConfig, folder: Path, seeds: int,
           on_run: OnRun | None) -> Candidate:
    interrupt.check()  # a Ctrl-C between two trials stops here, before the next one starts
    heard = (lambda path, m: on_run(trial.number, path, m)) if on_run is not None else None
    summary = replicates.train_seeds(_fresh(cfg), folder, seeds, progress=False, on_run=heard)
    return Candidate(trial, rank, cfg, folder, summary)


def _train_pooled(plans: list[Plan], seeds: int, devices: list[str], on_run: OnRun | None,
                  say: Callable[[str], None]) -> list[Candidate]:
    """All K x N runs handed to one pool over ``devices``; each trial's summary.json is written as soon as its own
    runs are done, so a Ctrl-C keeps the trials that finished, as the sequential path does."""
    jobs = [(_fresh(cfg), seed, run) for _, _, cfg, _, runs in plans for seed, run in runs]
    owner = [i for i, plan in enumerate(plans) for _ in plan[4]]  # job index -> plan index
    metrics: dict[int, dict[int, dict[str, Any]]] = {i: {} for i in range(len(plans))}
    summaries: dict[int, dict[str, Any]] = {}

    def heard(j: int, folder: Path, m: dict[str, Any]) -> None:
        i = owner[j]
        trial, _, cfg, where, runs = plans[i]
        metrics[i][j] = m
        if on_run is not None:
            on_run(trial.number, folder, m)
        if len(metrics[i]) == seeds:  # job indices run in seed order: the summary as replicates.train_seeds writes it
            ordered = [metrics[i][k] for k in sorted(metrics[i])]
            summaries[i] = replicates.write_summary(_fresh(cfg), where, runs, ordered)

    def started(j: int, device: str) -> None:
        _, seed, run = jobs[j]
        say(f"trial {plans[owner[j]][0].number} seed {seed}: training on {device} -> {run}")

    parallel.train_runs(jobs, devices, heard, what=f"{len(plans)} trials x {seeds} seeds", on_start=started)
    return [Candidate(trial, rank, cfg, where, summaries[i]) for i, (trial, rank, cfg, where, _) in enumerate(plans)]


def run_line(number: int, folder: Path, m: dict[str, Any], metric: str) -> str:
    """One finished run, as `search train` reports it."""
    return (f"trial {number} seed {m['seed']}: {metric} {m[metric]:.4f}, test_acc {m['test_acc']:.4f} (best epoch "
            f"{m['best_epoch']}/{m['epochs']}, {m['seconds']:.1f} s on {m['device']}) -> {folder}")


def table(result: Reranked) -> list[str]:
    """The K trials, best mean first: the search's rank and value, the mean ± sd of the validation metric over the
    seeds, and the mean test accuracy (for information: it played no part in the ranking)."""
    m, n = result.metric, result.seeds
    spread = f"{m} over {n} seed{'s' if n > 1 else ''}"
    head = f"{'rank':>4}  {'trial':>5}  {'search rank':>11}  {'search ' + m:>14}  {spread:>22}  {'test_acc (info)':>15}"
    lines = [head]
    for i, c in enumerate(result.ranked, 1):
        sd = c.sd(m)
        mean_sd = f"{c.mean(m):.4f} ± {sd:.4f}" if sd is not None else f"{c.mean(m):.4f}"
        lines.append(f"{i:>4}  {c.trial.number:>5}  {c.search_rank:>11}  {c.trial.value:>14.4f}  {mean_sd:>22}  "
                     f"{c.mean('test_acc'):>15.4f}")
    w = result.winner
    lines.append(f"trial {w.trial.number} (search rank {w.search_rank}, {w.cfg.architecture}) -> {result.out}; its "
                 f"runs are in {w.folder}; train it with: search train {result.out}")
    e = result.ensemble
    if e is not None:
        folder = Path(e["ensemble"])
        lines.append(f"{e['architecture']}: the runs of the {len({m.get('trial') for m in _listed(folder)})} best "
                     f"trials -> {folder}: test_acc {e['test_acc']:.4f} test_auc {e['test_auc']:.4f} (info; val_acc "
                     f"{e['val_acc']:.4f}); use it with: search predict {folder} INPUT")
    return lines


def _listed(folder: Path) -> list[dict[str, Any]]:
    return config.read_yaml(folder / ensemble.FILE)["members"]
