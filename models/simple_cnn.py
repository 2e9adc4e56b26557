"""The origin report's two small CNNs (``models-spec.md``), for grey or RGB 28x28 inputs.

Larger inputs (64, 128, 224 px) run through the same layers; :class:`~models.layers.PoolTo` averages the last
feature map down to the size the report's head expects (7x7 for v1, 3x3 for v2), so the parameter count and
the head do not change with the input size, and at 28 px the network is exactly the report's.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers import Dropout, PoolTo
from models.registry import register_model

__all__ = ["SimpleCNNv1", "SimpleCNNv2", "simple_cnn_v1", "simple_cnn_v2"]


class SimpleCNNv1(nn.Module):
    """Two 5x5 conv layers with LeakyReLU and max-pooling, then one linear layer (28 -> 14 -> 7).

    The report has no dropout; ``dropout`` is applied to the flattened features before the output layer so the
    search can tune it, and ``dropout=0.0`` reproduces the report's network exactly.
    """

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.LeakyReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.LeakyReLU(),
            nn.MaxPool2d(2),
            PoolTo(7),  # 28 px: already 7x7; larger inputs are averaged down to it
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            Dropout(dropout),
            nn.Linear(64 * 7 * 7, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_block(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        # The conv keeps its bias, as in the report, although the BatchNorm after it makes the bias redundant.
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        Dropout(dropout),
    )


class SimpleCNNv2(nn.Module):
    """Three conv-BN-ReLU-pool-dropout blocks (32, 64, 128 filters; 28 -> 14 -> 7 -> 3), then a 256-unit head.

    One hyperparameter sets both dropout rates, keeping the report's 2:1 ratio: the head uses ``dropout`` and each
    conv block ``dropout / 2``. The default ``dropout=0.5`` reproduces the report (0.5 and 0.25).
    """

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 32, dropout / 2),
            _conv_block(32, 64, dropout / 2),
            _conv_block(64, 128, dropout / 2),
            PoolTo(3),  # 28 px: already 3x3; larger inputs are averaged down to it
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("simple_cnn_v1", reference="origin report, SimpleCNN v1")
def simple_cnn_v1(*, in_channels: int, num_classes: int, dropout: float = 0.5) -> SimpleCNNv1:
    """The report's first CNN; ``dropout=0.0`` is the report's network. See :class:`SimpleCNNv1`."""
    return SimpleCNNv1(in_channels=in_channels, num_classes=num_classes, dropout=dropout)


@register_model("simple_cnn_v2", reference="origin report, SimpleCNN v2")
def simple_cnn_v2(*, in_channels: int, num_classes: int, dropout: float = 0.5) -> SimpleCNNv2:
    """The report's improved CNN; conv blocks use ``dropout / 2``, the head ``dropout``. See :class:`SimpleCNNv2`."""
    return SimpleCNNv2(in_channels=in_channels, num_classes=num_classes, dropout=dropout)
