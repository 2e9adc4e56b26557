"""`search train --seeds N`: the same configuration trained with N seeds, each run in its own folder, and the
summary of their test and validation metrics (mean and sample standard deviation)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

from search.errors import SearchError
from search.train import engine, ensemble
from search.train.config import TrainConfig, atomic_write


def train_seeds(cfg: TrainConfig, out: Path, seeds: int, *, progress: bool = True,
                on_run: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """`search train --seeds N`: `train` with seeds cfg.seed .. cfg.seed + N - 1, each run in out/seed-<seed>.

    out/summary.json holds each run's test ACC and AUC with their mean and sample standard deviation (n - 1), the
    way the MedMNIST benchmark reports a method (mean of at least three runs). Nothing is trained when any of the
    folders already holds a finished run.
    """
    runs = seed_runs(cfg, out, seeds)
    results: list[dict[str, Any]] = []
    for seed, folder in runs:
        results.append(engine.train(cfg.replace(seed=seed), folder, progress=progress))
        if on_run is not None:
            on_run(folder, results[-1])
    return write_summary(cfg, out, runs, results)


def seed_runs(cfg: TrainConfig, out: Path, seeds: int, *,
              instead: str = "choose another --out") -> list[tuple[int, Path]]:
    """(seed, folder) of each run of `--seeds`; refused before anything is trained when ``out`` holds a summary or
    a run already finished (the message ends with ``instead``: what the user can do)."""
    runs = [(cfg.seed + i, out / f"seed-{cfg.seed + i}") for i in range(seeds)]
    refuse_finished(out / "summary.json", *(d / "metrics.json" for _, d in runs), instead=instead)
    return runs


def refuse_finished(*files: Path, instead: str = "choose another --out") -> None:
    """The one rule for every command that writes a run's folder: nothing is trained (or evaluated) into a folder
    that holds a finished run (one of ``files``, a metrics.json or summary.json, exists); ``instead``: what the
    user can do."""
    taken = next((p for p in files if p.exists()), None)
    if taken is not None:
        raise SearchError(f"{taken.parent} already holds a finished run ({taken.name}); {instead}")


def write_summary(cfg: TrainConfig, out: Path, runs: list[tuple[int, Path]],
                  results: list[dict[str, Any]]) -> dict[str, Any]:
    """out/summary.json from each run's metrics, in the order of ``runs`` (seed order): test ACC and AUC, and the
    validation ACC and AUC of each run's kept epoch (what `search export --rerank` ranks configurations by), and the
    seed ensemble's test ACC and AUC (search/train/ensemble.py; None where a run kept no probabilities)."""
    summary = {"dataset": cfg.dataset, "architecture": cfg.architecture, "seeds": [s for s, _ in runs],
               "runs": [d.name for _, d in runs],
               **{key: mean_sd([m[key] for m in results]) for key in ("test_acc", "test_auc", "val_acc", "val_auc")},
               # the seed ensemble (the mean of the runs' test probabilities), from their test_predictions.csv
               "ensemble": ensemble.from_runs([d for _, d in runs], results[0]["task"])}
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value: a single run has no spread to report)."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}
