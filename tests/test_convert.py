"""Conversion of DenseNet state dicts: layouts, renames, head policy, strict refusals, file reading.

Tiny DenseNets (same code paths as DenseNet-121, a fraction of the cost) are used
wherever the full network is not the point; the full-size parity on real images
is in test_verify.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_chexnet import DenseNet, chexnet
from paddle_chexnet.conversion.layouts import (
    convert_state_dict,
    detect_format,
    paddle_vision_to_chexnet,
    rename_legacy_key,
    strip_wrapper_prefixes,
    torch_to_paddle,
)
from paddle_chexnet.conversion.pretrained import load_pretrained_backbone
from paddle_chexnet.conversion.readers import CheckpointReadError, read_checkpoint
from paddle_chexnet.models.state_dict import StateDictMismatchError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"growth_rate": 4, "block_config": (1, 2), "num_init_features": 8, "bn_size": 2}


def _tiny_paddle(num_classes: int = 14) -> DenseNet:
    return DenseNet(**TINY, num_classes=num_classes)


def _tiny_torch(num_classes: int = 14, seed: int = 0):
    """A seeded tiny torchvision DenseNet with non-trivial BatchNorm statistics."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = torchvision.models.DenseNet(**TINY, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _legacy(state: dict, prefix: str = "module.densenet121.", sequential_head: bool = True) -> dict:
    """The same weights in arnoweng/CheXNet's layout: torchvision < 0.3 names, wrapper prefix, Sequential head."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # torch < 0.4.1 had no such buffer
        key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
        if sequential_head:
            key = key.replace("classifier.", "classifier.0.")
        out[prefix + key] = value
    return out


def _paddle_logits(net: DenseNet, x: np.ndarray) -> np.ndarray:
    net.eval()
    with paddle.no_grad():
        return net(paddle.to_tensor(x)).numpy()


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _load_tool():
    """The command behind tools/convert_torch.py."""
    from paddle_chexnet.cli import convert_torch

    return convert_torch


# ---------------------------------------------------------------- names and detection


@pytest.mark.parametrize(
    "key, expected",
    [
        ("features.denseblock1.denselayer1.norm.1.weight", "features.denseblock1.denselayer1.norm1.weight"),
        ("features.denseblock4.denselayer16.conv.2.weight", "features.denseblock4.denselayer16.conv2.weight"),
        ("features.denseblock2.denselayer3.norm.2.running_var", "features.denseblock2.denselayer3.norm2.running_var"),
        ("features.transition1.norm.weight", "features.transition1.norm.weight"),  # not a dense layer
        ("features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer1.norm1.weight"),
        ("classifier.0.weight", "classifier.0.weight"),
    ],
)
def test_rename_legacy_key(key, expected):
    assert rename_legacy_key(key) == expected


def test_strip_wrapper_prefixes():
    assert strip_wrapper_prefixes("module.densenet121.features.conv0.weight") == "features.conv0.weight"
    assert strip_wrapper_prefixes("densenet121.out.0.weight") == "out.0.weight"
    assert strip_wrapper_prefixes("features.module.x") == "features.module.x"  # only leading wrappers


@pytest.mark.torch
def test_detect_format_of_each_layout():
    state = _tiny_torch().state_dict()
    assert detect_format(state) == "torchvision"
    assert detect_format({"module." + k: v for k, v in state.items()}) == "torchvision"
    assert detect_format(_legacy(state)) == "arnoweng"
    assert detect_format(_tiny_paddle().state_dict()) == "paddle_chexnet"
    from paddle.vision.models import densenet121 as paddle_densenet121

    paddle_state = paddle_densenet121(num_classes=3).state_dict()
    assert detect_format(paddle_state) == "paddle_vision"
    assert detect_format({"densenet121." + k: v for k, v in paddle_state.items()}) == "paddle_vision"


@pytest.mark.torch
def test_unsupported_network_is_refused_by_name():
    # ResNets are supported now (tests/test_backbones.py); a MobileNet is not
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"state dict is not a checkpoint of a supported network: its 314 keys look "
                                         r"like a torchvision 'features' network other than DenseNet"):
        detect_format(state)
    with pytest.raises(ValueError, match=r"^mobilenet\.pth is not a checkpoint of a supported network.*"
                                         r"Supported are DenseNet-121/169/201, ResNet-18/50/101 and EfficientNet"):
        convert_state_dict(state, source="mobilenet.pth")


def test_empty_and_non_dict_are_refused():
    with pytest.raises(ValueError, match="it is empty"):
        detect_format({})
    with pytest.raises(ValueError, match="expected a state dict"):
        detect_format([1, 2, 3])


# ---------------------------------------------------------------- numerical parity (tiny)


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["torchvision", "dataparallel", "arnoweng", "legacy_plain_head"])
def test_tiny_torch_conversion_gives_the_same_logits(layout):
    model = _tiny_torch()
    state = model.state_dict()
    if layout == "dataparallel":
        state = {"module." + k: v for k, v in state.items()}
    elif layout == "arnoweng":
        state = _legacy(state)
    elif layout == "legacy_plain_head":
        state = _legacy(state, prefix="", sequential_head=False)
    net = _tiny_paddle()
    converted = torch_to_paddle(state, model=net)
    assert list(converted) == list(net.state_dict())  # model's order, nothing missing
    assert not any("num_batches_tracked" in k for k in converted)
    assert converted["classifier.weight"].shape == (net.num_features, 14)  # transposed to Paddle's [in, out]
    np.testing.assert_array_equal(converted["classifier.weight"], model.classifier.weight.detach().numpy().T)
    np.testing.assert_array_equal(
        converted["features.norm5._variance"], model.features.norm5.running_var.detach().numpy()
    )
    net.set_state_dict(converted)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(_paddle_logits(net, x), _torch_logits(model, x), atol=1e-5, rtol=0)


@pytest.mark.torch
def test_missing_key_is_refused_and_named():
    state = _tiny_torch().state_dict()
    del state["features.denseblock2.denselayer1.conv1.weight"]
    expected = r"1 missing keys:\n    features\.denseblock2\.denselayer1\.conv1\.weight"
    with pytest.raises(StateDictMismatchError, match=expected):
        torch_to_paddle(state, model=_tiny_paddle(), source="cut.pth")


@pytest.mark.torch
def test_wrong_shape_is_refused_and_named():
    torch = pytest.importorskip("torch")
    state = _tiny_torch().state_dict()
    state["features.norm0.weight"] = torch.ones(9)
    with pytest.raises(StateDictMismatchError, match=r"features\.norm0\.weight: expected \[8\], got \[9\]"):
        torch_to_paddle(state, model=_tiny_paddle())


@pytest.mark.torch
def test_unexpected_key_is_refused_and_named():
    torch = pytest.importorskip("torch")
    state = _tiny_torch().state_dict()
    state["features.denseblock9.denselayer1.conv1.weight"] = torch.ones(1)
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys:\n    features\.denseblock9"):
        torch_to_paddle(state, model=_tiny_paddle())


@pytest.mark.torch
def test_full_densenet121_with_a_removed_key_lists_it():
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.densenet121(weights=None, num_classes=14).state_dict()
    del state["features.denseblock3.denselayer7.norm2.running_mean"]
    with pytest.raises(StateDictMismatchError, match=r"features\.denseblock3\.denselayer7\.norm2\._mean") as info:
        convert_state_dict(state, source="model.pth.tar")
    assert "model.pth.tar" in str(info.value) and "1 missing keys" in str(info.value)


# ---------------------------------------------------------------- head policy


@pytest.mark.torch
def test_imagenet_shaped_head_keep_drop_resize():
    model = _tiny_torch(num_classes=1000)
    state = model.state_dict()
    kept = convert_state_dict(state, model=_tiny_paddle(1000))
    assert kept.format == "torchvision" and kept.num_classes == 1000
    with pytest.raises(ValueError, match=r"1000-output classifier but num_classes is 14; use head='resize'"):
        convert_state_dict(state, num_classes=14, model=_tiny_paddle(14))

    dropped = convert_state_dict(state, head="drop", model=_tiny_paddle(14))
    assert dropped.num_classes is None
    assert not any(k.startswith("classifier") for k in dropped.state)
    assert set(dropped.state) == {k for k in _tiny_paddle().state_dict() if not k.startswith("classifier")}

    paddle.seed(3)
    target = _tiny_paddle(14)
    resized = convert_state_dict(state, head="resize", num_classes=14, model=target)
    assert resized.num_classes == 14 and resized.state["classifier.weight"].shape == (target.num_features, 14)
    np.testing.assert_array_equal(resized.state["classifier.weight"], target.classifier.weight.numpy())
    for key, value in dropped.state.items():
        np.testing.assert_array_equal(resized.state[key], value)
        np.testing.assert_array_equal(kept.state[key], value)


@pytest.mark.torch
def test_head_keep_needs_a_classifier_and_head_name_is_checked():
    state = {k: v for k, v in _tiny_torch().state_dict().items() if not k.startswith("classifier")}
    with pytest.raises(StateDictMismatchError, match="has no classifier"):
        convert_state_dict(state, model=_tiny_paddle())
    assert convert_state_dict(state, head="drop", model=_tiny_paddle()).num_classes is None
    with pytest.raises(ValueError, match="head must be one of keep, drop, resize"):
        convert_state_dict(state, head="replace", model=_tiny_paddle())


# ---------------------------------------------------------------- paddle.vision and jm12138 layouts


def _randomised_paddle_vision(num_classes: int):
    from paddle.vision.models import densenet121 as paddle_densenet121

    paddle.seed(5)
    model = paddle_densenet121(num_classes=num_classes)
    rng = np.random.default_rng(5)
    state = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("_variance"):
            state[key] = (0.5 + rng.random(shape)).astype(np.float32)
        elif key.endswith("_mean") or key.endswith("bias"):
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif key.endswith("_batch_norm.weight") or key == "batch_norm.weight":
            state[key] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            state[key] = value.numpy()
    model.set_state_dict(state)
    model.eval()  # returns None in Paddle 2.6 and 3.0
    return model, state


@pytest.mark.parametrize("jm12138", [False, True])
def test_paddle_vision_mapping_matches_paddle_vision_numerically(jm12138):
    model, state = _randomised_paddle_vision(num_classes=5)
    if jm12138:  # jm12138/Paddle-CheXNet: CheXNet.densenet121 with out = Sequential(Linear, Sigmoid)
        state = {"densenet121." + k.replace("out.", "out.0."): v for k, v in state.items()}
    net = chexnet(num_classes=5, class_names=list("abcde"))
    converted = paddle_vision_to_chexnet(state, model=net)
    assert len(converted) == 606
    net.set_state_dict(converted)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(_paddle_logits(net, x), expected, atol=1e-5, rtol=0)


def test_paddle_vision_unknown_key_is_refused():
    _, state = _randomised_paddle_vision(num_classes=5)
    state["db_conv_2.conv2_1.extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys:\n    db_conv_2\.conv2_1\.extra\.weight"):
        paddle_vision_to_chexnet(state)


def test_own_layout_passes_through():
    paddle.seed(2)
    net = _tiny_paddle()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    conversion = convert_state_dict(state, model=_tiny_paddle())
    assert conversion.format == "paddle_chexnet"
    for key, value in state.items():
        np.testing.assert_array_equal(conversion.state[key], value)


# ---------------------------------------------------------------- files


@pytest.mark.torch
def test_legacy_serialization_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    model = _tiny_torch()
    path = tmp_path / "model.pth.tar"
    torch.save({"epoch": 3, "arch": "densenet121", "state_dict": _legacy(model.state_dict())}, path,
               _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] == b"\x80\x02"  # really the legacy (non-zip) format
    checkpoint = read_checkpoint(path)
    assert checkpoint.framework == "torch" and checkpoint.entry == "['state_dict']"
    converted = convert_state_dict(checkpoint.state, model=_tiny_paddle())
    assert converted.format == "arnoweng"
    np.testing.assert_array_equal(
        converted.state["features.denseblock1.denselayer1.conv1.weight"],
        model.features.denseblock1.denselayer1.conv1.weight.detach().numpy(),
    )


@pytest.mark.torch
def test_pickled_module_needs_trust_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    model = _tiny_torch()
    model.classifier = torch.nn.Sequential(model.classifier, torch.nn.Sigmoid())
    path = tmp_path / "checkpoint"
    torch.save({"model": model, "best_loss": 0.2, "epoch": 4, "LR": 1e-3}, path)
    with pytest.raises(CheckpointReadError, match=r"--trust-pickle") as info:
        read_checkpoint(path)
    assert "torchvision.models.densenet.DenseNet" in str(info.value) and "can do anything" in str(info.value)
    checkpoint = read_checkpoint(path, trust_pickle=True)
    assert checkpoint.entry == "['model'] (pickled module)"
    converted = convert_state_dict(checkpoint.state, model=_tiny_paddle())
    np.testing.assert_array_equal(converted.state["classifier.bias"], model.classifier[0].bias.detach().numpy())


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_refused_with_a_clear_message(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pth"
    torch.save({"state_dict": _tiny_torch().state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=r"cannot read .*model\.pth: the file is truncated or corrupt"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is not a checkpoint.*The file is empty"), (b"00000001_000.png 0 1 0\n", "is not a checkpoint")],
)
def test_non_checkpoint_files_are_refused(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointReadError, match=message):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pth")


def test_truncated_pdparams_is_refused(tmp_path):
    path = tmp_path / "w.pdparams"
    paddle.save(_tiny_paddle().state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=r"cannot read .*w\.pdparams: not a complete \.pdparams"):
        read_checkpoint(path)


@pytest.mark.torch
def test_load_pretrained_backbone_from_torch_and_paddle_files(tmp_path):
    torch = pytest.importorskip("torch")
    source = _tiny_torch(num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    paddle.seed(4)
    net = _tiny_paddle(14)
    head_before = net.classifier.weight.numpy().copy()
    summary = load_pretrained_backbone(net, path)
    assert "torchvision layout" in summary and "classifier (14 outputs) left as initialised" in summary
    np.testing.assert_array_equal(net.classifier.weight.numpy(), head_before)
    np.testing.assert_array_equal(
        net.features.norm5._mean.numpy(), source.features.norm5.running_mean.detach().numpy()
    )
    # its own .pdparams (e.g. a previous run) works the same way
    own = tmp_path / "own.pdparams"
    paddle.save(net.state_dict(), str(own))
    other = _tiny_paddle(3)
    load_pretrained_backbone(other, own)
    np.testing.assert_array_equal(other.features.conv0.weight.numpy(), net.features.conv0.weight.numpy())
    # a backbone that does not fit is refused, and nothing is loaded
    deeper = DenseNet(growth_rate=4, block_config=(1, 3), num_init_features=8, bn_size=2)
    before = deeper.features.conv0.weight.numpy().copy()
    with pytest.raises(StateDictMismatchError, match=r"missing keys:\n    features\.denseblock2\.denselayer3"):
        load_pretrained_backbone(deeper, path)
    np.testing.assert_array_equal(deeper.features.conv0.weight.numpy(), before)


def test_load_pretrained_backbone_from_paddle_vision_pdparams(tmp_path):
    model, state = _randomised_paddle_vision(num_classes=1000)
    path = tmp_path / "DenseNet121_pretrained.pdparams"
    paddle.save(state, str(path))
    net = chexnet()
    summary = load_pretrained_backbone(net, path)
    assert "paddle_vision layout" in summary and "604 backbone tensors" in summary
    np.testing.assert_array_equal(net.features.norm5.weight.numpy(), state["batch_norm.weight"])
    np.testing.assert_array_equal(
        net.features.denseblock4.denselayer16.conv2.weight.numpy(), state["db_conv_5.conv5_16.bn_ac_func2._conv.weight"]
    )


# ---------------------------------------------------------------- command line


def test_default_output_names():
    tool = _load_tool()
    assert tool.default_output(Path("x/model.pth.tar")) == Path("pretrained_models/model.pdparams")
    assert tool.default_output(Path("checkpoint")) == Path("pretrained_models/checkpoint.pdparams")
    imagenet = tool.default_output(Path("densenet121-a639ec97.pth"))
    assert imagenet == Path("pretrained_models/densenet121-a639ec97.pdparams")
    args = tool.get_args_parser().parse_args(["m.pth", "--num_classes", "3", "--trust_pickle", "--head", "resize"])
    assert args.num_classes == 3 and args.trust_pickle and args.head == "resize"


@pytest.mark.torch
def test_cli_converts_full_checkpoint_and_writes_sidecar(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = torchvision.models.densenet121(weights=None, num_classes=14)
    src = tmp_path / "model.pth.tar"
    torch.save({"state_dict": _legacy(source.state_dict())}, src, _use_new_zipfile_serialization=False)
    tool = _load_tool()
    monkeypatch.chdir(tmp_path)
    assert tool.main(tool.get_args_parser().parse_args([str(src)])) == 0
    out = tmp_path / "pretrained_models" / "model.pdparams"
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["format"] == "arnoweng" and sidecar["num_classes"] == 14 and sidecar["num_tensors"] == 606
    assert sidecar["class_names"][0] == "Atelectasis" and len(sidecar["source_sha256"]) == 64
    net = chexnet(weights=out)  # strict load of the written file
    np.testing.assert_array_equal(net.classifier.bias.numpy(), source.classifier.bias.detach().numpy())
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


@pytest.mark.torch
def test_cli_refusals_exit_non_zero(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tool = _load_tool()
    resnet = tmp_path / "resnet34.pth"  # a ResNet, but not a registered one
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), resnet)
    out = tmp_path / "out.pdparams"
    assert tool.main(tool.get_args_parser().parse_args([str(resnet), "-o", str(out)])) == 2
    assert "a ResNet (block basic, layers 3-4-6-3), which is not a registered architecture" in caplog.text
    assert not out.exists()
    assert tool.entry([str(resnet), "--verify", "--images", str(tmp_path)]) == 1
    assert "--images and --labels go together" in caplog.text
    assert tool.entry([str(resnet), "--verify", "--head", "drop"]) == 1
    assert "use it with --head keep" in caplog.text
