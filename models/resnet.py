"""torchvision's ResNets with MedMNIST's 28-pixel stem, or ImageNet-pretrained at 224 pixels.

Above 28 px (``size`` 64, 128 or 224, the MedMNIST+ files) the ResNets keep torchvision's standard ImageNet stem
(7x7 stride-2 conv and 3x3 stride-2 max-pool), as MedMNIST's own 224-px benchmark does; at 28 px they use the
3x3 stride-1 stem without max-pool. Pretrained ResNets always see 224 px: ``size: 224`` reads the 224-px files
directly, smaller sizes are resized on the device by :class:`ImageNetInput`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Dropout
from models.registry import ModelError, register_model

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = ["ImageNetInput", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

_REFERENCE = "He et al. 2016; torchvision, MedMNIST 28-px stem"


class ImageNetInput(nn.Module):
    """Feeds 28x28 images to a network trained on ImageNet: grey -> 3 channels, then bilinear resize to 224.

    The resize happens on the device, inside the model, so the data pipeline stays at 28 pixels for every
    architecture. Inputs are not re-normalised to ImageNet statistics: fine-tuning adapts the first layers.
    """

    def __init__(self, net: nn.Module, *, in_channels: int, size: int = 224) -> None:
        super().__init__()
        self.net = net
        self.in_channels = in_channels
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torchvision's loader looks for ``weights``; mirrors ``torch.hub.load_state_dict_from_url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _new_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(Dropout(dropout), nn.Linear(in_features, num_classes))


def _resnet(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    dropout: float,
    pretrained: bool,
    size: int = 28,
) -> nn.Module:
    # torchvision is imported here, not at the top: importing it loads its detection ops and torch._dynamo
    # (2 s on a small CPU), which every `search` process would pay at start, whatever model it trains.
    from torchvision.models import resnet as tv

    builder = getattr(tv, name)
    weights = getattr(tv, f"ResNet{name.removeprefix('resnet')}_Weights").IMAGENET1K_V1
    if pretrained:
        return _pretrained(name, builder, weights, in_channels=in_channels, num_classes=num_classes, dropout=dropout)
    model = builder(weights=None)
    if size <= 28:
        # MedMNIST's 28-px benchmark stem: the ImageNet 7x7/2 conv plus 3x3/2 pool would cut 28 px to 7 before layer1.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:  # the standard ImageNet stem (64 px reaches layer1 at 16x16, 224 px at 56x56), for any channel count
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
    model.fc = _new_head(model.fc.in_features, num_classes, dropout)
    return model


def _pretrained(
    name: str,
    builder: Callable[..., nn.Module],
    weights: WeightsEnum,
    *,
    in_channels: int,
    num_classes: int,
    dropout: float,
) -> nn.Module:
    if in_channels not in (1, 3):
        raise ModelError(f"pretrained {name} needs in_channels 1 or 3, got {in_channels}")
    path = checkpoint_path(weights)
    # Checked here because torchvision would otherwise try to download, which hangs or fails obscurely offline.
    if not path.is_file():
        raise ModelError(
            f"pretrained weights for {name} not found at {path}; "
            f"place {weights.url} there or set pretrained: false"
        )
    try:
        model = builder(weights=weights, progress=False)
    except Exception as exc:  # a truncated or foreign file: the user can fix it by replacing the file
        raise ModelError(f"cannot load pretrained weights for {name} from {path}: {exc}") from exc
    # Keep the ImageNet stem: its filters were learned for 224-px inputs, hence ImageNetInput's resize.
    model.fc = _new_head(model.fc.in_features, num_classes, dropout)
    return ImageNetInput(model, in_channels=in_channels)


@register_model("resnet18", reference=_REFERENCE, pretrained=True)
def resnet18(*, in_channels: int, num_classes: int, dropout: float = 0.5, pretrained: bool = False,
             size: int = 28) -> nn.Module:
    """ResNet-18; ``dropout`` precedes the final linear layer."""
    return _resnet("resnet18", in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   pretrained=pretrained, size=size)


@register_model("resnet34", reference=_REFERENCE, pretrained=True)
def resnet34(*, in_channels: int, num_classes: int, dropout: float = 0.5, pretrained: bool = False,
             size: int = 28) -> nn.Module:
    """ResNet-34; ``dropout`` precedes the final linear layer."""
    return _resnet("resnet34", in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   pretrained=pretrained, size=size)


@register_model("resnet50", reference=_REFERENCE, pretrained=True)
def resnet50(*, in_channels: int, num_classes: int, dropout: float = 0.5, pretrained: bool = False,
             size: int = 28) -> nn.Module:
    """ResNet-50; ``dropout`` precedes the final linear layer."""
    return _resnet("resnet50", in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   pretrained=pretrained, size=size)


@register_model("resnet101", reference=_REFERENCE, pretrained=True)
def resnet101(*, in_channels: int, num_classes: int, dropout: float = 0.5, pretrained: bool = False,
              size: int = 28) -> nn.Module:
    """ResNet-101; ``dropout`` precedes the final linear layer."""
    return _resnet("resnet101", in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   pretrained=pretrained, size=size)


@register_model("resnet152", reference=_REFERENCE, pretrained=True)
def resnet152(*, in_channels: int, num_classes: int, dropout: float = 0.5, pretrained: bool = False,
              size: int = 28) -> nn.Module:
    """ResNet-152; ``dropout`` precedes the final linear layer."""
    return _resnet("resnet152", in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   pretrained=pretrained, size=size)
