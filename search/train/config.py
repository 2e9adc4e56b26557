"""TrainConfig: the one contract between a study, a trial, `search export` and `search train`.

A TrainConfig is a flat YAML mapping. Every key has a default except ``dataset``; unknown keys and bad
values are rejected with one line that names the key and what would be valid. Defaults follow the origin
report's improved model: simple_cnn_v2, Adam, lr 1e-3, batch 128.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from search.devices import check_device
from search.errors import SearchError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
METRICS = ("val_acc", "val_auc")
# What may pick the kept epoch: a study metric, or the validation loss (lowest wins).
EPOCH_METRICS = (*METRICS, "val_loss")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
GRAPHS = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    data_dir: str | None = None
    architecture: str = "simple_cnn_v2"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    dropout: float = 0.5  # the classifier's dropout; see each model's docstring for how it is applied
    augmentation: str = "none"
    label_smoothing: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    metric: str = "val_acc"  # the study's validation metric; it picks the kept epoch unless keep_epoch_by does
    # The validation metric that picks the kept epoch (val_acc, val_auc, or val_loss: lowest); None: ``metric``.
    # MedMNIST's protocol searches on one metric and keeps epochs by val_auc.
    keep_epoch_by: str | None = None
    # Test-time augmentation of validation and test predictions: the mean of the views' probabilities. none; flip
    # (the image and its mirror, 2 views); dihedral (the 8 flips and quarter turns). Allowed per dataset
    # (data.DatasetInfo.tta): only views that keep the label.
    tta: str = "none"
    seed: int = 0
    device: str = "auto"
    pretrained: bool = False
    # CUDA mixed precision: auto = bf16 where the card supports it, else fp32 (fp32 on the CPU, bf16 there is
    # CPU autocast); fp16 runs with a gradient scaler and needs CUDA. See engine.resolve_precision.
    precision: str = "auto"
    compile: bool = False  # torch.compile the model on CUDA (ignored on the CPU)
    # The training step and the evaluation pass as CUDA graphs (search/train/graphs.py, docs/graphs.md): on
    # captures them on CUDA (eager elsewhere, with a note in the log); off (the default until a GPU has measured
    # the capture) never; auto captures where bench/gpu_proof.py's figures say it pays: nowhere yet.
    graphs: str = "off"
    size: int = 28  # image side in pixels: those of the dataset (data.DatasetInfo.sizes: 28, and MedMNIST+ 64-224)
    # Own data (dataset folder:, csv:, npz:; search/train/owndata.py) whose source names no split: the fractions of
    # each class drawn into val and test, and the seed of that draw. Ignored by the shipped datasets.
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    skip_bad_images: bool = False  # own data: leave out (and count) files that are no readable image
    # The strength in [0, 1] of every augmentation policy the spec gives none (`affine` rather than `affine@0.3`);
    # None: each policy's default (today's crop and color for those two; search/train/augment_ops.py).
    aug_strength: float | None = None
    # Mixing of training pairs (search/train/mixing.py): none, mixup or cutmix, with the Beta(alpha, alpha) draw of
    # the share and the probability that a batch is mixed. Validation and test images are never mixed.
    mix: str = "none"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0
    # Own data only: the flips and quarter turns that keep its labels (none, flip, dihedral): what augmentation
    # and test-time views may use. None: none. The shipped datasets' rule is the registry's.
    symmetry: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in fields(TrainConfig))


def _field_type(key: str, hint: Any) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a TrainConfig annotation; any other annotation fails at import,
    so a new field cannot go unchecked."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        args = tuple(a for a in args if a is not type(None))
        hint = args[0] if len(args) == 1 else hint
    if hint not in (int, float, bool, str):
        raise TypeError(f"TrainConfig.{key}: no check for the annotation {hint!r}; add one to _check_type")
    return hint, optional


# Resolved with get_type_hints, not read from `field.type` (a string under `from __future__ import annotations`):
# every annotation form, Optional[...] included, maps to a real type and so to a check.
_TYPES: dict[str, tuple[type, bool]] = {key: _field_type(key, hint)
                                        for key, hint in typing.get_type_hints(TrainConfig).items()}


def as_number(value: Any) -> Any:
    """PyYAML reads `1e-3` (no dot) as a string; users write it that way, so a string that is a number is one.
    Anything else is returned as it is, for the caller's check to reject."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def number(value: Any, *, integer: bool) -> int | float:
    """The one reading of a number in a config, a study's space or a queued trial: an integer (never a bool or a
    float) where ``integer``, else a finite float (`1e-3` as a string too). Raises ValueError with what was wanted
    ("an integer", "a finite number"), for the caller to name the key."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("an integer")
        return value
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a finite number")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float's range
        raise ValueError("a finite number") from None
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return value


def _check_type(key: str, value: Any) -> Any:
    kind, optional = _TYPES[key]
    if key == "graphs" and isinstance(value, bool):  # YAML 1.1 reads a bare `on` / `off` as true / false
        return "on" if value else "off"
    if optional and value is None:
        return value
    if kind in (int, float):
        try:
            return number(value, integer=kind is int)
        except ValueError as err:
            raise SearchError(f"{key} must be {err}, got {value!r}") from None
    if kind is bool:
        if not isinstance(value, bool):
            raise SearchError(f"{key} must be true or false, got {value!r}")
    elif not isinstance(value, str) or not value:  # str
        what = "path string" if key == "data_dir" else "non-empty string or null" if optional else "non-empty string"
        raise SearchError(f"{key} must be a {what}, got {value!r}")
    return value


def choice(key: str, value: Any, valid: tuple[str, ...] | list[str], *, source: str | None = None) -> Any:
    """``value`` if it is one of ``valid``, else one line naming the key (after ``source``, the file) and the valid
    names."""
    if value not in valid:
        where = f"{source}: " if source else ""
        raise SearchError(f"{where}{key} {value!r} is not known; valid: {', '.join(valid)}")
    return value


# Augmentation policies (search/train/augment.py applies them): named here, where every value is checked, so that
# checking a config needs no torch.
POLICIES: tuple[str, ...] = ("none", "flip", "dihedral", "crop", "color", "affine", "rcrop", "gamma", "contrast",
                              "blur", "noise", "erase", "trivial")
# Policies without a strength (a flip is a flip); every other takes `name@m`, m in [0, 1].
FIXED_POLICIES = ("flip", "dihedral")
MIXES = ("none", "mixup", "cutmix")


def _invalid(part: str) -> SearchError:
    valid = ", ".join(POLICIES)
    return SearchError(
        f"unknown augmentation {part!r}; valid: {valid}, each with an optional strength (affine@0.3), or a "
        f"combination such as dihedral+color"
    )


def parse_ops(spec: str) -> tuple[tuple[str, float | None], ...]:
    """(name, strength or None) of each op of ``spec``, in order of application; ``()`` for ``"none"``.

    >>> parse_ops(" dihedral + color@0.4 ")
    (('dihedral', None), ('color', 0.4))
    """
    ops = []
    for part in str(spec).split("+"):
        name, at, value = part.strip().lower().partition("@")
        name = name.strip()
        if name not in POLICIES:
            raise _invalid(name)
        strength = None
        if at:
            if name in (*FIXED_POLICIES, "none"):
                raise SearchError(f"augmentation {spec!r}: {name} takes no strength; write {name} alone")
            try:
                strength = number(value.strip(), integer=False)
            except ValueError:
                strength = -1.0
            if not 0 <= strength <= 1:
                raise SearchError(f"augmentation {spec!r}: the strength of {name} must be a number in [0, 1], "
                                  f"got {value.strip()!r}")
        ops.append((name, strength))
    names = [name for name, _ in ops]
    if names == ["none"]:
        return ()
    if "none" in names:
        raise SearchError(f"augmentation {spec!r} combines 'none' with other policies; use 'none' alone")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SearchError(f"augmentation {spec!r} names {repeated[0]!r} twice; name each policy once")
    return tuple(ops)


def parse_policy(spec: str) -> tuple[str, ...]:
    """The op names of ``spec`` in order of application; ``()`` for ``"none"``.

    >>> parse_policy(" dihedral + color ")
    ('dihedral', 'color')
    """
    return tuple(name for name, _ in parse_ops(spec))


def validate(cfg: TrainConfig) -> None:
    """Check every value; raise SearchError naming the first bad key and what would be valid."""
    # The registries are the truth; imported here, at the first check. Neither loads torch (nor medmnist, unless
    # a MedMNIST name is asked for): `search start` checks every value of a study before its workers start.
    from models import list_models
    from search.train.data import TTA, get_info, is_dataset, list_datasets

    for key in KEYS:
        object.__setattr__(cfg, key, _check_type(key, getattr(cfg, key)))
    if not is_dataset(cfg.dataset):  # the whole list (with MedMNIST's) only for the message
        choice("dataset", cfg.dataset, list_datasets())
    choice("architecture", cfg.architecture, list_models())
    choice("optimizer", cfg.optimizer, OPTIMIZERS)
    choice("schedule", cfg.schedule, SCHEDULES)
    choice("metric", cfg.metric, METRICS)
    if cfg.keep_epoch_by is not None:
        choice("keep_epoch_by", cfg.keep_epoch_by, EPOCH_METRICS)
    choice("tta", cfg.tta, TTA)
    if cfg.symmetry is not None:
        choice("symmetry", cfg.symmetry, TTA)
    get_info(cfg.dataset).check_tta(cfg.tta, cfg.symmetry)
    choice("precision", cfg.precision, PRECISIONS)
    choice("graphs", cfg.graphs, GRAPHS)
    get_info(cfg.dataset).check_size(cfg.size)
    if cfg.epochs < 1:
        raise SearchError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise SearchError(f"batch_size must be at least 2 (BatchNorm needs two samples), got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise SearchError(f"lr must be greater than 0, got {cfg.lr}")
    if not 0 <= cfg.momentum < 1:
        raise SearchError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.weight_decay < 0:
        raise SearchError(f"weight_decay must be 0 or more, got {cfg.weight_decay}")
    if not 0 <= cfg.dropout < 1:
        raise SearchError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0 <= cfg.label_smoothing < 1:
        raise SearchError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise SearchError(f"warmup_epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs}")
    check_device(cfg.device)
    _check_augmentation(cfg)
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, key) < 0.5:
            raise SearchError(f"{key} must be in [0, 0.5), got {getattr(cfg, key)}")


def _check_augmentation(cfg: TrainConfig) -> None:
    """The policy, its strengths and mixing, against what keeps the dataset's labels (data.DatasetInfo's rule)."""
    from search.train.data import augment_limits, get_info
    from search.train.owndata import is_own

    ops = parse_ops(cfg.augmentation)
    if cfg.aug_strength is not None and not 0 <= cfg.aug_strength <= 1:
        raise SearchError(f"aug_strength must be in [0, 1], got {cfg.aug_strength}")
    choice("mix", cfg.mix, MIXES)
    if not cfg.mix_alpha > 0:
        raise SearchError(f"mix_alpha must be greater than 0, got {cfg.mix_alpha}")
    if not 0 <= cfg.mix_prob <= 1:
        raise SearchError(f"mix_prob must be in [0, 1], got {cfg.mix_prob}")
    info = get_info(cfg.dataset)
    limits = augment_limits(info, cfg.symmetry)
    for name, strength in ops:
        if name == "flip" and limits.symmetry == "none" or name == "dihedral" and limits.symmetry != "dihedral":
            raise SearchError(f"augmentation {name} can change the labels of {info.name} (its images have an "
                              f"orientation); its flips and turns: {limits.symmetry}"
                              f"{'; own data names them in its symmetry key' if is_own(info.name) else ''}")
        m = strength if strength is not None else cfg.aug_strength
        if name == "affine" and m is not None and 30 * m > limits.max_rotation:
            raise SearchError(f"augmentation affine at strength {m:g} rotates up to {30 * m:g} degrees; "
                              f"{info.name} allows {limits.max_rotation:g} (affine@{limits.max_rotation / 30:g} "
                              f"at most)")


def from_dict(values: Any, *, source: str = "config") -> TrainConfig:
    if not isinstance(values, dict):
        raise SearchError(f"{source}: expected a mapping of TrainConfig keys, got {type(values).__name__}")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise SearchError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(KEYS)}")
    if "dataset" not in values:
        raise SearchError(f"{source}: the key 'dataset' is required")
    return TrainConfig(**values)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing file or a syntax error is one line naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SearchError(f"{path}:{where}: YAML error: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SearchError(f"{path}: not a readable YAML file ({err})") from None


def load(path: str | Path, **overrides: Any) -> TrainConfig:
    """Load a TrainConfig YAML file. Keys under ``search:`` (written by `search export`) are notes, not config."""
    values = read_yaml(path)
    if values is None:
        values = {}
    if isinstance(values, dict):
        values = {k: v for k, v in values.items() if k != "search"}
        values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values, source=str(path))


def dump(cfg: TrainConfig, path: str | Path, *, notes: dict[str, Any] | None = None) -> None:
    """Write cfg as YAML (atomically: a temporary file renamed into place). ``notes`` go under ``search:``."""
    data: dict[str, Any] = cfg.to_dict()
    if notes:
        data["search"] = notes
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it into place: a reader (or a crash) sees the
    old file or the new one, never half of one. fsync first, so that the rename cannot reach the disk before the
    data does."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file would hold the space a full disk needs back
        raise
