"""Read results out of a study: ranked trials, the K-th best as a TrainConfig file, a status summary, a CSV."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import SearchError
from search.hpo import goals
from search.hpo.storage import open_storage
from search.hpo.store import Store, locate
from search.hpo.studies import list_study_files
from search.train import config
from search.train.config import TrainConfig

# Every state a trial can be in, in the order that status lines, tables and figures list them.
STATES = ("complete", "pruned", "fail", "running", "waiting")


def load(study_name: str, storage_url: Store | str | None) -> optuna.Study:
    """An existing study, read-only: a missing store or study is one line, and nothing is created."""
    store = locate(storage_url)
    storage = open_storage(store, must_exist=True, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise SearchError(f"no study '{study_name}' in {store.masked}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first (by the study's direction; with several objectives, by the first one)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.values[0] if maximize else t.values[0], t.number))


def export(study: optuna.Study, out: Path, rank: int = 1, trial_number: int | None = None
           ) -> tuple[TrainConfig, FrozenTrial]:
    """Write a trial's TrainConfig to `out`, with the study, trial and value(s) noted under `search:`: the rank-th
    best, or the trial numbered ``trial_number``, any trial that recorded its configuration. A study with several
    objectives has no single best: its trials are exported by number (`pareto` lists the front's)."""
    trial = pick(study, rank, trial_number)
    notes: dict[str, Any] = {"study": study.study_name, "trial": trial.number}
    notes.update({"state": trial.state.name.lower()} if trial_number is not None else {"rank": rank})
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o path")
    cfg = trial_config(trial)
    if goals.is_multi(study):
        notes["values"] = dict(zip((m for m, _ in goals.of_study(study)), trial.values or ()))
    else:
        notes.update(metric=study.user_attrs.get("metric", "value"), value=trial.value)
    cv = trial.user_attrs.get("cv_folds")
    if cv:  # the value is a fold mean; `search train` trains this config once, on the official split
        notes["cv_folds"] = {"k": cv["k"], "fold_values": cv.get(study.user_attrs.get("metric", "val_acc"))}
    config.dump(cfg, out, notes=notes)
    return cfg, trial


def listing(storage_url: Store | str | None) -> Iterator[str]:
    """`search studies`: the study files, and the studies in the store with their trial counts (the files come
    first, whatever the store's state)."""
    yield "study files:"
    for name, path in list_study_files().items():
        yield f"  {name:<16} {path}"
    store = locate(storage_url)
    if store.absent():
        yield f"{store.absent()} yet"
        return
    summaries = optuna.get_all_study_summaries(open_storage(store, heartbeat=False), include_best_trial=False)
    yield f"studies in {store.masked}:" + ("" if summaries else " none")
    for s in summaries:
        yield f"  {s.study_name:<16} {s.n_trials} trials"


def trial_config(trial: FrozenTrial) -> TrainConfig:
    """The TrainConfig a trial ran, with device auto (the exported file runs anywhere)."""
    return config.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}").replace(device="auto")


def pick(study: optuna.Study, rank: int = 1, trial_number: int | None = None) -> FrozenTrial:
    """The trial numbered ``trial_number`` (any that recorded its configuration), else the rank-th best."""
    return _ranked(study, rank) if trial_number is None else _numbered(study, trial_number)


def _ranked(study: optuna.Study, rank: int) -> FrozenTrial:
    if goals.is_multi(study):
        front = [str(t.number) for t in goals.front(study)]
        raise SearchError(f"study '{study.study_name}' has several objectives, so no single best trial: choose one "
                          f"with --trial N; its Pareto front: trials {', '.join(front) or 'none yet'} "
                          f"(search export --study {study.study_name} --pareto lists their values)")
    trials = ranked(study)
    if not trials:
        raise SearchError(f"study '{study.study_name}' has no finished (complete) trial yet; nothing to export")
    if not 1 <= rank <= len(trials):
        raise SearchError(f"--rank {rank} is out of range; valid: 1..{len(trials)}")
    return trials[rank - 1]


def numbered(study: optuna.Study, number: int) -> FrozenTrial:
    """The trial numbered ``number`` (`--trial N`); one line when there is none."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise SearchError(f"--trial {number} does not exist in study '{study.study_name}'; valid: "
                          f"0..{len(trials) - 1}" if trials else f"study '{study.study_name}' has no trial yet")
    return trials[number]


def _numbered(study: optuna.Study, number: int) -> FrozenTrial:
    trial = numbered(study, number)
    if "config" not in trial.user_attrs:
        raise SearchError(f"trial {number} ({trial.state.name.lower()}) recorded no configuration (it never "
                          f"started training); choose another with --trial")
    return trial


def value_text(study: optuna.Study, trial: FrozenTrial) -> str:
    """A trial's value, or with several objectives each objective's (``val_acc 0.9512, params 11,173,962``)."""
    if goals.is_multi(study):
        return goals.values_text(goals.of_study(study), trial.values)
    return f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()


def pareto_lines(study: optuna.Study) -> list[str]:
    """The Pareto front's trials, one line each: number, the value of every objective, the parameters."""
    if not goals.is_multi(study):
        raise SearchError(f"study '{study.study_name}' has one objective ({study.user_attrs.get('metric', 'value')}), "
                          f"so no Pareto front; its best trials: search status --study {study.study_name}")
    objectives = goals.of_study(study)
    front = goals.front(study)
    head = " vs ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in objectives)
    if not front:
        return [f"Pareto front of {head}: no complete trial yet"]
    lines = [f"Pareto front of {head}: {len(front)} trial{'s' * (len(front) != 1)}"]
    lines += [f"  trial {t.number:>4}  {goals.values_text(objectives, t.values)}  {params_text(t)}" for t in front]
    return lines


def summary(study: optuna.Study, top: int = 5) -> str:
    """`search status`: counts by state, best value and parameters, the top trials, the best per architecture."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    metric = study.user_attrs.get("metric", "value")
    judged = (f"{len(study.directions)} objectives" if goals.is_multi(study)
              else f"{metric}, {study.direction.name.lower()}")
    lines = [f"study '{study.study_name}' ({study.user_attrs.get('dataset', '?')}, {judged}): {len(trials)} "
             f"trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)]
    lines += pack_lines(trials)
    if goals.is_multi(study):
        return "\n".join(lines + pareto_lines(study))
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


def pack_lines(trials: list[FrozenTrial]) -> list[str]:
    """The trials trained as packs (search/hpo/packs.py), and what runs now: each running trial with its epoch, a
    pack's members together (one that lags behind the others was pruned and left the pack)."""
    packs = {t.user_attrs["pack"]["id"]: t.user_attrs["pack"] for t in trials if "pack" in t.user_attrs}
    lines = []
    if packs:
        packed = sum(len(p["members"]) for p in packs.values())
        lines.append(f"packs: {len(packs)} trained {packed} trials as fused models (up to "
                     f"{max(p['size'] for p in packs.values())} at once)")
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return lines
    lines.append("running:")
    shown: set[int] = set()
    for t in running:
        pack = t.user_attrs.get("pack")
        if pack is None:
            lines.append(f"  trial {t.number}: {_epoch(t)}")
        elif pack["id"] not in shown:
            shown.add(pack["id"])
            members = [trials[n] for n in pack["members"] if n < len(trials)]
            lines.append(f"  pack {pack['id']} ({pack['size']} trials): "
                         + ", ".join(f"trial {m.number} {_epoch(m)}" for m in members))
    return lines


def _epoch(t: FrozenTrial) -> str:
    if t.state != TrialState.RUNNING:
        return t.state.name.lower()
    done = max(t.intermediate_values, default=0)
    return f"epoch {done}/{t.user_attrs.get('config', {}).get('epochs', '?')}" if done else "starting"


def trial_rows(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """Every trial as one row: number, state, value, one column per parameter (empty where a trial has none,
    e.g. a conditional one), its pack's id (search/hpo/packs.py; a column only in a study with packs, empty for a
    trial trained alone), epochs run, seconds (start to finish), and the reason of a failed trial."""
    trials = study.get_trials(deepcopy=False)
    params: list[str] = []
    for t in trials:
        params += [name for name in t.params if name not in params]
    objectives = goals.of_study(study)
    multi = goals.is_multi(study)
    values = [m for m, _ in objectives] if multi else ["value"]
    packed = ["pack"] if any("pack" in t.user_attrs for t in trials) else []
    columns = ["number", "state", *values, *params, *packed, "epochs_run", "seconds", "reason"]
    rows = [[t.number, t.state.name.lower(), *(t.values or [None] * len(values)),
             *(t.params.get(name) for name in params),
             *(t.user_attrs.get("pack", {}).get("id") for _ in packed),
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
