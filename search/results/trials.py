"""Read results out of a study: ranked trials, the K-th best as a TrainConfig file, a status summary, a CSV."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import SearchError
from search.hpo.storage import open_storage
from search.hpo.urls import mask, resolve_url
from search.train import config
from search.train.config import TrainConfig

# Every state a trial can be in, in the order that status lines, tables and figures list them.
STATES = ("complete", "pruned", "fail", "running", "waiting")


def load(study_name: str, storage_url: str | None) -> optuna.Study:
    """An existing study, read-only: a missing store or study is one line, and nothing is created."""
    url = resolve_url(storage_url)
    storage = open_storage(url, must_exist=True, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise SearchError(f"no study '{study_name}' in {mask(url)}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first (by the study's direction)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def export(study: optuna.Study, out: Path, rank: int = 1) -> tuple[TrainConfig, FrozenTrial]:
    """Write the rank-th best trial's TrainConfig to `out`, with the study, trial and value noted under `search:`."""
    trials = ranked(study)
    if not trials:
        raise SearchError(f"study '{study.study_name}' has no finished (complete) trial yet; nothing to export")
    if not 1 <= rank <= len(trials):
        raise SearchError(f"--rank {rank} is out of range; valid: 1..{len(trials)}")
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o path")
    trial = trials[rank - 1]
    cfg = config.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}").replace(device="auto")
    metric = study.user_attrs.get("metric", "value")
    config.dump(cfg, out, notes={"study": study.study_name, "trial": trial.number, "rank": rank,
                                 "metric": metric, "value": trial.value})
    return cfg, trial


def summary(study: optuna.Study, top: int = 5) -> str:
    """`search status`: counts by state, best value and parameters, the top trials, the best per architecture."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    metric = study.user_attrs.get("metric", "value")
    lines = [f"study '{study.study_name}' ({study.user_attrs.get('dataset', '?')}, {metric}, "
             f"{study.direction.name.lower()}): {len(trials)} trials: "
             + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)]
    best = ranked(study)
    if not best:
        return "\n".join(lines + ["no complete trial yet"])
    b = best[0]
    lines.append(f"best {metric} {b.value:.4f} (trial {b.number}): {params_text(b)}")
    lines.append(f"top {min(top, len(best))}:")
    lines += [f"  #{i} trial {t.number:>4}  {t.value:.4f}  {params_text(t)}" for i, t in enumerate(best[:top], 1)]
    per_arch: dict[str, FrozenTrial] = {}
    for t in best:
        per_arch.setdefault(str(t.user_attrs.get("config", {}).get("architecture", "?")), t)
    lines.append("best per architecture:")
    lines += [f"  {arch:<14} {t.value:.4f} (trial {t.number})" for arch, t in per_arch.items()]
    return "\n".join(lines)


def trial_rows(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """Every trial as one row: number, state, value, one column per parameter (empty where a trial has none,
    e.g. a conditional one), epochs run, seconds (start to finish), and the reason of a failed trial."""
    trials = study.get_trials(deepcopy=False)
    params: list[str] = []
    for t in trials:
        params += [name for name in t.params if name not in params]
    columns = ["number", "state", "value", *params, "epochs_run", "seconds", "reason"]
    rows = [[t.number, t.state.name.lower(), t.value, *(t.params.get(name) for name in params),
             t.user_attrs.get("epochs_run"),
             round(t.duration.total_seconds(), 3) if t.duration is not None else None,
             t.user_attrs.get("reason")] for t in trials]
    return columns, rows


def write_csv(study: optuna.Study, out: Path) -> int:
    """`search status --csv FILE`: the trial table as CSV (empty cells for missing values); returns the row count."""
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another --csv path")
    columns, rows = trial_rows(study)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return len(rows)


def params_text(t: FrozenTrial) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
