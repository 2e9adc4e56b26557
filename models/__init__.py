"""Image classifiers for 28x28 inputs, looked up by name.

Every model returns raw logits of shape ``(N, num_classes)``. The origin report ended its networks in
log-softmax and trained with NLL loss; ``F.cross_entropy`` on logits computes exactly that, in one fused and
numerically safer step, so the models stop at the logits.

    >>> model = build_model("simple_cnn_v2", in_channels=3, num_classes=9, dropout=0.5)
    >>> list_models()[:2]
    ['alexnet', 'resnet101']

Each architecture module registers its builders with :func:`register_model` (models/registry.py) when it is
imported, which :func:`build_model` does at the first build of one of its models (their names are known before,
so checking a config needs no torch). :func:`build_model` validates the arguments and raises :class:`ModelError`
(a ``ValueError``) with one line naming the valid choices. Nothing here imports the search service.

``size`` is the input side in pixels (28, 64, 128 or 224, the MedMNIST+ sizes). Every model accepts every size;
builders that take a ``size`` argument change their layers with it (the ResNets and Xception use the paper's
downsampling stem above 28 px), the others pool their last feature map to what their head expects.
"""
from __future__ import annotations

from models import registry
from models.registry import SIZES, ModelError, build_model, list_models, pretrained_models, register_model

__all__ = ["MODEL_REFERENCES", "SIZES", "ModelError", "build_model", "list_models", "pretrained_models",
           "register_model"]


def __getattr__(name: str) -> object:
    """``MODEL_REFERENCES``: complete once every shipped architecture's module is imported (they load torch)."""
    if name == "MODEL_REFERENCES":
        registry.load()
        return registry.MODEL_REFERENCES
    raise AttributeError(f"module 'models' has no attribute {name!r}")
