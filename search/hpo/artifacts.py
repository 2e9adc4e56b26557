"""Each trial's learning curve and confusion matrix as Optuna artifacts, shown by optuna-dashboard with the trial.

Where the files go: ``--artifacts DIR`` (of `search dashboard`), else ``$SEARCH_ARTIFACTS``, else ``artifacts/``
beside a SQLite or journal study file. Other stores (PostgreSQL, a gRPC proxy) have no default folder: set
``$SEARCH_ARTIFACTS`` to a folder every worker and the dashboard can reach, or their trials carry no files.

What: every trial that trained at least one epoch gets ``trial-N-learning-curve.png`` and ``.csv`` (pruned and
diverged ones too: their curve shows why they stopped); a completed one also gets
``trial-N-confusion-val.png``, on the validation split, since the test split is never used during a search.
The objective uploads them once, after training and before the trial is finished, because Optuna accepts a
trial's artifact record only while it is running. Writing them must never cost a trial its result: a failure is
logged as a warning.
"""
from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from search import env
from search.hpo.store import store_file

log = logging.getLogger("search")
ENV = "SEARCH_ARTIFACTS"
DPI = 120  # a dashboard preview: half the pixels of a report figure, and half the time to draw
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr", "seconds")


def artifact_dir(storage_url: str | None, explicit: str | os.PathLike | None = None) -> Path | None:
    """The artifact folder for a study store: explicit, else $SEARCH_ARTIFACTS, else beside a SQLite or journal
    file."""
    if explicit:
        return env.user_path(explicit, what="--artifacts")
    from_env = env.path(ENV)
    if from_env is not None:
        return from_env
    db = store_file(storage_url) if storage_url else None
    return db.parent / "artifacts" if db is not None else None


def storage_url(storage: Any) -> str | None:
    """The URL of an RDB storage as a trial sees it (Optuna wraps it in a cache); None for other storages."""
    # Optuna 4.x wraps an RDBStorage in its private _CachedStorage, whose `_backend` is the RDBStorage; no public
    # call returns a trial's storage URL. This is the one place that reads it: if a later Optuna renames it, the
    # trials only lose their dashboard files (None: no folder), never their results.
    for holder in (storage, getattr(storage, "_backend", None)):  # a journal store carries its own url
        url = getattr(holder, "url", None)
        if isinstance(url, str):
            return url
    return None


def open_store(folder: Path) -> FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload_text(trial: optuna.Trial | FrozenTrial, folder: Path, name: str, text: str, storage: Any = None) -> None:
    """Upload ``text`` as the trial's artifact ``name`` (a FrozenTrial needs its ``storage``); a later upload of the
    same name is the one read back (`read_bytes`)."""
    store = open_store(folder)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        upload_artifact(study_or_trial=trial, file_path=str(path), artifact_store=store, storage=storage)


def upload_model(trial: optuna.Trial, folder: Path, state_dict: dict[str, Any], config: dict[str, Any]) -> None:
    """Upload a trial's weights as ``trial-N-model.pt``: ``{"state_dict", "config"}``, as `search train` saves."""
    import torch

    store = open_store(folder)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-model.pt"
        torch.save({"state_dict": state_dict, "config": config}, path)
        upload_artifact(study_or_trial=trial, file_path=str(path), artifact_store=store)


def read_bytes(trial: FrozenTrial, storage: Any, folder: Path | None, name: str) -> bytes | None:
    """The trial's artifact ``name``; None when it has none or the folder cannot be reached."""
    if folder is None:
        return None
    from optuna.artifacts import get_all_artifact_meta

    for meta in reversed(get_all_artifact_meta(trial, storage=storage)):  # the latest upload of that name
        if meta.filename == name:
            try:
                with FileSystemArtifactStore(folder).open_reader(meta.artifact_id) as f:
                    return f.read()
            except Exception:  # removed, or another machine's folder: the caller says it is missing
                return None
    return None


def read_text(trial: FrozenTrial, storage: Any, folder: Path | None, name: str) -> str | None:
    """The text of the trial's artifact ``name``; None when it has none or the folder cannot be reached."""
    data = read_bytes(trial, storage, folder, name)
    return None if data is None else data.decode(errors="replace")


def upload_trial_files(trial: optuna.Trial, folder: Path, *, history: list[dict[str, float]], outcome: str,
                       metric: str, max_epochs: int, best_epoch: int | None = None,
                       confusion: list[list[int]] | None = None, class_names: list[str] | None = None) -> list[str]:
    """Render and upload one trial's files; returns their names.

    ``outcome``: complete, pruned or diverged; ``best_epoch``: the kept epoch of a complete trial (1-based).
    """
    from search.hpo import trial_figures as figures  # matplotlib is imported only by processes that draw

    store = open_store(folder)
    n = trial.number
    best = history[best_epoch - 1] if outcome == "complete" and best_epoch else None
    if best is not None:
        title = f"Trial {n}: complete, best {figures.metric_label(metric)} {best[metric]:.4f} at epoch {best['epoch']}"
    elif outcome == "pruned":
        title = f"Trial {n}: pruned after epoch {len(history)} of {max_epochs}"
    else:
        title = f"Trial {n}: diverged at epoch {len(history) + 1}"
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"trial-{n}-learning-curve.png", Path(tmp) / f"trial-{n}-learning-curve.csv"]
        figures.save_png(figures.history_figure([(f"trial {n}", history)], title,
                                              kept={f"trial {n}": best["epoch"]} if best else None,
                                              max_epoch=max_epochs), files[0], dpi=DPI)
        with files[1].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HISTORY_COLUMNS)
            writer.writerows([[h.get(c, "") for c in HISTORY_COLUMNS] for h in history])
        if confusion is not None and class_names is not None and best is not None:
            files.append(Path(tmp) / f"trial-{n}-confusion-val.png")
            figures.save_png(figures.confusion_figure(
                [confusion], class_names,
                f"Trial {n}: confusion matrix on the validation split (epoch {best['epoch']})"), files[-1], dpi=DPI)
        for path in files:
            upload_artifact(study_or_trial=trial, file_path=str(path), artifact_store=store)
            names.append(path.name)
    return names
