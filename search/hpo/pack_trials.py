"""Trial packs, the search's side: which trials a worker trains together as one fused model (search/train/pack.py).

A pack is up to K trials (the study's ``pack:``, or ``--pack``) that agree on what cannot be fused (the training
side's ``pack_key``: architecture, batch size, image size, precision, optimizer family, epochs, ...) and differ in
what can (learning rate, weight decay, momentum, dropout, augmentation, seed, ...). Each member is a real Optuna
trial: its own number, reports, pruning decision, files, checkpoint and retry.

How the members are asked for (search/hpo/objective.py runs them):

1. The first is any trial: Optuna's ``optimize`` asks the study as for a lone trial (the oldest queued trial first,
   else the study's own sampler).
2. Queued (WAITING) trials that can share its pack join next, oldest first: a trial queued with another
   architecture waits for a pack of its own.
3. The rest are new trials sampled with the unfusable parameters fixed to the first's: Optuna's
   PartialFixedSampler around the study's own sampler, so TPE still chooses the learning rate, dropout, ...; its
   constant liar (on by default in a packed study, search/hpo/studies.py) counts the members already asked as
   running, so they spread out.

A retried trial (its worker died or was stopped: it resumes from its own checkpoint) runs alone, as does a trial of
an architecture the fusion does not support yet; a worker says each such reason once.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # the thread Optuna's optimize runs for its own trial
from optuna.trial import TrialState

from search.hpo.space import same
from search.hpo.studies import StudySpec, suggest_config
from search.train import pack
from search.train.config import TrainConfig

RETRY = "retry_of"  # user attribute of a retried trial (search/hpo/storage.py: retry_once)


def alone(spec: StudySpec, trial: optuna.Trial, cfg: TrainConfig) -> str | None:
    """Why a pack's first trial must run alone (one line, said once per worker), or None."""
    if spec.cv_folds is not None:
        return "a cv_folds study trains each trial's folds in turn: its trials run one at a time, not in packs"
    if RETRY in trial.user_attrs:
        return ("retried trials run alone, each resuming from its own checkpoint (the members of a pack train the "
                "same epochs together)")
    why = pack.unsupported(cfg)
    return f"{why}; its trials run one at a time" if why else None


def fixed_names(spec: StudySpec) -> list[str]:
    """The searched parameters a pack's members share: those of the training side's pack key, and the parameters
    their conditions name, so that every member asks for the same ones."""
    names = {name for name in spec.space if name in pack.PACK_KEYS}
    grown = True
    while grown:  # a condition's parameters decide whether a shared one is asked for at all: shared too
        extra = {other for name in names for other in (spec.space[name].when or {}) if other not in names}
        names |= extra
        grown = bool(extra)
    return [name for name in spec.space if name in names]


def joins(shared: list[str], first: dict[str, Any], queued: dict[str, Any]) -> bool:
    """Whether a queued trial whose given parameters are ``queued`` can join the pack of the trial with ``first``:
    it names no shared parameter with another value (the ones it leaves out are asked with the first's values)."""
    return all(name not in queued or (name in first and same(queued[name], first[name])) for name in shared)


def ask_members(study: optuna.Study, spec: StudySpec, first: optuna.Trial, n: int) -> list[optuna.Trial]:
    """Up to ``n - 1`` more trials for the pack of ``first`` (whose parameters are asked), each with its parameters
    asked: queued trials that can join first, then new ones (see the module's docstring)."""
    shared = fixed_names(spec)
    fixed = {name: first.params[name] for name in shared if name in first.params}
    members: list[optuna.Trial] = []
    storage = study._storage  # Optuna's own ask reaches its queue through the same two calls
    base = study.sampler
    study.sampler = optuna.samplers.PartialFixedSampler(fixed, base)  # for every member asked here, from its start
    try:
        for waiting in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if len(members) >= n - 1:
                break
            queued = waiting.system_attrs.get("fixed_params", waiting.params)
            if RETRY in waiting.user_attrs or not joins(shared, first.params, queued):
                continue
            try:
                if not storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it a moment ago
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            trial = optuna.Trial(study, waiting._trial_id)
            members.append(trial)
            suggest_config(spec, trial)  # what it leaves out: the first's shared values, the sampler's rest
        while len(members) < n - 1:
            trial = optuna.Trial(study, storage.create_new_trial(study._study_id))
            members.append(trial)
            suggest_config(spec, trial)
    finally:
        study.sampler = base
    return members


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[contextlib.ExitStack]:
    """Each of ``trials`` beats as Optuna's own trial does (a worker that dies stops them all, and the stale check
    fails and retries each); more can be added with ``stack.enter_context(beat(study, trial))``."""
    with contextlib.ExitStack() as stack:
        for trial in trials:
            stack.enter_context(beat(study, trial))
        yield stack


def beat(study: optuna.Study, trial: optuna.Trial) -> contextlib.AbstractContextManager:
    return get_heartbeat_thread(trial._trial_id, study._storage)


def attr(members: list[int]) -> dict[str, Any]:
    """The user attribute ``pack`` of each member: the pack's id (its first trial's number), size and members."""
    return {"id": members[0], "size": len(members), "members": list(members)}
