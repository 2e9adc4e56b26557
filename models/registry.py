"""The model registry: builders register under a name; :func:`build_model` checks the common arguments and any
architecture-specific options (``hidden`` for alexnet, ``middle_repeats`` for xception) so that a bad study file
fails with one :class:`ModelError` line naming the valid choices, not a ``TypeError``.

This package knows nothing of the search service: its errors are ``ValueError`` subclasses that any caller can
catch (search's training engine turns them into its own one-line user errors).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from torch import nn


class ModelError(ValueError):
    """A bad model name, argument or option: one line that names the bad value and what would be valid."""

    def format_message(self) -> str:
        """The line a user sees (named as search's own errors name it)."""
        return " ".join(str(self).split())


Builder = Callable[..., "nn.Module"]
B = TypeVar("B", bound=Builder)

# Arguments build_model passes itself; anything else a builder accepts is an architecture option.
_COMMON_ARGS = frozenset({"in_channels", "num_classes", "dropout", "pretrained", "size"})

#: Input sides in pixels that every architecture accepts (MedMNIST+: 28, 64, 128, 224).
SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    reference: str
    pretrained: bool


_REGISTRY: dict[str, _Entry] = {}

# The module (models/NAME.py) where each shipped architecture registers itself: its name is known before that
# module, and torch with it, is imported. Checking a study file or a config (`search start` before its workers
# start, `search export`) never builds a model and needs no torch; a module is imported when one of its models is
# first built. tests/test_models.py checks this table against what the modules register.
SHIPPED: dict[str, str] = {
    "alexnet": "alexnet",
    "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet", "resnet101": "resnet", "resnet152": "resnet",
    "simple_cnn_v1": "simple_cnn", "simple_cnn_v2": "simple_cnn",
    "xception": "xception",
}


def load(names: list[str] | None = None) -> None:
    """Import the modules that register ``names`` (every shipped architecture when None)."""
    for module in sorted({SHIPPED[n] for n in (SHIPPED if names is None else names) if n in SHIPPED}):
        importlib.import_module(f"models.{module}")

#: One-line source of each architecture, for the model table in docs/study-files.md.
MODEL_REFERENCES: dict[str, str] = {}


def register_model(name: str, *, reference: str = "", pretrained: bool = False) -> Callable[[B], B]:
    """Register ``builder`` under ``name``.

    ``pretrained=True`` declares that the builder accepts ``pretrained: bool`` and can load ImageNet weights;
    other builders never see that argument.
    """

    def wrap(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = _Entry(builder, reference, pretrained)
        MODEL_REFERENCES[name] = reference
        return builder

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(set(_REGISTRY) | set(SHIPPED))


def pretrained_models() -> list[str]:
    """Names for which ``pretrained=True`` is supported, sorted."""
    load()
    return sorted(name for name, entry in _REGISTRY.items() if entry.pretrained)


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    dropout: float = 0.5,
    pretrained: bool = False,
    size: int = 28,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` x ``size`` x ``size`` inputs and ``num_classes`` logits.

    ``dropout`` is the classifier's dropout rate; how each architecture uses it is in its builder's docstring.
    Extra keyword arguments are architecture options (for example ``middle_repeats`` for xception).
    Raises :class:`ModelError` for an unknown name, a bad value or an unsupported option.
    """
    if name not in _REGISTRY:
        load([name])
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"unknown architecture {name!r}; valid: {', '.join(list_models())}")
    if pretrained and not entry.pretrained:
        raise ModelError(
            f"pretrained weights exist only for: {', '.join(pretrained_models())}; "
            f"set pretrained: false for {name!r}"
        )
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    # bool is an int subclass: reject it so `dropout: true` in YAML is not read as p=1.
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(size, bool) or size not in SIZES:
        raise ModelError(f"size must be one of {', '.join(map(str, SIZES))} (pixels), got {size!r}")
    _check_options(name, entry.builder, kwargs)
    if entry.pretrained:
        kwargs["pretrained"] = pretrained
    if "size" in inspect.signature(entry.builder).parameters:
        kwargs["size"] = size
    return entry.builder(in_channels=in_channels, num_classes=num_classes, dropout=float(dropout), **kwargs)


def _check_positive_int(arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{arg} must be a positive integer, got {value!r}")


def _check_options(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    options = sorted(set(inspect.signature(builder).parameters) - _COMMON_ARGS)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise ModelError(f"architecture {name!r} has no option {unknown[0]!r}; its options: {valid}")
