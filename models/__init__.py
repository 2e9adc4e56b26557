"""Image classifiers for 28x28 inputs, looked up by name.

Every model returns raw logits of shape ``(N, num_classes)``. The origin report ended its networks in
log-softmax and trained with NLL loss; ``F.cross_entropy`` on logits computes exactly that, in one fused and
numerically safer step, so the models stop at the logits.

    >>> model = build_model("simple_cnn_v2", in_channels=3, num_classes=9, dropout=0.5)
    >>> list_models()[:2]
    ['alexnet', 'resnet101']

Each module registers its builders with :func:`register_model`; :func:`build_model` validates the common
arguments and any architecture-specific options (``hidden`` for alexnet, ``middle_repeats`` for xception)
so that a bad study file fails with one :class:`~search.errors.SearchError` line, not a ``TypeError``.

``size`` is the input side in pixels (28, 64, 128 or 224, the MedMNIST+ sizes). Every model accepts every size;
builders that take a ``size`` argument change their layers with it (the ResNets and Xception use the paper's
downsampling stem above 28 px), the others pool their last feature map to what their head expects.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import nn

from search.errors import SearchError

__all__ = ["MODEL_REFERENCES", "SIZES", "build_model", "list_models", "pretrained_models", "register_model"]

Builder = Callable[..., nn.Module]
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

#: One-line source of each architecture, for the README's model table.
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
    return sorted(_REGISTRY)


def pretrained_models() -> list[str]:
    """Names for which ``pretrained=True`` is supported, sorted."""
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
    Raises :class:`SearchError` for an unknown name, a bad value or an unsupported option.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise SearchError(f"unknown architecture {name!r}; valid: {', '.join(list_models())}")
    if pretrained and not entry.pretrained:
        raise SearchError(
            f"pretrained weights exist only for: {', '.join(pretrained_models())}; "
            f"set pretrained: false for {name!r}"
        )
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    # bool is an int subclass: reject it so `dropout: true` in YAML is not read as p=1.
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise SearchError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(size, bool) or size not in SIZES:
        raise SearchError(f"size must be one of {', '.join(map(str, SIZES))} (pixels), got {size!r}")
    _check_options(name, entry.builder, kwargs)
    if entry.pretrained:
        kwargs["pretrained"] = pretrained
    if "size" in inspect.signature(entry.builder).parameters:
        kwargs["size"] = size
    return entry.builder(in_channels=in_channels, num_classes=num_classes, dropout=float(dropout), **kwargs)


def _check_positive_int(arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError(f"{arg} must be a positive integer, got {value!r}")


def _check_options(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    options = sorted(set(inspect.signature(builder).parameters) - _COMMON_ARGS)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise SearchError(f"architecture {name!r} has no option {unknown[0]!r}; its options: {valid}")


# Imported last: each module registers itself through register_model, defined above.
from models import alexnet, resnet, simple_cnn, xception  # noqa: E402,F401
