"""Pretrained weights: torchvision's and timm's state dicts load through the declared key maps and
give the reference's outputs; files of another architecture, other class counts, our own state
dicts and offline downloads behave as documented."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from qat.models import create_model, list_models
from qat.models.pretrained import KEY_MAPS, PretrainedWeightsError, load_pretrained, pretrained_sources
from qat.pipeline.errors import PipelineError

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(name, km.source, km.arch) for name, maps in sorted(KEY_MAPS.items()) for km in maps]
# Input sizes other than 32 px: attention blocks need feature maps larger than their patches.
INPUT = {
    "mobilenet_v4_hybrid_medium": 64,
    **{f"mobilevit_{s}": 64 for s in ("xxs", "xs", "s")},
    "inception_v3": 80,  # valid-padded stems: the smallest inputs these take
    "inception_v4": 80,
}


def _reference(source: str, arch: str) -> nn.Module:
    if source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(arch)
    kwargs = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, arch)(**kwargs)


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so a BN loaded into the wrong place shows."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


def _relu6_to_relu(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(model, name, nn.ReLU())
        else:
            _relu6_to_relu(child)
        if hasattr(child, "act") and isinstance(child.act, nn.ReLU6):  # timm's BatchNormAct2d
            child.act = nn.ReLU()


# The declared differences (KeyMap.differences), undone on the reference so outputs must agree exactly.
UNDO_DIFFERENCES = {"mobilenetv1_100": _relu6_to_relu}


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def test_every_case_names_a_registered_model() -> None:
    assert {name for name, _, _ in CASES} <= set(list_models())


@pytest.mark.parametrize(("name", "source", "arch"), CASES, ids=[f"{n}-{s}" for n, s, _ in CASES])
def test_reference_weights_give_reference_outputs(name: str, source: str, arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = _reference(source, arch).eval()
    _randomise_bn(reference)
    ours = create_model(name, pretrained=str(_save(reference, tmp_path / f"{arch}.pth"))).eval()
    key_map = next(m for m in pretrained_sources(name) if m.arch == arch)
    assert bool(key_map.differences) == (arch in UNDO_DIFFERENCES)
    if arch in UNDO_DIFFERENCES:
        UNDO_DIFFERENCES[arch](reference)
    size = INPUT.get(name, 32)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_googlenet_aux_classifiers_are_skipped(tmp_path: Path) -> None:
    reference = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    assert any(k.startswith("aux1.") for k in reference.state_dict())
    ours = create_model("googlenet", pretrained=_save(reference, tmp_path / "googlenet.pth"))
    torch.testing.assert_close(ours.fc.weight, reference.fc.weight)


def test_other_architecture_names_unmatched_keys(tmp_path: Path) -> None:
    path = _save(torchvision.models.resnet18(), tmp_path / "resnet18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"keys unmatched, first: .*(conv1|fc)") as err:
        create_model("mobilenet_v2", pretrained=path)
    assert isinstance(err.value, PipelineError)
    assert "pick the model it was trained for" in str(err.value)


def test_other_width_is_refused(tmp_path: Path) -> None:
    path = _save(torchvision.models.shufflenet_v2_x1_0(), tmp_path / "x1_0.pth")
    with pytest.raises(PretrainedWeightsError, match="other shapes"):
        create_model("shufflenet_v2_x0_5", pretrained=path)


def test_other_class_count_reinitialises_only_the_classifier(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = torchvision.models.mobilenet_v2().eval()
    path = _save(reference, tmp_path / "mnv2.pth")
    torch.manual_seed(0)
    fresh = create_model("mobilenet_v2", num_classes=7)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="qat.models.pretrained"):
        ours = create_model("mobilenet_v2", num_classes=7, pretrained=path).eval()
    assert "1000 classes in the checkpoint, 7 in the model" in caplog.text
    torch.testing.assert_close(ours.classifier[1].weight, fresh.classifier[1].weight)
    features = nn.Sequential(ours.stem, ours.stages, ours.head)  # our head ends in the global pool
    ref_features = nn.Sequential(reference.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(features(ours.quant(x)), ref_features(x))


def test_own_state_dict_and_lightning_prefix(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = create_model("tiny_convnet", num_classes=5)
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "last.ckpt")
    loaded = create_model("tiny_convnet", num_classes=5, pretrained=tmp_path / "last.ckpt")
    for (k, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_file_and_model_without_counterpart(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_model("mobilenet_v2", pretrained=tmp_path / "nope.pth")
    assert pretrained_sources("henet_tinym") == ()
    with pytest.raises(PretrainedWeightsError, match="no torchvision or timm counterpart"):
        create_model("henet_tinym", pretrained=True)


def test_offline_download_fails_cleanly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError, match=r"could not download torchvision weights .*No network here"):
        create_model("mobilenet_v2", pretrained="torchvision")
    with pytest.raises(PretrainedWeightsError, match="has no timm counterpart"):
        load_pretrained(create_model("googlenet"), "googlenet", "timm")


def test_hydra_model_pretrained(tmp_path: Path) -> None:
    from qat.pipeline.config import compose_config
    from qat.pipeline.stages import build_model

    reference = torchvision.models.resnet18().eval()
    path = _save(reference, tmp_path / "r18.pth")
    cfg = compose_config(["model=resnet18", f"model.pretrained={path}", "data.num_classes=1000"])
    model = build_model(cfg.model).eval()
    torch.testing.assert_close(model.stem[0].conv.weight, reference.conv1.weight)
    cfg = compose_config(["model=mobilenet_v2", f"model.pretrained={path}"])
    with pytest.raises(PretrainedWeightsError, match="keys unmatched"):
        build_model(cfg.model)


def test_finetune_recipe_on_the_other_half_of_the_classes(tmp_path: Path) -> None:
    """Float on digits 0-4, then experiment=finetune from its checkpoint on digits 5-9: float, calib, QAT, int8."""
    from qat.pipeline.config import compose_config
    from qat.pipeline.stages import run_pipeline

    fast = [
        "model=tiny_convnet", "+model.width=8", "data.image_size=16", "data.stem=cifar", "data.batch_size=32",
        "data.num_classes=5", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=none", "report.latency_runs=3", "report.latency_warmup=1",
        "report.latency_rounds=1",
    ]  # fmt: skip
    source = run_pipeline(compose_config([*fast, "quant=float", "+data.classes=[0,1,2,3,4]"]), tmp_path / "a")
    assert source["data"]["num_classes"] == 5
    cfg = compose_config(
        [*fast, "experiment=finetune", f"model.pretrained={tmp_path / 'a' / 'float' / 'last.ckpt'}",
         "+data.classes=[5,6,7,8,9]", "quant.epochs=1", "quant.calib_batches=2"]
    )  # fmt: skip
    report = run_pipeline(cfg, tmp_path / "b")
    assert list(report["stages"]) == ["float", "calib", "qat", "int8"]
    assert report["optim"]["lr"] == {"value": 0.01, "source": "config"}
    assert report["stages"]["float"]["top1"] > 0.3  # 5 classes: chance is 0.2


def test_safetensors_file(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = create_model("shufflenet_v2_x0_5", pretrained=path)
    torch.testing.assert_close(ours.fc.weight, reference.fc.weight)
