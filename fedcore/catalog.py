"""Model and strategy names as plain data: the launcher checks them without torch or flwr."""

from __future__ import annotations

from typing import Any

from fedcore.errors import UsageError

# --model values; fedcore.models registers one builder under each (a test keeps them equal).
#   cnn                  the PyTorch tutorial CNN (conv 6/16, fc 120/84), as in Flower's baselines
#   tfcnn                the TensorFlow tutorial CNN of McMahan et al. 2017 (conv 64/64, fc 384/192), 24x24
#   mobilenetv2          MobileNetV2 with a 3x3 stride-1 stem for 32x32 images (the seed's local baseline)
#   mobilenetv2-imagenet torchvision's stock MobileNetV2 (stride-2 stem), new 10-class head, for 224x224
#   resnet18             ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 images
#   resnet18-imagenet    torchvision's stock ResNet-18 (7x7 stride-2 stem, max-pool), new 10-class head
MODEL_NAMES: tuple[str, ...] = (
    "cnn", "tfcnn", "mobilenetv2", "mobilenetv2-imagenet", "resnet18", "resnet18-imagenet",
)

# --pretrained: torchvision's ImageNet weights file for each model that has them, with the URL
# torchvision downloads it from into $TORCH_HOME/hub/checkpoints/ (torch.hub's cache).
PRETRAINED_FILES: dict[str, tuple[str, str]] = {
    "mobilenetv2": ("mobilenet_v2-b0353104.pth",
                    "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
    "resnet18-imagenet": ("resnet18-f37072fd.pth",
                          "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
}
# The stride-1 MobileNetV2 has the stock stem's shapes, so ImageNet weights fit it too; the
# CIFAR ResNet-18's 3x3 stem does not take the stock 7x7 one.
PRETRAINED_FILES["mobilenetv2-imagenet"] = PRETRAINED_FILES["mobilenetv2"]

# --augment: what each training batch goes through on the device (test images: none of it).
AUGMENTS: dict[str, str] = {
    "none": "no augmentation",
    "flip": "random horizontal flip",
    "flip-crop": "random 32x32 crop of the image padded by 4 with zeros, random flip",
    "flip-crop-reflect": "as flip-crop, padded by reflection (NIID-Bench)",
    "seed-local": "flip-crop, random rotation up to 15 degrees, brightness and contrast jitter 0.2 "
                  "(the seed's local baseline)",
    "crop24": "random 24x24 crop, random flip, brightness and contrast jitter; test images are "
              "cropped to their centre 24x24 (TensorFlow CIFAR-10 tutorial, McMahan et al. 2017)",
}

# --normalize: how uint8 pixels become the model's input.
NORMALIZATIONS: dict[str, str] = {
    "cifar": "per-channel CIFAR-10 mean and standard deviation",
    "half": "mean = std = 0.5 for every channel (the seed), inputs in [-1, 1]",
    "imagenet": "per-channel ImageNet mean and standard deviation",
    "unit": "pixels / 255, inputs in [0, 1] (NIID-Bench)",
    "per-image": "each image to zero mean and unit variance (TensorFlow's per_image_standardization)",
}

STRATEGY_NAMES: tuple[str, ...] = ("fedavg", "fedavg-unweighted", "fedprox:MU", "fedadam")
STRATEGY_HELP = "use fedavg, fedavg-unweighted, fedprox:MU (MU >= 0) or fedadam"

# Each model's training recipe: what a user who sets only --model gets (a profile or a flag
# still overrides every key). docs/RESULTS.md has the runs that back these numbers.
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    # About 52% after 2 local epochs on the real images (2 CPU cores; issue 14's reference run);
    # the previous defaults (SGD 0.05, batch 64, crops, weight decay 5e-4) reached about 40%.
    "cnn": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight-decay": 0.0, "batch-size": 32,
            "schedule": "none", "augment": "flip", "normalize": "cifar"},
    "tfcnn": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "weight-decay": 0.004, "batch-size": 50,
              "schedule": "none", "augment": "crop24", "normalize": "per-image"},
    # The seed's local recipe (90.03% after 200 epochs on a GPU).
    "mobilenetv2": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4,
                    "batch-size": 128, "schedule": "cosine", "augment": "flip-crop", "normalize": "cifar"},
    # The seed's federated recipe, fine-tuning ImageNet weights at 224x224.
    "mobilenetv2-imagenet": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight-decay": 1e-4,
                             "batch-size": 32, "schedule": "none", "augment": "none",
                             "normalize": "half", "image-size": 224},
    "resnet18": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4,
                 "batch-size": 128, "schedule": "cosine", "augment": "flip-crop", "normalize": "cifar"},
    "resnet18-imagenet": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight-decay": 1e-4,
                          "batch-size": 32, "schedule": "none", "augment": "none",
                          "normalize": "imagenet", "image-size": 224},
}


def check_model(name: str) -> str:
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown --model '{name}': use one of {', '.join(sorted(MODEL_NAMES))}")
    return name


def check_strategy(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name in ("fedavg", "fedavg-unweighted", "fedadam") and not arg:
        return spec
    if name == "fedprox":
        try:
            if 0 <= float(arg) < float("inf"):
                return spec
        except ValueError:
            pass
    raise UsageError(f"bad --strategy '{spec}': {STRATEGY_HELP}")
