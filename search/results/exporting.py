"""`search export`: the best (or K-th best, or a numbered) trial as a TrainConfig file, with its kept weights; the
Pareto front of a study with several objectives; or, with --rerank K, the best of the K best trials retrained
with several seeds each (search/results/rerank.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from search import interrupt
from search.errors import Interrupted, SearchError
from search.results import detail, trials
from search.train.config import atomic_write


@dataclass(frozen=True)
class Rerank:
    """--rerank K and the options that only it takes (None: not given)."""

    k: int | None = None
    seeds: int | None = None
    devices: str | None = None
    folder: Path | None = None
    ensemble: int | None = None
    ensemble_dir: Path | None = None

    def options(self) -> dict[str, object]:
        return {"--seeds": self.seeds, "--devices": self.devices, "--rerank-dir": self.folder,
                "--ensemble": self.ensemble, "--ensemble-dir": self.ensemble_dir}


def check_options(rank: int | None, trial_number: int | None, pareto: bool, weights: bool, again: Rerank) -> None:
    """The options that exclude each other, or need another: one line each (``rank`` None: not given)."""
    if rank is not None and trial_number is not None:
        raise SearchError(f"--rank {rank} and --trial {trial_number} exclude each other: choose the trial one way")
    if pareto and (rank is not None or trial_number is not None or weights):
        raise SearchError("--pareto lists the Pareto front and writes nothing: it takes no --rank, --trial or "
                          "--weights")
    if again.k is None:
        used = [name for name, value in again.options().items() if value is not None]
        if used:
            raise SearchError(f"{used[0]} needs --rerank K: it retrains the K best trials; a plain export trains "
                              f"nothing")
    elif trial_number is not None or pareto:
        raise SearchError(f"{'--trial' if trial_number is not None else '--pareto'} and --rerank exclude each other: "
                          f"--rerank chooses among the best trials")
    elif rank is not None:
        raise SearchError(f"--rank {rank} and --rerank {again.k} exclude each other: --rerank chooses the trial")
    elif weights:
        raise SearchError("--weights and --rerank exclude each other: the rerank's runs keep their own weights "
                          "(model.pt in each seed folder)")
    if again.ensemble_dir is not None and again.ensemble is None:
        raise SearchError("--ensemble-dir needs --ensemble M: it names the ensemble's folder")


def export(study: str, storage: str | None, out: Path, *, rank: int | None, trial_number: int | None, pareto: bool,
           weights: bool, again: Rerank, echo: Callable[[str], None]) -> None:
    """What `search export` does, its lines told to ``echo``; ``rank`` None: not given (the best)."""
    check_options(rank, trial_number, pareto, weights, again)
    with interrupt.raising():  # no long work here: the first Ctrl-C stops it at once
        loaded = trials.load(study, storage)
        if pareto:
            echo("\n".join(trials.pareto_lines(loaded)))
            return
        if again.k is None:
            echo(_export_one(loaded, storage, out, rank or 1, trial_number, weights))
            return
    # --rerank trains: it stops at the training loop's safe points, as `train` does, keeping the trials that finished
    from search.results import rerank  # loads torch, which a plain export does without

    folder = again.folder if again.folder is not None else rerank.default_dir(loaded)
    metric = loaded.user_attrs.get("metric", "value")
    try:
        together = ((again.ensemble, again.ensemble_dir or rerank.default_ensemble_dir(loaded)) if again.ensemble
                    else None)
        done = rerank.rerank(loaded, out, again.k, again.seeds or 3, devices=again.devices, rerank_dir=folder,
                             on_run=lambda n, path, m: echo(rerank.run_line(n, path, m, metric)),
                             say=echo, ensemble=together)
    except KeyboardInterrupt:  # interrupt.Stop from the training loop
        raise Interrupted(f"interrupted ({interrupt.requested() or 'SIGINT'}): the run in progress was stopped; the "
                          f"trial folders that finished (with summary.json) are kept in {folder}; nothing was "
                          f"exported") from None
    echo("\n".join(rerank.table(done)))


def _export_one(loaded: optuna.Study, storage: str | None, out: Path, rank: int, trial_number: int | None,
                weights: bool) -> str:
    # missing weights: one line, nothing written
    model = detail.kept_weights(loaded, storage, rank, trial_number) if weights else None
    cfg, trial = trials.export(loaded, out, rank, trial_number)
    what = f"trial {trial.number} ({trials.value_text(loaded, trial)}, {cfg.architecture}) -> {out}"
    if model is None:
        return f"{what}; train it with: search train {out}"
    atomic_write(out.with_suffix(".pt"), lambda path: path.write_bytes(model))
    return f"{what}, its weights -> {out.with_suffix('.pt')}"
