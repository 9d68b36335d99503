"""The backbones beside DenseNet-121 (DenseNet-169/201, ResNet-18/50/101, EfficientNet-B0..B3) and the poolings.

Each architecture is built from a seeded torchvision model (BatchNorm statistics set by a train-mode pass
over images, so that nothing hides behind a mean of 0 and a variance of 1), converted by the package's
strict conversion, and compared with torchvision on the same inputs: logits within 1e-5 on random images,
probabilities within 1e-5 on real ones (as ``--verify``), each pooling's head within 1e-5 of its formula on
torchvision's own feature map. The biggest networks are marked slow (``pytest -m slow
tests/test_backbones.py``); every family keeps members in the default run.
"""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest

from paddle_chexnet.conversion.layouts import convert_state_dict, detect_layout
from paddle_chexnet.conversion.pretrained import load_pretrained_backbone
from paddle_chexnet.localization.cam import METHODS, compute_heatmaps, resolve_layer, stage_names
from paddle_chexnet.models.heads import LSE_R, POOLINGS, classify
from paddle_chexnet.models.loading import infer_spec, load_network, recognise_architecture
from paddle_chexnet.models.registry import architecture_names, build_network, get_architecture
from paddle_chexnet.models.spec import spec_record
from paddle_chexnet.models.state_dict import StateDictMismatchError

FAST = ("densenet121", "resnet18", "resnet50", "efficientnet_b0")
SLOW = ("densenet169", "densenet201", "resnet101", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")
ARCHS = [*FAST, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW)]
SMALL = ("tiny", "resnet18", "efficientnet_b0")  # one of each family, for the many (architecture x pooling) cases


def _torch():
    return pytest.importorskip("torch"), pytest.importorskip("torchvision")


def _images(count: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    """Seeded smooth random gray images, normalised as X-rays (``--verify``'s probe: white noise would drive
    the logits far beyond what images give, where float32 rounding alone exceeds 1e-5)."""
    from paddle_chexnet.conversion.verify import random_images

    return random_images(count, seed=seed, size=size, cells=8)


def _calibrated_torchvision(name: str, num_classes: int = 5, seed: int = 0):
    """torchvision's ``name``, seeded, with BatchNorm statistics of one train-mode pass (cumulative average).

    The last BatchNorm of each residual block (ResNet's, EfficientNet's) gets a scale of 0.25, small as in
    trained networks (torchvision's ``zero_init_residual`` starts it at 0): with scales of 1 the residual sum
    grows block after block, the logits reach hundreds, and float32 rounding alone, in torch as in Paddle
    (measured against float64), moves them by more than 1e-5. For the same reason the classifier gets
    torch's default Linear scale, 1/sqrt(inputs), and the running variances a floor of 0.01: a freshly
    initialised EfficientNet has channels that are nearly constant on a few images (variance 1e-6, so
    BatchNorm multiplies by 300), which a trained network does not.
    """
    torch, torchvision = _torch()
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
        last = None
        if hasattr(module, "downsample"):  # a ResNet block
            last = getattr(module, "bn3", None) or module.bn2
        elif getattr(module, "use_res_connect", False):  # an EfficientNet block with its residual
            last = module.block[-1][1]
        if last is not None:
            with torch.no_grad():
                last.weight.fill_(0.25)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(_images(4, 64, seed=seed + 1)))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.clamp_(min=0.01)
        head = _torch_head(model)  # torch's default scale (EfficientNet's is 1/sqrt(outputs), 0.45 for 5) and a bias
        bound = head.weight.shape[1] ** -0.5
        head.weight.uniform_(-bound, bound)
        head.bias.copy_(0.1 * torch.randn(head.bias.shape))
    return model.eval()


def _torch_head(model):
    return model.fc if hasattr(model, "fc") else (model.classifier[1] if hasattr(model.classifier, "__len__")
                                                  else model.classifier)


def _torch_features(model, x):
    """torchvision's last feature map after the final activation (what our forward_features returns)."""
    import torch

    if hasattr(model, "fc"):  # ResNet
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(model, name)(x)
        return x
    features = model.features(x)
    return torch.nn.functional.relu(features) if hasattr(model.features, "norm5") else features


_CONVERTED: dict = {}


def _converted(name: str):
    """(torchvision model, our network holding the converted weights, the conversion), built once per session."""
    if name not in _CONVERTED:
        model = _calibrated_torchvision(name)
        net = build_network(name, num_classes=5)
        conversion = convert_state_dict(model.state_dict(), model=net, source=f"{name}.pth")
        net.set_state_dict(conversion.state)
        net.eval()
        _CONVERTED.clear()  # one at a time: the big ones hold hundreds of MB
        _CONVERTED[name] = (model, net, conversion)
    return _CONVERTED[name]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _paddle_logits(net, x: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return net(paddle.to_tensor(x)).numpy()


# ---------------------------------------------------------------- registry and names


def test_every_architecture_is_registered_with_its_torchvision_name():
    names = architecture_names()
    for name in (*FAST, *SLOW):
        assert name in names
        architecture = get_architecture(name)
        assert architecture.torchvision_name == name
        assert architecture.family == name.rstrip("0123456789").replace("efficientnet_b", "efficientnet")
    assert set(POOLINGS) == {"avg", "max", "lse", "pcam"}


@pytest.mark.torch
@pytest.mark.parametrize("name", [*FAST[1:], *(pytest.param(a, marks=pytest.mark.slow) for a in ("densenet121",
                                                                                                  *SLOW))])
def test_state_dict_keys_are_torchvisions_after_the_rename(name):
    # (DenseNet-121's keys are checked by every conversion of tests/test_convert.py too)
    _, torchvision = _torch()
    torch_keys = getattr(torchvision.models, name)(weights=None, num_classes=3).state_dict()
    renamed = {
        k.replace("running_mean", "_mean").replace("running_var", "_variance"): tuple(v.shape)
        for k, v in torch_keys.items() if not k.endswith("num_batches_tracked")
    }
    net = build_network(name, num_classes=3)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    head = net.head_keys()[0]
    renamed[head] = renamed[head][::-1]  # the one Linear: torch [out, in], Paddle [in, out]
    assert ours == renamed
    # the pooling holds no parameters: every pooling has the same keys
    assert list(build_network(name, 3, pooling="pcam").state_dict()) == list(ours)


# ---------------------------------------------------------------- parity with torchvision


@pytest.mark.torch
@pytest.mark.parametrize("name", ARCHS)
def test_converted_backbone_equals_torchvision_on_random_images(name):
    model, net, conversion = _converted(name)
    assert conversion.format == "torchvision" and conversion.family == get_architecture(name).family
    assert recognise_architecture(conversion.state).arch == name
    x = _images(2, 64)
    expected = _torch_logits(model, x)
    assert np.abs(expected).max() > 0.05  # the outputs are not trivially zero
    np.testing.assert_allclose(_paddle_logits(net, x), expected, rtol=0, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("name, pooling", [  # grouped by network, so that each is converted once (_converted)
    pytest.param(name, pooling, marks=pytest.mark.slow if name in SLOW else ())
    for name in (*FAST, *SLOW) for pooling in ("max", "lse", "pcam")
])
def test_each_pooling_on_torchvisions_features_equals_the_formula(name, pooling):
    """max, LSE and PCAM on torchvision's feature map, with its classifier, against the formulas in torch."""
    torch, _ = _torch()
    model, net, _ = _converted(name)
    x = _images(2, 64, seed=3)
    with torch.no_grad():
        features = _torch_features(model, torch.from_numpy(x)).double()
        head = _torch_head(model)
        weight, bias = head.weight.double(), head.bias.double()  # [K, C], [K]
        if pooling == "max":
            expected = features.amax(dim=(2, 3)) @ weight.T + bias
        elif pooling == "lse":
            flat = features.flatten(2)
            expected = (flat.max(dim=2).values + torch.log(torch.exp(LSE_R * (flat - flat.max(dim=2, keepdim=True)
                                                                               .values)).mean(dim=2)) / LSE_R)
            expected = expected @ weight.T + bias
        else:  # PCAM, as jfhealthcare/Chexpert: logit map, sigmoid, normalised weights, pooled feature, classifier
            logit_map = torch.einsum("kc,bchw->bkhw", weight, features) + bias[None, :, None, None]
            prob = torch.sigmoid(logit_map)
            weights = prob / prob.sum(dim=(2, 3), keepdim=True)
            pooled = torch.einsum("bkhw,bchw->bkc", weights, features)
            expected = (pooled * weight[None]).sum(dim=2) + bias
    # our head (the converted classifier, this pooling) on torchvision's own feature map: the pooling alone,
    # apart from the backbone's float32 rounding (whose parity the avg-pooling test above checks)
    got = classify(paddle.to_tensor(features.float().numpy()), net.head_linear(), pooling).numpy()
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
    # and the network built with this pooling computes exactly that head on its own features
    pooled_net = build_network(name, num_classes=5, pooling=pooling) if name in SMALL else None
    if pooled_net is not None:
        pooled_net.set_state_dict(net.state_dict())
        pooled_net.eval()
        with paddle.no_grad():
            own = classify(pooled_net.forward_features(paddle.to_tensor(x)), pooled_net.head_linear(), pooling)
        np.testing.assert_array_equal(_paddle_logits(pooled_net, x), own.numpy())


@pytest.mark.torch
@pytest.mark.shared_data
@pytest.mark.parametrize("name", [*FAST[1:], *(pytest.param(a, marks=pytest.mark.slow) for a in ("densenet121",
                                                                                                  *SLOW))])
def test_converted_backbone_equals_torchvision_on_real_images(name, sample_dir):
    from paddle_chexnet.data.images import read_xray
    from paddle_chexnet.data.transforms import EvalTransform

    paths = sorted((sample_dir / "images").glob("*.png"))[:2]
    x = np.stack([EvalTransform("center", 256, 224)(read_xray(p)) for p in paths]).astype("float32")
    model, net, _ = _converted(name)
    # probabilities, as --verify compares real images: the BatchNorm statistics of this random network come from
    # random images, and a real X-ray drives DenseNets' logits where float32 rounding alone reaches 1e-5
    np.testing.assert_allclose(_sigmoid(_paddle_logits(net, x)), _sigmoid(_torch_logits(model, x)), rtol=0,
                               atol=1e-5)


# ---------------------------------------------------------------- heatmaps on every architecture


def _small_net(name: str, pooling: str):
    paddle.seed(1)
    net = build_network(name, num_classes=4, pooling=pooling)
    rng = np.random.default_rng(2)
    for key, value in net.state_dict().items():  # statistics and biases that are not 0 and 1
        if key.endswith("_variance"):
            value.set_value(rng.uniform(0.5, 1.5, value.shape).astype("float32"))
        elif key.endswith("_mean") or key.endswith(net.head_keys()[1]):
            value.set_value(rng.normal(0, 0.2, value.shape).astype("float32"))
    return net.eval()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_heatmap_method_on_every_architecture_and_pooling(name, pooling):
    net = _small_net(name, pooling)
    x = _images(2, 64, seed=4)
    with paddle.no_grad():
        features = net.forward_features(paddle.to_tensor(x)).numpy()
    for method in METHODS:
        if method == "pcam" and pooling != "pcam":
            with pytest.raises(ValueError, match="--pooling pcam; this one pools with"):
                compute_heatmaps(net, x, method)
            continue
        out = compute_heatmaps(net, x, method, class_ids=[1, 3])
        assert out.maps.shape == (2, 2, *features.shape[2:]) and np.isfinite(out.maps).all()
        np.testing.assert_allclose(out.probabilities, 1 / (1 + np.exp(-_paddle_logits(net, x))), atol=1e-6)
        if method in ("gradcam", "gradcampp"):
            assert out.maps.min() >= 0
    # Grad-CAM of an inner stage (the one before the last), named as the state dict spells it
    inner = stage_names(net)[-2]
    spelled = f"features.{inner}" if hasattr(net, "features") else inner
    assert resolve_layer(net, spelled) == inner
    out = compute_heatmaps(net, x, "gradcam", class_ids=[0], layer=inner)
    assert out.maps.shape[:2] == (2, 1) and out.maps.min() >= 0


@pytest.mark.parametrize("name", SMALL)
def test_cam_equals_the_direct_formula_and_gradcam_its_rectified_mean_with_avg_pooling(name):
    net = _small_net(name, "avg")
    x = _images(2, 64, seed=5)
    with paddle.no_grad():
        features = net.forward_features(paddle.to_tensor(x)).numpy().astype(np.float64)
    linear = net.head_linear()
    weight, bias = linear.weight.numpy().astype(np.float64), linear.bias.numpy().astype(np.float64)
    direct = np.einsum("ck,bchw->bkhw", weight, features)
    cam = compute_heatmaps(net, x, "cam")
    np.testing.assert_allclose(cam.maps, direct, rtol=0, atol=1e-5 * max(1.0, np.abs(direct).max()))
    np.testing.assert_allclose(cam.maps.mean(axis=(2, 3)) + bias, _paddle_logits(net, x), atol=1e-5)
    gradcam = compute_heatmaps(net, x, "gradcam")
    cells = features.shape[2] * features.shape[3]
    np.testing.assert_allclose(gradcam.maps, np.maximum(direct, 0) / cells, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(direct).max()))


@pytest.mark.parametrize("name", SMALL)
def test_pcam_maps_are_probabilities_whose_weighted_mean_is_the_logit(name):
    net = _small_net(name, "pcam")
    x = _images(2, 64, seed=6)
    out = compute_heatmaps(net, x, "pcam")
    assert out.maps.min() >= 0 and out.maps.max() <= 1
    with paddle.no_grad():
        features = net.forward_features(paddle.to_tensor(x)).numpy().astype(np.float64)
    linear = net.head_linear()
    logit_map = (np.einsum("ck,bchw->bkhw", linear.weight.numpy().astype(np.float64), features)
                 + linear.bias.numpy()[None, :, None, None])
    np.testing.assert_allclose(out.maps, 1 / (1 + np.exp(-logit_map)), atol=1e-6)
    # the pooled logit is the probability-weighted mean of the logit map (the classifier is linear)
    weighted = (out.maps * logit_map).sum(axis=(2, 3)) / out.maps.sum(axis=(2, 3))
    np.testing.assert_allclose(_paddle_logits(net, x), weighted, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="layer= is for gradcam"):
        compute_heatmaps(net, x, "pcam", layer=stage_names(net)[-1])


def test_lse_pooling_lies_between_average_and_max():
    rng = np.random.default_rng(7)
    features = paddle.to_tensor(rng.standard_normal((2, 6, 5, 4)).astype("float32"))
    linear = paddle.nn.Linear(6, 6)
    linear.weight.set_value(np.eye(6, dtype="float32"))  # identity: the logits are the pooled features
    linear.bias.set_value(np.zeros(6, "float32"))
    pooled = {p: classify(features, linear, p).numpy() for p in ("avg", "max", "lse")}
    flat = features.numpy().reshape(2, 6, -1).astype(np.float64)
    np.testing.assert_allclose(pooled["avg"], flat.mean(axis=2), atol=1e-6)
    np.testing.assert_allclose(pooled["max"], flat.max(axis=2), atol=1e-6)
    direct = np.log(np.exp(LSE_R * flat).mean(axis=2)) / LSE_R
    np.testing.assert_allclose(pooled["lse"], direct, atol=1e-5)
    assert (pooled["avg"] < pooled["lse"]).all() and (pooled["lse"] < pooled["max"]).all()
    with pytest.raises(ValueError, match="unknown pooling 'sum'; choose one of avg, max, lse, pcam"):
        classify(features, linear, "sum")


# ---------------------------------------------------------------- the weights loader, export, CPU layers


@pytest.mark.parametrize("name", [*SMALL, "resnet50", *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW)])
def test_load_network_round_trips_every_architecture_through_its_sidecar(name, tmp_path):
    pooling = {"resnet18": "pcam", "efficientnet_b0": "lse", "tiny": "max"}.get(name, "avg")
    net = _small_net(name, pooling)
    weights = tmp_path / "best.pdparams"
    paddle.save(net.state_dict(), str(weights))
    weights.with_suffix(".json").write_text(json.dumps(spec_record(net.spec)))
    loaded = load_network(weights)
    assert loaded.spec.arch == name and loaded.pooling == pooling and type(loaded) is type(net)
    x = _images(1, 64, seed=8)
    np.testing.assert_array_equal(_paddle_logits(loaded, x), _paddle_logits(net, x))
    # without the sidecar the keys and shapes still tell the architecture (not the pooling: avg)
    weights.with_suffix(".json").unlink()
    assert load_network(weights).spec.arch == name


def test_infer_spec_refuses_an_unregistered_resnet_by_its_structure():
    from paddle_chexnet.models.resnet import ResNet

    state = ResNet("basic", (1, 1, 1, 1), num_classes=3).state_dict()
    with pytest.raises(ValueError, match=r"are a ResNet \(block basic, layers 1-1-1-1\), which is not a registered"):
        infer_spec(state, source="odd.pdparams")


@pytest.mark.parametrize("name, pooling", [("tiny", "lse"), ("tiny", "pcam"),
                                           pytest.param("efficientnet_b0", "pcam", marks=pytest.mark.slow)])
def test_export_for_paddle_inference_keeps_the_pooling(name, pooling, tmp_path):
    from paddle_chexnet.inference.export import export_model

    net = _small_net(name, pooling)
    x = _images(2, 64, seed=9)
    expected = 1 / (1 + np.exp(-_paddle_logits(net, x)))
    export_model(net, tmp_path / "model", crop=64)
    loaded = paddle.jit.load(str(tmp_path / "model"))
    np.testing.assert_allclose(loaded(paddle.to_tensor(x)).numpy(), expected, rtol=0, atol=1e-6)


def _train_step_network(name: str):
    from paddle_chexnet.models.resnet import ResNet

    # a one-block-per-stage bottleneck ResNet: ResNet-50's blocks, without the 16-block depth that makes a
    # random network's train-mode gradients ill-conditioned (a 1e-6 change of the input moves them by 30 %)
    return ResNet("bottleneck", (1, 1, 1, 1), num_classes=4) if name == "bottleneck" else build_network(name, 4)


@pytest.mark.parametrize("name", ["resnet18", "bottleneck", "efficientnet_b0"])
def test_cpu_training_layers_give_the_same_step_and_keep_the_names(name):
    """Logits, gradients and updated BatchNorm statistics of a training-mode step, with and without the swap."""
    from paddle_chexnet.cpu.layers import use_cpu_training_layers, use_plain_layers
    from paddle_chexnet.cpu.ops import kernels_apply

    def step(swap: bool):
        paddle.seed(3)
        net = _train_step_network(name)
        names = list(net.state_dict())
        swapped = use_cpu_training_layers(net) if swap else {}
        net.train()
        logits = net(paddle.to_tensor(_images(4, 64, seed=10)))
        weights = np.random.default_rng(5).standard_normal(logits.shape).astype("float32")
        (logits * paddle.to_tensor(weights)).sum().backward()
        grads = {n: p.grad.numpy() for n, p in net.named_parameters() if not p.stop_gradient}
        grads.update({n: v.numpy() for n, v in net.state_dict().items() if n.endswith(("_mean", "_variance"))})
        assert list(net.state_dict()) == names
        if swap:
            use_plain_layers(net)
            assert not any(type(layer).__module__.startswith("paddle_chexnet.cpu") for layer in net.sublayers())
        return logits.numpy(), grads, swapped

    plain, plain_grads, _ = step(False)
    fast, fast_grads, swapped = step(True)
    if not kernels_apply(paddle.zeros([1, 1, 1, 1])):
        pytest.skip("the CPU kernels could not be built here")
    expected = {"resnet18": "CpuBasicBlock", "bottleneck": "CpuBottleneck",
                "efficientnet_b0": "ThreadedDepthwiseConv2D"}
    assert swapped[expected[name]] > 0 and "FusingSequential" not in swapped
    # relative to the logits' size: a train-mode step through EfficientNet-B0's 16 blocks of batch statistics
    # on 4 images carries float32 rounding to a few 1e-6 of it (more than 1e-5 absolute with AVX-512's oneDNN)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5 * max(1.0, float(np.abs(plain).max())))
    overall = max(float(np.abs(g).max()) for g in plain_grads.values())
    for key, grad in plain_grads.items():
        scale = max(float(np.abs(grad).max()), 1e-2 * overall)  # near-zero gradients are rounding noise
        np.testing.assert_allclose(fast_grads[key], grad, rtol=0, atol=1e-4 * scale, err_msg=key)


@pytest.mark.parametrize("channels, size, kernel, stride", [(3, 9, 3, 1), (4, 10, 3, 2), (5, 11, 5, 2), (6, 7, 5, 1)])
def test_depthwise_kernel_equals_paddles_convolution(channels, size, kernel, stride):
    from paddle_chexnet.cpu.kernels import prepare_kernels
    from paddle_chexnet.cpu.ops import depthwise_conv_kernel

    if prepare_kernels() is None:
        pytest.skip("the CPU kernels could not be built here")
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, channels, size, size + 2)).astype("float32")
    w = rng.standard_normal((channels, 1, kernel, kernel)).astype("float32")
    results = []
    for use_kernel in (False, True):
        xt, wt = paddle.to_tensor(x, stop_gradient=False), paddle.to_tensor(w, stop_gradient=False)
        y = (depthwise_conv_kernel(xt, wt, stride, kernel // 2) if use_kernel else
             paddle.nn.functional.conv2d(xt, wt, stride=stride, padding=kernel // 2, groups=channels))
        grad_y = np.random.default_rng(0).standard_normal(y.shape).astype("float32")
        (y * paddle.to_tensor(grad_y)).sum().backward()
        results.append((y.numpy(), xt.grad.numpy(), wt.grad.numpy()))
    for ours, reference in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- conversion: detection, CLI, pretrained


@pytest.mark.torch
def test_layout_and_architecture_are_detected_for_each_family():
    _, torchvision = _torch()
    for name, family in (("resnet18", "resnet"), ("efficientnet_b0", "efficientnet"), ("densenet121", "densenet")):
        state = getattr(torchvision.models, name)(weights=None).state_dict()
        assert detect_layout(state) == ("torchvision", family)
        assert detect_layout({"module." + k: v for k, v in state.items()}) == ("torchvision", family)
    from paddle.vision.models import resnet18 as paddle_resnet18

    paddle_state = paddle_resnet18(num_classes=3).state_dict()
    assert detect_layout(paddle_state) == ("paddle_chexnet", "resnet")  # paddle.vision's names are ours
    assert convert_state_dict(paddle_state).arch == "resnet18"


@pytest.mark.torch
@pytest.mark.parametrize("name, num_classes", [("resnet18", 1000), ("efficientnet_b0", 14)])
def test_cli_converts_a_torchvision_file_writes_its_sidecar_and_verifies(name, num_classes, tmp_path, capsys):
    torch, torchvision = _torch()
    from paddle_chexnet.cli import convert_torch

    source = _calibrated_torchvision(name, num_classes=num_classes)
    src = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), src)
    out = tmp_path / "out" / f"{name}.pdparams"
    args = convert_torch.get_args_parser().parse_args([str(src), "-o", str(out), "--verify", "--num-random", "2"])
    assert convert_torch.main(args) == 0
    printed = capsys.readouterr().out
    assert f"reference: torchvision.models.{name} (torchvision's own key loading, strict)" in printed
    assert "PASSED" in printed
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"]["arch"] == name and sidecar["arch"] == name and sidecar["format"] == "torchvision"
    assert sidecar["num_classes"] == num_classes
    net = load_network(out)
    assert net.spec.arch == name and net.num_classes == num_classes
    x = _images(1, 64, seed=11)
    np.testing.assert_allclose(_paddle_logits(net, x), _torch_logits(source, x), rtol=0, atol=1e-5)


@pytest.mark.torch
def test_verify_of_a_paddle_vision_resnet_compares_with_paddle_vision():
    from paddle.vision.models import resnet18 as paddle_resnet18

    from paddle_chexnet.conversion.verify import verify_conversion

    paddle.seed(6)
    reference = paddle_resnet18(num_classes=14)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    conversion = convert_state_dict(state)
    result = verify_conversion(conversion.format, state, conversion.state, num_random=2)
    assert result.reference.startswith("paddle.vision.models.resnet18") and result.passed


@pytest.mark.torch
def test_pretrained_backbone_of_each_family_loads_and_a_wrong_family_is_named(tmp_path):
    torch, torchvision = _torch()
    source = _calibrated_torchvision("resnet18", num_classes=1000)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(source.state_dict(), path)
    paddle.seed(0)
    net = build_network("resnet18", num_classes=14)
    head = net.head_linear().weight.numpy().copy()
    summary = load_pretrained_backbone(net, path)
    assert "torchvision layout" in summary and "classifier (14 outputs) left as initialised" in summary
    np.testing.assert_array_equal(net.head_linear().weight.numpy(), head)
    np.testing.assert_array_equal(net.layer4[1].bn2._variance.numpy(),
                                  source.layer4[1].bn2.running_var.detach().numpy())
    other = build_network("efficientnet_b0", num_classes=14)
    with pytest.raises(StateDictMismatchError, match=r"it holds a ResNet \(block basic, layers 2-2-2-2\), the "
                                                     r"network is efficientnet_b0"):
        load_pretrained_backbone(other, path)
    deeper = build_network("resnet50", num_classes=14)
    with pytest.raises(StateDictMismatchError, match="it holds resnet18 weights, the network is resnet50"):
        load_pretrained_backbone(deeper, path)


def test_pretrained_download_names_what_paddle_lacks():
    from paddle_chexnet.conversion.pretrained import PretrainedDownloadError, load_pretrained

    with pytest.raises(PretrainedDownloadError, match="paddle.vision has no ImageNet weights for efficientnet_b0"):
        load_pretrained(build_network("efficientnet_b0", 3), "imagenet")
