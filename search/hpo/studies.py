"""Study files (``studies/<name>.yaml``) -> StudySpec, plus the Optuna sampler and pruner they name.

A study file says what to search (``space``), what stays put (``fixed``), which trials run first (``enqueue``,
the warm start), on which data, for how many epochs and trials, and how Optuna samples and prunes. Every mistake
is found when the file is loaded, before any worker starts, and reported as one line naming the file and the key:
a bad file should cost seconds, not a night of failed trials.

Study files are looked up by name in ``./studies/`` first (so a project can override or add studies), then
in the ones shipped with the package (``studies/`` in the repository, installed as the package
``search_studies``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

from search import env
from search.errors import SearchError
from search.hpo import goals
from search.hpo.space import STUDY_KEYS, Param, check_params, parse_space, suggest
from search.train import config

STUDY_FILE_KEYS = ("name", "dataset", "data_dir", "metric", "direction", "objectives", "epochs", "trials", "timeout",
                   "sampler", "pruner", "space", "fixed", "enqueue", "keep_best_weights", "keep_epoch_by", "cv_folds",
                   "pack")
REQUIRED = ("name", "dataset")
DEFAULT_TRIALS = 20
DEFAULT_SAMPLER: dict[str, Any] = {"name": "tpe", "seed": 0}
# Optuna's own default; it needs no settings and never prunes before 5 trials have finished.
DEFAULT_PRUNER: dict[str, Any] = {"name": "median"}
_NAME = re.compile(r"[A-Za-z0-9._-]+")  # safe in a storage URL, a file name and a shell, unquoted

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
    "nsgaiii": optuna.samplers.NSGAIIISampler,
}
# Samplers that cannot optimise several objectives at once (Optuna raises at the first trial).
_SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
# Optuna constructs these samplers without their extra package and fails only at the first trial.
_SAMPLER_NEEDS = {"cmaes": "cmaes"}
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successivehalving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
PACKAGE = "search_studies"  # the repository's studies/ folder, as installed (see pyproject.toml)


@dataclass(frozen=True)
class StudySpec:
    name: str
    dataset: str
    data_dir: str | None
    metric: str
    direction: str
    epochs: int  # the most epochs one trial may run (a pruner may stop it sooner)
    trials: int  # the default budget of `search start`
    timeout: float | None  # seconds
    sampler: dict[str, Any]  # {"name": ..., "seed": ..., **keyword arguments of the Optuna class}
    pruner: dict[str, Any]  # {"name": ..., **keyword arguments of the Optuna class}
    space: dict[str, Param]
    fixed: dict[str, Any]
    path: Path  # the file it came from
    keep_best_weights: bool = False  # a trial that completes as the best so far keeps its weights (`export --weights`)
    # Trials queued once, when the study is created, before the sampler's own (the warm start): each a mapping of
    # some of the space's parameters, checked (search/hpo/queue.py queues them).
    enqueue: tuple[dict[str, Any], ...] = ()
    # What the trials are judged by: ((metric, direction),) for a single-objective study (``metric``,
    # ``direction``), or the file's ``objectives`` (search/hpo/goals.py). ``metric`` is then the validation
    # metric among them, which picks each trial's kept epoch, and ``direction`` the first objective's.
    objectives: goals.Objectives = ()
    # The validation metric that picks each trial's kept epoch (TrainConfig.keep_epoch_by); None: ``metric``.
    keep_epoch_by: str | None = None
    # Cross-validated selection (search/hpo/folds.py): each trial trains on cv_folds stratified folds of train+val,
    # made from cv_seed (the file's sampler seed, never a worker's own) and stored with the definition.
    cv_folds: int | None = None
    cv_seed: int = 0
    # Trials a worker trains at once as one fused model (search/hpo/pack_trials.py); 1 = one trial at a time. How the
    # study runs, not what it searches: not part of its definition, and `--pack` overrides it.
    pack: int = 1

    def __post_init__(self) -> None:
        if not self.objectives:  # a spec built in code with metric and direction only
            object.__setattr__(self, "objectives", ((self.metric, self.direction),))

    @property
    def multi(self) -> bool:
        """Several objectives: Optuna keeps a Pareto front, and nothing is pruned."""
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    def base_config(self) -> dict[str, Any]:
        """TrainConfig values shared by every trial: ``fixed`` plus the study's dataset, data_dir, epochs, metric."""
        kept_by = {"keep_epoch_by": self.keep_epoch_by} if self.keep_epoch_by is not None else {}
        return {**self.fixed, "dataset": self.dataset, "data_dir": self.data_dir, "epochs": self.epochs,
                "metric": self.metric, **kept_by}

    def definition(self) -> dict[str, Any]:
        """What the study is, as stored with it when it is created (JSON): a start from a file that differs is
        refused (search/hpo/supervisor.py: ensure_study). Not part of it: the name, the budget and timeout (a
        start may raise them), the sampler seed (each worker has its own), and data_dir (where this machine keeps
        the files: workers on other machines read the same dataset from other folders).

        Part of it: the ``enqueue`` entries (only when there are some, so that studies stored before the key existed
        keep their definition). An edited warm start changes which trials the study runs first, like an edited
        space; with ``--allow-changes`` the entries it has not queued yet are queued (search/hpo/queue.py)."""
        value = {"dataset": self.dataset, "metric": self.metric, "direction": self.direction, "epochs": self.epochs,
                 "space": {name: dataclasses.asdict(p) for name, p in self.space.items()}, "fixed": self.fixed,
                 "sampler": {k: v for k, v in self.sampler.items() if k != "seed"}, "pruner": self.pruner}
        if self.enqueue:
            value["enqueue"] = list(self.enqueue)
        if self.multi:
            value["objectives"] = [list(o) for o in self.objectives]
        if self.keep_epoch_by is not None:
            value["keep_epoch_by"] = self.keep_epoch_by
        if self.cv_folds is not None:  # the folds themselves join it when the study is created (ensure_study)
            value["cv_folds"] = {"k": self.cv_folds, "seed": self.cv_seed}
        return json.loads(json.dumps(value, default=str))  # tuples become lists, as the store gives them back

    def sizes(self) -> list[int]:
        """The image sizes (pixels) its trials may use: the searched choices, else the fixed one, else 28."""
        param = self.space.get("size")
        if param is not None and param.type == "categorical":
            return sorted(set(param.choices or ()))
        if param is not None:  # type int: every step from low to high
            return list(range(int(param.low), int(param.high) + 1, int(param.step or 1)))
        return [self.fixed.get("size", 28)]


# --- finding study files ------------------------------------------------------------------------------------

def _packaged_dir() -> Path | None:
    try:
        folder = resources.files(PACKAGE)
    except ModuleNotFoundError:
        # Run from a source checkout without installing: the repository's studies/ sits next to search/.
        folder = Path(__file__).resolve().parents[2] / "studies"
    return folder if isinstance(folder, Path) and folder.is_dir() else None


def study_dirs() -> list[Path]:
    """Folders searched for study files, first wins: ``./studies`` (if any), then the packaged studies."""
    dirs: list[Path] = []
    local = Path.cwd() / "studies"
    if local.is_dir():
        dirs.append(local)
    packaged = _packaged_dir()
    # In the repository root with an editable install both are the same folder; list it once.
    if packaged is not None and not any(d.resolve() == packaged.resolve() for d in dirs):
        dirs.append(packaged)
    return dirs


def list_study_files() -> dict[str, Path]:
    """Study name (the file stem) -> file, ``./studies`` overriding packaged ones, sorted by name."""
    found: dict[str, Path] = {}
    for folder in reversed(study_dirs()):
        # .yml first so that a .yaml of the same stem in the same folder wins.
        for path in sorted(folder.iterdir(), key=lambda p: (p.suffix != ".yml", p.name)):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                found[path.stem] = path
    return dict(sorted(found.items()))


def find_study(name_or_path: str) -> Path:
    """A path (ending .yaml/.yml or containing '/') as is, else a study name looked up in :func:`list_study_files`."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = env.user_path(text, what="study file")
        if not path.is_file():
            raise SearchError(f"study file not found: {path}")
        return path
    files = list_study_files()
    if text not in files:
        available = ", ".join(files) or "none"
        raise SearchError(f"unknown study '{text}'; available: {available} (or give a path to a .yaml file)")
    return files[text]


def _display(path: Path) -> str:
    """The path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- loading ------------------------------------------------------------------------------------------------

def _int(value: Any, *, source: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SearchError(f"{source}: {key} must be an integer of at least {minimum}, got {value!r}")
    return value


def _named(raw: Any, *, source: str, key: str, default: dict[str, Any], valid: dict[str, Any]) -> dict[str, Any]:
    """A sampler/pruner setting: a name alone (``sampler: random``) or a mapping with ``name`` and keyword args."""
    if raw is None:
        raw = dict(default)
    elif isinstance(raw, str):
        raw = {"name": raw}
    elif not isinstance(raw, dict):
        raise SearchError(f"{source}: {key} must be a name or a mapping with a 'name', got {raw!r}")
    values = {**raw, "name": raw.get("name", default["name"])}
    config.choice(f"{key}.name", values["name"], list(valid), source=source)
    for arg in values:
        if not isinstance(arg, str):
            raise SearchError(f"{source}: {key}: setting names must be strings, got {arg!r}")
    return values


def load_study(name_or_path: str, *, data_dir: str | None = None, trials: int | None = None,
               timeout: float | None = None, pack: int | None = None) -> StudySpec:
    """Read and check a study file; ``data_dir``, ``trials``, ``timeout`` and ``pack`` override the file (None keeps
    it)."""
    path = find_study(name_or_path)
    source = _display(path)
    raw = config.read_yaml(source if Path(source).is_file() else path)
    if not isinstance(raw, dict):
        raise SearchError(f"{source}: expected a mapping of study keys ({', '.join(STUDY_FILE_KEYS)}), "
                          f"got {type(raw).__name__}")
    for key in raw:
        if key not in STUDY_FILE_KEYS:
            raise SearchError(f"{source}: unknown key {key!r}; valid keys: {', '.join(STUDY_FILE_KEYS)}")
    for key in REQUIRED:
        if key not in raw:
            raise SearchError(f"{source}: the key '{key}' is required")

    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SearchError(f"{source}: name {name!r} may contain only letters, digits, '-', '_' and '.'")
    from search.train.data import is_dataset, list_datasets  # the registry is the truth; imported late

    dataset = raw["dataset"]
    if not (isinstance(dataset, str) and is_dataset(dataset)):  # the whole list only for the message
        dataset = config.choice("dataset", dataset, list_datasets(), source=source)
    data_dir = data_dir if data_dir is not None else raw.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
        raise SearchError(f"{source}: data_dir must be a path string, got {data_dir!r}")
    if "objectives" in raw:
        both = [k for k in ("metric", "direction") if k in raw]
        if both:
            raise SearchError(f"{source}: objectives replaces {' and '.join(both)}; keep one of the two forms")
        objectives = goals.parse(raw["objectives"], source=source)
        metric, direction = goals.training_metric(objectives), objectives[0][1]
    else:
        objectives = goals.single(raw.get("metric", "val_acc"), raw.get("direction", "maximize"),
                                           source=source)
        metric, direction = objectives[0]
    multi = len(objectives) > 1
    epochs = _int(raw.get("epochs", config.TrainConfig.epochs), source=source, key="epochs", minimum=1)
    trials = _int(trials if trials is not None else raw.get("trials", DEFAULT_TRIALS),
                  source=source, key="trials", minimum=1)
    pack = _int(pack if pack is not None else raw.get("pack", 1), source=source, key="pack", minimum=1)
    timeout = _timeout(timeout if timeout is not None else raw.get("timeout"), source=source)
    sampler, pruner = _sampler_and_pruner(raw, source=source, multi=multi)
    keep = raw.get("keep_best_weights", False)
    if not isinstance(keep, bool):
        raise SearchError(f"{source}: keep_best_weights must be true or false, got {keep!r}")

    keep_epoch_by = raw.get("keep_epoch_by")
    if keep_epoch_by is not None:
        config.choice("keep_epoch_by", keep_epoch_by, config.EPOCH_METRICS, source=source)
    cv_folds = raw.get("cv_folds")
    if cv_folds is not None:
        cv_folds = _int(cv_folds, source=source, key="cv_folds", minimum=2)
        if keep:
            raise SearchError(f"{source}: keep_best_weights keeps one model per trial, but a cv_folds trial trains "
                              f"{cv_folds}, none on the official split; drop one of the two and train the winner "
                              f"with `search train`")
    space = parse_space(raw.get("space"), source=source)
    fixed = _parse_fixed(raw.get("fixed"), source=source, space=space)
    spec = StudySpec(name=name, dataset=dataset, data_dir=data_dir, metric=metric, direction=direction,
                     epochs=epochs, trials=trials, timeout=timeout, sampler=sampler, pruner=pruner, space=space,
                     fixed=fixed, path=path.resolve(), keep_best_weights=keep, objectives=objectives,
                     keep_epoch_by=keep_epoch_by, cv_folds=cv_folds, cv_seed=sampler["seed"], pack=pack)
    _check_configs(spec, source=source)
    spec = dataclasses.replace(spec, enqueue=_parse_enqueue(raw.get("enqueue"), source=source, spec=spec))
    make_sampler(spec)  # a bad keyword argument fails here, not in every worker
    make_pruner(spec)
    return spec


def _timeout(value: Any, *, source: str) -> float | None:
    """A study's timeout in seconds (None: none); anything but a number greater than 0 is one line."""
    if value is None:
        return None
    try:
        seconds = config.number(value, integer=False)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SearchError(f"{source}: timeout must be a number of seconds greater than 0, got {value!r}")
    return seconds


def _sampler_and_pruner(raw: dict[str, Any], *, source: str, multi: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's sampler and pruner settings, checked against the number of objectives."""
    sampler = _named(raw.get("sampler"), source=source, key="sampler", default=DEFAULT_SAMPLER, valid=SAMPLERS)
    sampler["seed"] = _int(sampler.get("seed", DEFAULT_SAMPLER["seed"]), source=source, key="sampler.seed",
                           minimum=0)
    pruner = _named(raw.get("pruner"), source=source, key="pruner",
                    default={"name": "none"} if multi else DEFAULT_PRUNER, valid=PRUNERS)
    if multi and pruner["name"] != "none":
        raise SearchError(f"{source}: pruner {pruner['name']}: a study with several objectives cannot be pruned "
                          f"(Optuna prunes single-objective studies only); remove the pruner or set it to none")
    if multi and sampler["name"] in _SINGLE_OBJECTIVE_SAMPLERS:
        valid = ", ".join(n for n in SAMPLERS if n not in _SINGLE_OBJECTIVE_SAMPLERS)
        raise SearchError(f"{source}: sampler {sampler['name']} optimises one objective only; with several "
                          f"objectives use one of: {valid}")
    return sampler, pruner


def _parse_fixed(raw: Any, *, source: str, space: dict[str, Param]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SearchError(f"{source}: fixed must be a mapping of TrainConfig keys, got {type(raw).__name__}")
    for key in raw:
        if key in STUDY_KEYS:
            raise SearchError(f"{source}: fixed.{key}: {key} is set by the study (or the worker); "
                              f"use the top-level key instead")
        if key not in config.KEYS:
            valid = ", ".join(k for k in config.KEYS if k not in STUDY_KEYS)
            raise SearchError(f"{source}: fixed.{key}: not a TrainConfig key; valid: {valid}")
        if key in space:
            raise SearchError(f"{source}: fixed.{key}: '{key}' is both searched (space) and fixed; keep one")
    return dict(raw)


def _check_configs(spec: StudySpec, *, source: str) -> None:
    """Every choice and every bound, with ``fixed``, must make a valid TrainConfig."""
    base = spec.base_config()
    try:
        config.from_dict(base, source=source)
    except SearchError as err:
        raise SearchError(f"{source}: fixed: {err.message}") from None
    for param in spec.space.values():
        for value in _values_to_check(spec, param):
            try:
                config.from_dict({**base, param.name: value}, source=source)
            except SearchError as err:
                raise SearchError(f"{source}: space.{param.name}: {err.message}") from None


def _values_to_check(spec: StudySpec, param: Param) -> Iterator[Any]:
    yield from param.bounds()
    if param.name == "size":  # one of a set, not an interval: once its ends pass, every size of the range
        yield from spec.sizes()


def _parse_enqueue(raw: Any, *, source: str, spec: StudySpec) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SearchError(f"{source}: enqueue must be a list of parameter mappings such as "
                          f"[{{lr: 0.001, batch_size: 128}}], got {type(raw).__name__}")
    entries = [check_trial(spec.space, spec.base_config(), entry, where=source, prefix=f"enqueue[{i}].")
               for i, entry in enumerate(raw)]
    # As the store gives them back (tuples become lists), so the stored definition compares equal.
    return tuple(json.loads(json.dumps(entries)))


def check_trial(space: dict[str, Param], base: dict[str, Any], raw: Any, *, where: str,
                prefix: str = "") -> dict[str, Any]:
    """A (partial) mapping of searched parameters to queue as a trial, checked as the space takes them
    (space.check_params) and, with the study's shared values ``base``, as a TrainConfig; returns the values."""
    values = check_params(space, raw, where=where, prefix=prefix)
    try:
        config.TrainConfig(**{**base, **values})
    except SearchError as err:
        at = f"{where}: {prefix.rstrip('.')}" if prefix else where
        raise SearchError(f"{at}: {err.message}") from None
    return values


def suggest_config(spec: StudySpec, trial: optuna.trial.BaseTrial) -> config.TrainConfig:
    """The TrainConfig of one trial: the study's shared values plus this trial's suggestions (device 'auto')."""
    values = spec.base_config()
    values.update(suggest(spec.space, trial))
    return config.from_dict(values, source=f"{spec.path}: trial {getattr(trial, 'number', '?')}")


# --- Optuna objects -----------------------------------------------------------------------------------------

def _construct(kind: str, spec: StudySpec, factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> Any:
    params = inspect.signature(factory).parameters
    accepted = ", ".join(p for p in params if p != "seed") or "none"
    where = f"{_display(spec.path)}: {kind} {name}"
    # Named here rather than left to the TypeError, whose wording ("takes no arguments") may not name the key.
    unknown = [key for key in kwargs if key not in params]
    if unknown:
        raise SearchError(f"{where}: unknown setting '{unknown[0]}'; its settings: {accepted}")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as err:  # a missing or badly typed value
        raise SearchError(f"{where}: {err}; its settings: {accepted}") from None


def make_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded ``sampler.seed + seed_offset``: workers pass distinct offsets, so they
    do not all draw the same random start-up trials."""
    settings = dict(spec.sampler)
    name = settings.pop("name")
    settings["seed"] = (settings.get("seed", 0) + seed_offset) % 2**32  # numpy's seeds: the sum wraps, never fails
    if name == "tpe" and spec.pack > 1:
        # A pack's members are sampled while the others are running: TPE's constant liar counts running trials as
        # bad ones, so that the members spread out rather than crowd one good region (the file may say otherwise).
        settings.setdefault("constant_liar", True)
    needs = _SAMPLER_NEEDS.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        raise SearchError(f"{_display(spec.path)}: sampler {name} needs the '{needs}' package: pip install {needs}")
    return _construct("sampler", spec, SAMPLERS[name], name, settings)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; hyperband's ``max_resource`` defaults to the study's epochs (one epoch = one step)."""
    settings = dict(spec.pruner)
    name = settings.pop("name")
    if name == "hyperband":
        settings.setdefault("max_resource", spec.epochs)
        low, high = settings.get("min_resource", 1), settings["max_resource"]
        if isinstance(low, int) and isinstance(high, int) and low > high:
            # Optuna accepts this and then builds no brackets; say so instead.
            raise SearchError(f"{_display(spec.path)}: pruner hyperband: min_resource {low} is greater than "
                              f"max_resource {high}")
    return _construct("pruner", spec, PRUNERS[name], name, settings)
