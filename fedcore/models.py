"""Model registry: each CIFAR-10 model is one function that returns a fresh nn.Module."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedcore import catalog
from fedcore.config import RunConfig
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


class TFTutorialCNN(nn.Module):
    """The TensorFlow CIFAR-10 tutorial CNN of McMahan et al. 2017 for 24x24 crops.

    Two 5x5 convolutions of 64 channels, each with ReLU, 3x3 stride-2 max-pool and local response
    normalisation, then fully connected 384 and 192 and a 10-way output: 1,068,298 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        # TF's depth_radius 4, alpha 0.001/9: torch divides alpha by the window size (9)
        lrn: dict[str, Any] = {"size": 9, "alpha": 0.001, "beta": 0.75, "k": 1.0}
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 6 * 6, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
            nn.Linear(192, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("tfcnn")
def tfcnn() -> nn.Module:
    return TFTutorialCNN()


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


@register("mobilenetv2-imagenet")
def mobilenetv2_imagenet() -> nn.Module:
    """torchvision's stock MobileNetV2 (3x3 stride-2 stem) with a 10-class head: the seed's model."""
    import torchvision

    return torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES)


@register("resnet18-imagenet")
def resnet18_imagenet() -> nn.Module:
    """torchvision's stock ResNet-18 (7x7 stride-2 stem, max-pool) with a 10-class head."""
    import torchvision

    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def initial_model(cfg: RunConfig) -> nn.Module:
    """The model a run starts from: fresh (seeded by the caller), ImageNet weights, or --weights FILE."""
    model = build_model(cfg.model)
    if cfg.pretrained:
        load_matching(model, imagenet_state(cfg.model), f"ImageNet weights for {cfg.model}", cfg.model)
    elif cfg.weights:
        load_matching(model, weights_file(Path(cfg.weights).expanduser()), f"--weights {cfg.weights}",
                      cfg.model)
    return model


def hub_checkpoints() -> Path:
    """torch.hub's cache folder for downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_state(name: str) -> dict[str, Any]:
    """torchvision's ImageNet weights for `name`, from torch.hub's cache, downloaded once if missing."""
    import torchvision

    file, url = catalog.PRETRAINED_FILES[name]
    enum = (torchvision.models.MobileNet_V2_Weights if name.startswith("mobilenetv2")
            else torchvision.models.ResNet18_Weights)
    weights = enum.IMAGENET1K_V1
    assert weights.url == url, (weights.url, url)  # catalog keeps the file name torchvision uses
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UsageError(
            f"--pretrained: cannot load {file} ({reason}); offline, place it (from {url}) "
            f"at {hub_checkpoints() / file}"
        ) from None


def weights_file(path: Path) -> dict[str, Any]:
    """A state dict saved with torch.save, or a fedlaunch checkpoint (its 'state_dict')."""
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a state dict
        raise UsageError(f"--weights {path}: not a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path}: not a state dict of tensors")
    return state


def load_matching(model: nn.Module, state: dict[str, Any], what: str, name: str) -> None:
    """Load every tensor of `state` into `model`; a last layer of another shape (ImageNet's 1000
    classes) stays new.

    Any other missing or misfitting tensor is a UsageError: the weights are for another model.
    """
    own = model.state_dict()
    head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1] + "."
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    misfits = [k for k in own if k not in keep and not k.startswith(head)]
    if misfits:
        shown = ", ".join(misfits[:3]) + (", ..." if len(misfits) > 3 else "")
        raise UsageError(f"{what} do not fit --model {name}: "
                         f"{len(misfits)} tensors missing or of another shape ({shown})")
    model.load_state_dict(keep, strict=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m fedcore.models fetch MODEL`: put MODEL's ImageNet weights in torch.hub's cache."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "fetch" or args[1] not in catalog.PRETRAINED_FILES:
        print(f"usage: python -m fedcore.models fetch {{{','.join(catalog.PRETRAINED_FILES)}}}",
              file=sys.stderr)
        return 2
    try:
        imagenet_state(args[1])
    except UsageError as exc:
        print(f"fedlaunch: {exc}", file=sys.stderr)
        return 2
    print(hub_checkpoints() / catalog.PRETRAINED_FILES[args[1]][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
