"""What a study optimises: one validation metric, or several objectives (accuracy against cost).

A study file names either ``metric`` (with ``direction``), or ``objectives``, a list such as::

    objectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: minimize}]

With two or more objectives Optuna keeps a Pareto front instead of one best trial: a trial is on the front when no
other complete trial is at least as good in every objective and better in one. The metrics:

    val_acc, val_auc   the kept (best) epoch's validation value; higher is better, so only ``maximize``
    params             the model's trainable parameters
    epoch_seconds      mean seconds of the trial's training epochs (training and validation pass)
    latency_ms         inference time per image at batch size 1 on the trial's device (median of timed runs)

The first must be val_acc or val_auc: it picks the kept epoch, the views of a single-objective study (history,
importances, top trials) read it, and a search for the smallest model alone would find one that learnt nothing.
Optuna cannot prune multi-objective studies, so their pruner is off."""
from __future__ import annotations

import copy
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial

from search.errors import SearchError
from search.train.config import METRICS as TRAINING

COST = ("params", "epoch_seconds", "latency_ms")
METRICS = (*TRAINING, *COST)
DIRECTIONS = ("maximize", "minimize")
LABELS = {"val_acc": "validation accuracy", "val_auc": "validation AUC", "params": "parameters",
          "epoch_seconds": "seconds per epoch", "latency_ms": "latency (ms per image)"}

Objectives = tuple[tuple[str, str], ...]  # ((metric, direction), ...)


def parse(raw: Any, *, source: str) -> Objectives:
    """The ``objectives`` list of a study file, checked: each a {metric, direction} mapping, no metric twice."""
    example = "[{metric: val_acc, direction: maximize}, {metric: params, direction: minimize}]"
    if not isinstance(raw, list) or not raw:
        raise SearchError(f"{source}: objectives must be a list of {{metric, direction}} mappings such as "
                          f"{example}, got {raw!r}")
    found: list[tuple[str, str]] = []
    for i, entry in enumerate(raw):
        where = f"{source}: objectives[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"metric", "direction"}:
            raise SearchError(f"{where}: expected a mapping with exactly the keys metric and direction, got {entry!r}")
        metric, direction = entry["metric"], entry["direction"]
        if metric not in METRICS:
            raise SearchError(f"{where}: metric {metric!r} is not known; valid: {', '.join(METRICS)}")
        if direction not in DIRECTIONS:
            raise SearchError(f"{where}: direction {direction!r} is not known; valid: {', '.join(DIRECTIONS)}")
        if metric in TRAINING and direction != "maximize":
            raise SearchError(f"{where}: {metric} can only be maximized (the kept epoch is its highest)")
        if any(metric == m for m, _ in found):
            raise SearchError(f"{where}: metric {metric} is named twice")
        found.append((metric, direction))
    if found[0][0] not in TRAINING:
        raise SearchError(f"{source}: the first objective must be val_acc or val_auc (it picks each trial's kept "
                          f"epoch, and reports rank by it); got {', '.join(m for m, _ in found)}")
    return tuple(found)


def single(metric: Any, direction: Any, *, source: str) -> Objectives:
    """A study file's single-objective form (``metric``, ``direction``), checked by the rules of ``objectives``."""
    if metric not in TRAINING:
        raise SearchError(f"{source}: metric {metric!r} is not known; valid: {', '.join(TRAINING)} (cost metrics "
                          f"are objectives beside one of them: objectives: [...])")
    if direction not in DIRECTIONS:
        raise SearchError(f"{source}: direction {direction!r} is not known; valid: {', '.join(DIRECTIONS)}")
    if direction != "maximize":
        raise SearchError(f"{source}: {metric} can only be maximized (the kept epoch is its highest)")
    return ((metric, direction),)


def training_metric(objectives: Objectives) -> str:
    """The validation metric that picks a trial's kept epoch: the first objective (`parse` sees to it)."""
    return objectives[0][0]


# --- reading a study ----------------------------------------------------------------------------------------

def of_study(study: optuna.Study) -> Objectives:
    """The study's objectives as `search start` recorded them (user attribute ``objectives``); a study stored
    without it has one objective, its ``metric``."""
    stored = study.user_attrs.get("objectives")
    if stored:
        return tuple((m, d) for m, d in stored)
    metric = study.user_attrs.get("metric", "value")
    return ((metric, study.directions[0].name.lower()),)


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials on the Pareto front, in order of the first objective (best first), then number."""
    trials = study.best_trials
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(trials, key=lambda t: (sign * t.values[0], t.number))


def dominated(values: Sequence[float], others: Sequence[Sequence[float]], directions: Sequence[str]) -> bool:
    """Whether some row of ``others`` is at least as good as ``values`` in every objective and better in one."""
    signs = [1 if d == "maximize" else -1 for d in directions]
    mine = [s * v for s, v in zip(signs, values)]
    for row in others:
        theirs = [s * v for s, v in zip(signs, row)]
        if all(t >= m for t, m in zip(theirs, mine)) and any(t > m for t, m in zip(theirs, mine)):
            return True
    return False


def as_first(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with their first objective as their one value: the views of a single-objective study (history,
    importances, parallel coordinates...) then read a multi-objective study by its accuracy."""
    if not is_multi(study):
        return trials
    out = []
    for t in trials:
        view = copy.copy(t)  # shallow: the study's own trial keeps all its values
        view.values = t.values[:1] if t.values else None
        out.append(view)
    return out


def best_text(study: optuna.Study) -> str:
    """The best so far, for a progress line: ``0.9512 (trial 7)``, or with several objectives the front's size
    (``3 on the Pareto front``)."""
    if is_multi(study):
        n = len(study.best_trials)
        return f"{n} on the Pareto front"
    best = study.best_trial
    return f"{best.value:.4f} (trial {best.number})"


def values_text(objectives: Objectives, values: Sequence[float] | None) -> str:
    """``val_acc 0.9512, params 1,234,567``; ``-`` without values."""
    if not values:
        return "-"
    return ", ".join(f"{m} {fmt(m, v)}" for (m, _), v in zip(objectives, values))


def fmt(metric: str, value: float) -> str:
    if metric == "params":
        return f"{value:,.0f}"
    if metric in TRAINING:
        return f"{value:.4f}"
    return f"{value:.3g}"
