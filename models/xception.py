"""Xception (Chollet 2017) with its downsampling reduced for 28x28 inputs."""
from __future__ import annotations

import torch
from torch import nn

from models.layers import Dropout
from models.registry import ModelError, register_model

__all__ = ["SeparableConv2d", "Xception", "xception"]


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1, each followed by BatchNorm (models-spec.md)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class _PoolBlock(nn.Module):
    """[ReLU] SepConv -> ReLU -> SepConv -> max-pool, plus a 1x1 conv shortcut: entry-flow and exit-flow blocks."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, *, stride: int,
                 relu_first: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            # Not in-place: the block's input is still needed by the shortcut.
            nn.ReLU() if relu_first else nn.Identity(),
            SeparableConv2d(in_channels, mid_channels),
            nn.ReLU(inplace=True),
            SeparableConv2d(mid_channels, out_channels),
            # A stride-1 pool would only blur, so the 28-px variant drops it where it skips downsampling.
            nn.MaxPool2d(kernel_size=3, stride=stride, padding=1) if stride > 1 else nn.Identity(),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _MiddleBlock(nn.Module):
    """Three ReLU-SepConv layers at constant width with an identity shortcut."""

    def __init__(self, channels: int = 728) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.ReLU(), SeparableConv2d(channels, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class Xception(nn.Module):
    """Xception's entry, middle and exit flows, sized for 28x28 inputs.

    Of the original's five stride-2 steps (stem conv and four pools), this keeps three: the stem convs and the
    first entry block use stride 1, so the map goes 28 -> 28 -> 14 -> 7 (middle flow) -> 4, and global average
    pooling still sees a 4x4 map. Strides do not change parameter count: about 22.9M at 1000 classes, as the paper.
    Above 28 px (``size`` 64, 128, 224) the stem conv and the first entry block take the paper's stride 2 again,
    so a 224-px image reaches the middle flow at 14x14 as in the paper, not at 56x56.
    """

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5, middle_repeats: int = 8,
                 size: int = 28) -> None:
        super().__init__()
        stride = 1 if size <= 28 else 2
        self.entry = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            # The stem already ends in ReLU, so the first block does not start with one (as in the paper).
            _PoolBlock(64, 128, 128, stride=stride, relu_first=False),
            _PoolBlock(128, 256, 256, stride=2, relu_first=True),
            _PoolBlock(256, 728, 728, stride=2, relu_first=True),
        )
        self.middle = nn.Sequential(*(_MiddleBlock(728) for _ in range(middle_repeats)))
        self.exit = nn.Sequential(
            _PoolBlock(728, 728, 1024, stride=2, relu_first=True),
            SeparableConv2d(1024, 1536),
            nn.ReLU(inplace=True),
            SeparableConv2d(1536, 2048),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            Dropout(dropout),
            nn.Linear(2048, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.exit(self.middle(self.entry(x))))


@register_model("xception", reference="Chollet 2017, adapted to 28 px")
def xception(*, in_channels: int, num_classes: int, dropout: float = 0.5, middle_repeats: int = 8,
             size: int = 28) -> Xception:
    """Xception for 28x28 inputs; ``middle_repeats`` middle-flow blocks (paper: 8); ``dropout`` before the linear."""
    if isinstance(middle_repeats, bool) or not isinstance(middle_repeats, int) or middle_repeats < 0:
        raise ModelError(f"xception middle_repeats must be a non-negative integer, got {middle_repeats!r}")
    return Xception(in_channels=in_channels, num_classes=num_classes, dropout=dropout, middle_repeats=middle_repeats,
                    size=size)
