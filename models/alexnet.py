"""AlexNet (Krizhevsky et al. 2012) with its stem shrunk for 28x28 inputs."""
from __future__ import annotations

import torch
from torch import nn

from models.layers import Dropout, PoolTo
from models.registry import ModelError, register_model

__all__ = ["AlexNet28", "alexnet"]


class AlexNet28(nn.Module):
    """AlexNet's five conv layers (64, 192, 384, 256, 256) and three dropout-regularised FC layers.

    The ImageNet stem (11x11 conv, stride 4) would shrink a 28x28 image to almost nothing, so the first conv is
    3x3 with stride 1; the rest keeps the original kernels and its overlapping 3x3 stride-2 max-pools, padded so
    the map goes 28 -> 14 -> 7 -> 4 and the classifier sees 256 x 4 x 4 features. Larger inputs (64, 128, 224 px)
    keep the same layers; their final map is average-pooled to 4 x 4 (as torchvision's AlexNet pools to 6 x 6).

    ``hidden`` is the FC width. ImageNet's 4096 is sized for 1000 classes from 224-pixel images; for 28-pixel
    inputs and about ten classes 1024 is plenty and keeps a trial's time and memory sane.
    """

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5, hidden: int = 1024) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            PoolTo(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            Dropout(dropout),
            nn.Linear(256 * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("alexnet", reference="Krizhevsky et al. 2012, adapted to 28 px")
def alexnet(*, in_channels: int, num_classes: int, dropout: float = 0.5, hidden: int = 1024) -> AlexNet28:
    """AlexNet for 28x28 inputs; ``dropout`` precedes the first two FC layers as in the original."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ModelError(f"alexnet hidden must be a positive integer, got {hidden!r}")
    return AlexNet28(in_channels=in_channels, num_classes=num_classes, dropout=dropout, hidden=hidden)
