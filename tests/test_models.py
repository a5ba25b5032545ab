"""Models: the registry matches the plain-data names, shapes, and where a run's first weights come from."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from fedcore import catalog, models
from fedcore.config import RunConfig, validate
from fedcore.errors import UsageError
from fedcore.models import MODELS, build_model, initial_model


def test_catalog_names_are_the_registered_models() -> None:
    assert set(catalog.MODEL_NAMES) == set(MODELS)
    assert len(catalog.MODEL_NAMES) == len(set(catalog.MODEL_NAMES))
    assert set(catalog.MODEL_RECIPES) == set(MODELS)


@pytest.mark.parametrize(("name", "side"), [("cnn", 32), ("tfcnn", 24), ("mobilenetv2", 32),
                                             ("resnet18", 32), ("mobilenetv2-imagenet", 64),
                                             ("resnet18-imagenet", 64)])
def test_every_model_gives_ten_logits(name: str, side: int) -> None:
    model = build_model(name).eval()

    logits = model(torch.zeros(2, 3, side, side))

    assert logits.shape == (2, 10)


def test_tfcnn_is_the_papers_million_parameter_network() -> None:
    model = build_model("tfcnn")

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5)), (64, (5, 5))]
    assert [m.out_features for m in linears] == [384, 192, 10]
    assert sum(p.numel() for p in model.parameters()) == 1_068_298  # "about 10^6" in the paper


def test_imagenet_variant_keeps_the_stock_stem_and_the_cifar_one_has_stride_one() -> None:
    stock = build_model("mobilenetv2-imagenet").features[0][0]
    cifar = build_model("mobilenetv2").features[0][0]

    assert stock.stride == (2, 2) and cifar.stride == (1, 1)
    assert stock.weight.shape == cifar.weight.shape


def test_weights_file_is_loaded_as_the_runs_first_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    saved = build_model("cnn").state_dict()
    path = tmp_path / "start.pt"
    torch.save(saved, path)
    cfg = validate(RunConfig(model="cnn", weights=str(path)))

    torch.manual_seed(2)
    model = initial_model(cfg)

    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[key]), key


def test_a_fedlaunch_checkpoint_works_as_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    saved = build_model("tfcnn").state_dict()
    torch.save({"round": 4, "state_dict": saved, "accuracy": 0.5}, tmp_path / "best.pt")

    model = initial_model(RunConfig(model="tfcnn", weights=str(tmp_path / "best.pt")))

    assert torch.equal(model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])


def test_weights_of_another_model_are_a_usage_error(tmp_path: Path) -> None:
    torch.save(build_model("cnn").state_dict(), tmp_path / "cnn.pt")
    (tmp_path / "junk.pt").write_text("not torch")

    with pytest.raises(UsageError, match=r"--weights .*cnn.pt do not fit --model tfcnn: 8 tensors"):
        initial_model(RunConfig(model="tfcnn", weights=str(tmp_path / "cnn.pt")))
    with pytest.raises(UsageError, match="not a torch state dict"):
        initial_model(RunConfig(model="cnn", weights=str(tmp_path / "junk.pt")))
    with pytest.raises(UsageError, match="--weights /nowhere.pt: no such file"):
        validate(RunConfig(weights="/nowhere.pt"))


def test_pretrained_comes_from_torchvisions_cache_with_a_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an ImageNet-shaped MobileNetV2 state dict where torchvision's cache keeps the file.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(5)
    imagenet = torchvision.models.mobilenet_v2().state_dict()  # 1000-class head
    file, _ = catalog.PRETRAINED_FILES["mobilenetv2-imagenet"]
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet, cache / file)

    model = initial_model(validate(RunConfig(model="mobilenetv2-imagenet", pretrained=True)))

    state = model.state_dict()
    assert torch.equal(state["features.0.0.weight"], imagenet["features.0.0.weight"])
    assert torch.equal(state["features.18.1.running_var"], imagenet["features.18.1.running_var"])
    assert state["classifier.1.weight"].shape == (10, 1280)  # a new head for CIFAR-10's classes


def test_pretrained_offline_names_the_file_and_where_to_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_: object, **__: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    file, url = catalog.PRETRAINED_FILES["resnet18-imagenet"]

    with pytest.raises(UsageError) as caught:
        initial_model(RunConfig(model="resnet18-imagenet", pretrained=True))

    message = str(caught.value)
    assert "\n" not in message
    assert f"place it (from {url}) at {tmp_path / 'torch' / 'hub' / 'checkpoints' / file}" in message
    assert models.hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_is_refused_for_models_without_imagenet_weights() -> None:
    for name in ("cnn", "tfcnn", "resnet18"):
        with pytest.raises(UsageError, match=f"--pretrained: no ImageNet weights for --model {name}"):
            validate(RunConfig(model=name, pretrained=True, augment="crop24" if name == "tfcnn" else "flip"))
    with pytest.raises(UsageError, match="not both"):
        validate(RunConfig(model="mobilenetv2", pretrained=True, weights="x.pt"))
