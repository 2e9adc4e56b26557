"""Queued trials: a study file's ``enqueue:`` entries (the warm start) and `search enqueue`.

A queued trial is an Optuna WAITING trial whose ``fixed_params`` the trial's ``suggest_*`` calls return (for the
parameters it names; the sampler draws the rest). Workers take WAITING trials first, oldest first, each exactly
once (search/hpo/storage.py: the atomic claim), so queued trials run before the sampler's own. Optuna itself only
warns when a queued value lies outside its distribution and runs it anyway: every value is checked here first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.errors import SearchError
from search.hpo.space import Param, from_definition
from search.hpo.storage import FINISHED, claim_study_attr, open_storage
from search.hpo.store import Store, locate
from search.hpo.studies import check_trial
from search.train import config

ENQUEUED = "enqueued"  # study user attribute: the study file entries queued so far, in order
QUEUED_BY = "queued_by"  # trial user attribute: where a queued trial came from
# A TrainConfig key that says where or on what a run happens, not what it trains: never compared with the study.
_MACHINE_KEYS = ("data_dir", "device")


def warm_start(storage: optuna.storages.BaseStorage, study: optuna.Study,
               entries: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[int]:
    """Queue the study file's ``enqueue`` entries once per study: the first process to meet a study without the
    attribute ``enqueued`` claims it atomically and queues them; a resume, or a second worker, finds it set and
    queues nothing. Entries added later (a start with --allow-changes) are queued then, once. Returns the
    numbers of the trials queued now."""
    if not entries:
        return []
    done = study.user_attrs.get(ENQUEUED)
    if done is None:
        if not claim_study_attr(storage, study.study_name, ENQUEUED, list(entries)):
            return []  # another process claimed it a moment ago and queues them
        todo = [(i, e) for i, e in enumerate(entries)]
    else:
        todo = [(i, e) for i, e in enumerate(entries) if e not in done]
        if not todo:
            return []
        study.set_user_attr(ENQUEUED, [*done, *(e for _, e in todo)])
    study_id = storage.get_study_id_from_name(study.study_name)
    return [_queue(storage, study_id, entry, f"study file enqueue[{i}]") for i, entry in todo]


def _queue(storage: optuna.storages.BaseStorage, study_id: int, params: dict[str, Any], by: str) -> int:
    """One WAITING trial with ``params`` fixed, as Optuna's ``Study.enqueue_trial`` makes it, but with its number
    known (another process may queue trials at the same moment)."""
    template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params},
                                         user_attrs={QUEUED_BY: by})
    return storage.get_trial_number_from_id(storage.create_new_trial(study_id, template_trial=template))


# --- queue and budget ---


BUDGET = "trials"  # the study's user attribute: the budget (finished trials) it was last started with


def beyond_budget(study: optuna.Study, budget: int) -> str | None:
    """The line saying that queued trials wait beyond ``budget`` (finished trials) and how to run them; None when
    the budget runs every queued trial (workers take queued trials first)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    left = max(0, budget - finished)
    if waiting <= left:
        return None
    over = waiting - left
    counted = f"{waiting} queued trial waits" if waiting == 1 else f"{waiting} queued trials wait"
    whose = ("it is" if waiting == 1 else "all of them") if over == waiting else f"{over} of them"
    total, them = finished + waiting, "it" if waiting == 1 else "them"
    return (f"{counted} in study '{study.study_name}', {whose} beyond its budget of {budget} finished trials "
            f"({finished} finished); to run {them}, start the study with --trials {total}: "
            f"search start --study {study.study_name} --trials {total}")


# --- search enqueue -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    number: int  # the trial's number
    params: dict[str, Any]
    ahead: int  # queued trials that workers take before it
    beyond: str | None = None  # `beyond_budget`'s line when the study's last budget does not run it


def enqueue_file(study_name: str, storage_url: Store | str | None, path: Path) -> Queued:
    """`search enqueue`: one trial from ``path`` (a TrainConfig file or a mapping of searched parameters) into an
    existing study's queue, checked against the space and fixed values the study was created with (its stored
    definition, so the study file need not be here). Every check comes before the one write."""
    store = locate(storage_url)
    storage = open_storage(store, must_exist=True, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise SearchError(f"no study '{study_name}' in {store.masked} (studies there: {', '.join(names) or 'none'}); "
                          f"create it first with `search start --study {study_name}`")
    study = optuna.load_study(study_name=study_name, storage=storage)
    definition = study.user_attrs.get("definition")
    if definition is None:
        raise SearchError(f"study '{study_name}' has no stored definition (it was created by an older version); "
                          f"run `search start --study {study_name}` once to store it")
    space = from_definition(definition["space"])
    base = {**definition["fixed"], "dataset": definition["dataset"], "epochs": definition["epochs"],
            "metric": definition["metric"]}
    raw = config.read_yaml(path)
    source = str(path)
    if isinstance(raw, dict) and "dataset" in raw:  # a TrainConfig file, as `search export` writes it
        params = _params_of_config(space, base, raw, source=source, study=study_name)
    else:
        params = check_trial(space, base, raw, where=source)
    _refuse_duplicate(study, params, source)
    number = _queue(storage, storage.get_study_id_from_name(study_name), params, f"search enqueue {path.name}")
    ahead = sum(t.state == TrialState.WAITING and t.number < number for t in study.get_trials(deepcopy=False))
    budget = study.user_attrs.get(BUDGET)
    return Queued(number, params, ahead, beyond_budget(study, budget) if isinstance(budget, int) else None)


def _params_of_config(space: dict[str, Param], base: dict[str, Any], raw: dict[str, Any], *, source: str,
                      study: str) -> dict[str, Any]:
    """The searched parameters of a whole TrainConfig: each one the study would ask for with these values (a
    conditional one only when its condition holds). Every other key must hold what the study's trials use anyway
    (fixed, the study's dataset and epochs, or TrainConfig's default): refused, naming them all, otherwise."""
    cfg = config.from_dict({k: v for k, v in raw.items() if k != "search"}, source=source).to_dict()
    shared = config.TrainConfig(**base).to_dict()
    _same_as(cfg, shared, [k for k in config.KEYS if k not in space and k not in _MACHINE_KEYS],
             source=source, study=study, space=space)
    wanted: dict[str, Any] = {}
    for name, param in space.items():
        if param.active(wanted):
            wanted[name] = cfg[name]
    params = check_trial(space, base, wanted, where=source)
    # A searched parameter the study would not ask for with these values (momentum without sgd): its default.
    trial = config.TrainConfig(**{**base, **params}).to_dict()
    _same_as(cfg, trial, [k for k in space if k not in params], source=source, study=study, space=space)
    return params


def _same_as(cfg: dict[str, Any], runs: dict[str, Any], keys: list[str], *, source: str, study: str,
             space: dict[str, Param]) -> None:
    differ = [k for k in keys if cfg[k] != runs[k]]
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise SearchError(f"{source}: {', '.join(f'{k} {cfg[k]!r}' for k in differ)} {verb} from what study "
                          f"'{study}' runs with it ({', '.join(f'{k} {runs[k]!r}' for k in differ)}); only its "
                          f"searched parameters can be queued: {', '.join(space) or 'none'}")


def _refuse_duplicate(study: optuna.Study, params: dict[str, Any], source: str) -> None:
    """A trial with the same parameters that is queued, running or finished would only be repeated (a failed one
    may be run again)."""
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            continue
        same = t.system_attrs.get("fixed_params", t.params) if t.state == TrialState.WAITING else t.params
        if same == params:
            raise SearchError(f"{source}: study '{study.study_name}' already has trial {t.number} "
                              f"({t.state.name.lower()}) with these parameters; nothing queued")
