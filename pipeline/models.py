"""Classifiers of the study: ResNet9, VGG9 and an MLP.

Each network exposes ``features(x)`` (the last-layer features h, the input of the
final linear layer) and ``classifier`` (that ``nn.Linear``), so that
``model(x) == model.classifier(model.features(x))``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

ARCHITECTURES = ("resnet9", "vgg9", "mlp")

# VGG9 body: conv widths, "M" for 2x2 max pooling.
VGG9_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def scaled_width(channels: int, width: float) -> int:
    """Return ``channels * width`` rounded, and at least 1."""
    return max(1, int(round(channels * width)))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Two conv-BN-ReLU blocks with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PadTo32(nn.Module):
    """Zero-pad 28x28 inputs (MNIST, Fashion-MNIST) to 32x32; leave others as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 28 and x.shape[-2] == 28:
            x = F.pad(x, (2, 2, 2, 2))
        return x


class Classifier(nn.Module):
    """A feature extractor followed by the final linear layer."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet9(num_classes: int, in_channels: int, width: float = 1.0) -> Classifier:
    """ResNet9 (the DAWNBench CIFAR-10 network); feature dimension 512 * width."""
    c1, c2, c3, c4 = (scaled_width(c, width) for c in (64, 128, 256, 512))
    body = nn.Sequential(
        PadTo32(),
        conv_bn_relu(in_channels, c1),
        conv_bn_relu(c1, c2),
        nn.MaxPool2d(2),
        Residual(c2),
        conv_bn_relu(c2, c3),
        nn.MaxPool2d(2),
        conv_bn_relu(c3, c4),
        nn.MaxPool2d(2),
        Residual(c4),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    return Classifier(body, c4, num_classes)


def vgg9(num_classes: int, in_channels: int, width: float = 1.0) -> Classifier:
    """VGG9: eight conv-BN-ReLU layers and one linear layer; feature dimension 512 * width."""
    layers: list[nn.Module] = [PadTo32()]
    channels = in_channels
    for item in VGG9_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = scaled_width(item, width)
            layers.append(conv_bn_relu(channels, out))
            channels = out
    layers.append(nn.Flatten())  # 32x32 input, five poolings: 1x1 spatial size
    return Classifier(nn.Sequential(*layers), channels, num_classes)


def mlp(num_classes: int, in_features: int, width: float = 1.0, depth: int = 3) -> Classifier:
    """MLP on flattened inputs: ``depth`` hidden layers of 512 * width units with ReLU."""
    hidden = scaled_width(512, width)
    layers: list[nn.Module] = [nn.Flatten()]
    size = in_features
    for _ in range(depth):
        layers += [nn.Linear(size, hidden), nn.ReLU(inplace=True)]
        size = hidden
    return Classifier(nn.Sequential(*layers), hidden, num_classes)


def build_model(architecture: str, *, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> Classifier:
    """Build a network by name for inputs of shape ``(channels, height, width)``."""
    if width <= 0:
        raise ValueError(f"invalid width multiplier {width!r}: expected a positive number such as 1 or 0.125")
    if architecture == "resnet9":
        return resnet9(num_classes, input_shape[0], width)
    if architecture == "vgg9":
        return vgg9(num_classes, input_shape[0], width)
    if architecture == "mlp":
        in_features = 1
        for size in input_shape:
            in_features *= size
        return mlp(num_classes, in_features, width)
    raise ValueError(f"unknown architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
