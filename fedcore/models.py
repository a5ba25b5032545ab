"""Model registry: each CIFAR-10 model is one function that returns a fresh nn.Module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedcore import catalog
from fedcore.errors import UsageError

NUM_CLASSES = 10
MODELS: dict[str, Callable[[], nn.Module]] = {}


def register(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Add a model builder under `name` (the value of --model)."""

    def wrap(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        MODELS[name] = builder
        return builder

    return wrap


def build_model(name: str) -> nn.Module:
    if name not in MODELS:
        raise UsageError(f"unknown --model '{name}': use one of {', '.join(sorted(MODELS))}")
    return MODELS[name]()


def check_model(name: str) -> str:
    return catalog.check_model(name)


class TutorialCNN(nn.Module):
    """The two-conv CNN of the PyTorch CIFAR-10 tutorial, as in Flower's baselines."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@register("cnn")
def cnn() -> nn.Module:
    return TutorialCNN()


@register("mobilenetv2")
def mobilenetv2() -> nn.Module:
    """torchvision MobileNetV2 with a 3x3 stride-1 first conv for 32x32 inputs."""
    import torchvision  # here, not at the top: it costs seconds at every start of the CLI

    model = torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(3, first.out_channels, 3, stride=1, padding=1, bias=False)
    return model


@register("resnet18")
def resnet18() -> nn.Module:
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem and no max-pool."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    return model
