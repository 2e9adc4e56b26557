"""A study's declarative search space -> ``trial.suggest_*`` calls (studies.suggest_config makes the TrainConfig).

A space is a mapping from TrainConfig keys to entries, suggested in file order (YAML keeps mapping order)::

    lr:        {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    batch_size: {type: categorical, choices: [64, 128, 256]}
    optimizer: {type: categorical, choices: [adam, sgd]}
    momentum:  {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}

``when`` makes a parameter conditional: it is suggested only when every named earlier parameter took one of
the listed values; otherwise it is not suggested at all (so it never appears in the trial's params) and the
TrainConfig default or the study's ``fixed`` value applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from search.errors import SearchError
from search.train import config

TYPES = ("float", "int", "categorical")
# These come from the study file's top level (or, for device, from the worker), never from a trial.
STUDY_KEYS = ("dataset", "data_dir", "epochs", "metric", "keep_epoch_by", "device")
_ENTRY_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "step", "log", "when"),
    "int": ("type", "low", "high", "step", "log", "when"),
    "categorical": ("type", "choices", "when"),
}
Number = float | int


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # one of TYPES
    low: Number | None = None
    high: Number | None = None
    step: Number | None = None  # float: None = continuous; int: at least 1
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] | None = None  # earlier param -> the values that enable this one

    def bounds(self) -> tuple[Any, ...]:
        """The values whose validity stands for the whole range: the choices, or low and high."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def can_take(self, value: Any) -> bool:
        if self.choices is not None:
            return any(same(value, choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def take(self, value: Any) -> Any:
        """``value`` as a trial of this parameter would hold it (a float parameter's ``0`` is ``0.0``); a value the
        parameter can never take raises ValueError saying what it can take."""
        if self.choices is not None:
            if isinstance(value, str) and not any(isinstance(c, str) for c in self.choices):
                value = config.as_number(value)  # `1e-3` among number choices
            for choice in self.choices:
                if same(value, choice):
                    return choice
            raise ValueError(f"not a choice; choices: {_describe(self)}")
        try:
            value = config.number(value, integer=self.type == "int")
        except ValueError as err:
            raise ValueError(f"not {err}; valid: {_describe(self)}") from None
        if not self.low <= value <= self.high:  # type: ignore[operator]
            raise ValueError(f"outside the space; valid: {_describe(self)}")
        if self.step is not None:
            k = (value - self.low) / self.step  # type: ignore[operator]
            # Optuna's own test (FloatDistribution._contains): a float step is met within 1e-8 of a step.
            if abs(k - round(k)) > (0 if self.type == "int" else 1e-8):
                raise ValueError(f"not on the space's steps; valid: {_describe(self)}")
        return value

    def active(self, values: dict[str, Any]) -> bool:
        """Whether ``when`` is met by the values suggested so far (a skipped parameter meets nothing)."""
        if not self.when:
            return True
        return all(name in values and any(same(values[name], v) for v in allowed)
                   for name, allowed in self.when.items())


def same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a condition on a bool choice must not match the integer 1, or the reverse.
    return (isinstance(a, bool) == isinstance(b, bool)) and a == b


def _number(value: Any, *, where: str, key: str, integer: bool) -> Number:
    try:
        return config.number(value, integer=integer)
    except ValueError as err:
        raise SearchError(f"{where}: {key} must be {err}, got {value!r}") from None


def _parse_entry(name: str, entry: Any, *, where: str, earlier: dict[str, Param]) -> Param:
    if not isinstance(entry, dict):
        raise SearchError(f"{where}: expected a mapping such as {{type: float, low: 0.0, high: 1.0}}, "
                          f"got {entry!r}")
    kind = entry.get("type")
    if kind not in TYPES:
        raise SearchError(f"{where}: type {kind!r} is not known; valid: {', '.join(TYPES)}")
    unknown = [key for key in entry if key not in _ENTRY_KEYS[kind]]
    if unknown:
        raise SearchError(f"{where}: unknown key {unknown[0]!r} for type {kind}; "
                          f"valid: {', '.join(_ENTRY_KEYS[kind])}")
    when = _parse_when(entry.get("when"), where=where, earlier=earlier)
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchError(f"{where}: choices must be a non-empty list, got {choices!r}")
        for choice in choices:
            # Optuna stores choices as they are; only these types survive a round trip through the storage.
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise SearchError(f"{where}: choice {choice!r} must be a number, string, true/false or null")
        for i, choice in enumerate(choices):
            if any(same(choice, other) for other in choices[:i]):
                raise SearchError(f"{where}: choice {choice!r} is listed twice")
        return Param(name, kind, choices=tuple(choices), when=when)

    integer = kind == "int"
    for key in ("low", "high"):
        if key not in entry:
            raise SearchError(f"{where}: the key '{key}' is required for type {kind}")
    low = _number(entry["low"], where=where, key="low", integer=integer)
    high = _number(entry["high"], where=where, key="high", integer=integer)
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise SearchError(f"{where}: log must be true or false, got {log!r}")
    step = entry.get("step", 1 if integer else None)
    if step is not None:
        step = _number(step, where=where, key="step", integer=integer)
        if step <= 0:
            raise SearchError(f"{where}: step must be greater than 0, got {step}")
    if low > high:
        raise SearchError(f"{where}: low {low} is greater than high {high}")
    if log and low <= 0:
        raise SearchError(f"{where}: log needs low greater than 0, got low {low}")
    # Optuna refuses these combinations when suggesting; say so now rather than in every trial.
    if log and not integer and step is not None:
        raise SearchError(f"{where}: log and step cannot be used together for type float")
    if log and integer and step != 1:
        raise SearchError(f"{where}: log needs step 1 for type int, got step {step}")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(raw: Any, *, where: str, earlier: dict[str, Param]) -> dict[str, tuple[Any, ...]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise SearchError(f"{where}: when must be a mapping such as {{optimizer: sgd}}, got {raw!r}")
    when: dict[str, tuple[Any, ...]] = {}
    for other, values in raw.items():
        if other not in earlier:
            known = ", ".join(earlier) or "none"
            raise SearchError(f"{where}: when names '{other}', which is not a space parameter defined "
                              f"earlier in the file; earlier parameters: {known}")
        values = tuple(values) if isinstance(values, list) else (values,)
        if not values:
            raise SearchError(f"{where}: when lists no values for '{other}'")
        for value in values:
            if not earlier[other].can_take(value):
                raise SearchError(f"{where}: when {other}: {value!r} can never be met; '{other}' takes "
                                  f"{_describe(earlier[other])}")
        when[other] = values
    return when


def _describe(param: Param) -> str:
    if param.choices is not None:
        return ", ".join(repr(c) for c in param.choices)
    text = f"values in [{param.low}, {param.high}]"
    if param.step is not None and not (param.type == "int" and param.step == 1):
        text += f" in steps of {param.step} from {param.low}"
    return text + (" (log scale)" if param.log else "")


def parse_space(raw: Any, *, source: str) -> dict[str, Param]:
    """Validate a study's ``space`` mapping; errors are one line naming ``source`` and ``space.<param>``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SearchError(f"{source}: space must be a mapping of TrainConfig keys to entries, "
                          f"got {type(raw).__name__}")
    searchable = [key for key in config.KEYS if key not in STUDY_KEYS]
    space: dict[str, Param] = {}
    for name, entry in raw.items():
        where = f"{source}: space.{name}"
        if name in STUDY_KEYS:
            raise SearchError(f"{where}: {name} is set by the study (or the worker), not searched; "
                              f"searchable keys: {', '.join(searchable)}")
        if name not in config.KEYS:
            raise SearchError(f"{where}: not a TrainConfig key; searchable keys: {', '.join(searchable)}")
        space[name] = _parse_entry(name, entry, where=where, earlier=space)
    return space


def from_definition(raw: dict[str, Any]) -> dict[str, Param]:
    """A space as a study's stored definition holds it (JSON: lists for tuples) -> the Params it was made of."""
    space: dict[str, Param] = {}
    for name, entry in raw.items():
        when = entry.get("when")
        space[name] = Param(**{**entry, "choices": None if entry.get("choices") is None else tuple(entry["choices"]),
                               "when": None if when is None else {k: tuple(v) for k, v in when.items()}})
    return space


def check_params(space: dict[str, Param], raw: Any, *, where: str, prefix: str = "") -> dict[str, Any]:
    """A mapping of some of the space's parameters (a trial to queue) -> the values a trial would hold, in the
    space's order. A mistake is one line: ``where: <prefix><key>: `` the bad value and what would be valid.

    Each key must be a parameter of the space, each value one it can take, and a conditional parameter needs the
    values that make it searched in the same mapping: a trial never asks for it otherwise, and Optuna would drop
    the value without a word. Keys left out are sampled as usual.
    """
    if not isinstance(raw, dict) or not raw:
        at = f"{where}: {prefix.rstrip('.')}" if prefix else where
        raise SearchError(f"{at}: expected a mapping of searched parameters such as {{lr: 0.001}}, got {raw!r}")
    for key in raw:
        if key not in space:
            searched = ", ".join(space) or "none (the space is empty)"
            raise SearchError(f"{where}: {prefix}{key}: not a searched parameter of the study (a fixed or "
                              f"unsearched key cannot be queued); searched: {searched}")
    values: dict[str, Any] = {}
    for name, param in space.items():
        if name not in raw:
            continue
        try:
            values[name] = param.take(raw[name])
        except ValueError as err:
            raise SearchError(f"{where}: {prefix}{name}: {raw[name]!r} is {err}") from None
    for name, param in space.items():
        if name in values and param.when and not param.active(values):
            needs = "; ".join(f"{other} one of {', '.join(map(repr, allowed))}"
                              for other, allowed in param.when.items())
            got = ", ".join(f"{other} {values[other]!r}" if other in values else f"no {other}"
                            for other in param.when)
            raise SearchError(f"{where}: {prefix}{name}: {raw[name]!r} would never be used: {name} is searched only "
                              f"with {needs}, and this mapping has {got}")
    return values


def suggest(space: dict[str, Param], trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Ask ``trial`` for each parameter in file order, skipping those whose ``when`` is not met."""
    values: dict[str, Any] = {}
    for param in space.values():
        if not param.active(values):
            continue
        if param.type == "categorical":
            values[param.name] = trial.suggest_categorical(param.name, list(param.choices or ()))
        elif param.type == "int":
            values[param.name] = trial.suggest_int(param.name, int(param.low), int(param.high),  # type: ignore[arg-type]
                                                   step=int(param.step or 1), log=param.log)
        else:
            values[param.name] = trial.suggest_float(param.name, float(param.low), float(param.high),  # type: ignore[arg-type]
                                                     step=param.step, log=param.log)
    return values
