"""CAM, Grad-CAM and Grad-CAM++ on a tiny DenseNet, against direct computations."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_chexnet import DenseNet
from paddle_chexnet.localization.cam import (
    class_activation_maps,
    compute_heatmaps,
    grad_cam,
    grad_cam_plus_plus,
)


@pytest.fixture(scope="module")
def net() -> DenseNet:
    paddle.seed(0)
    model = DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=14)
    rng = np.random.default_rng(1)
    # non-trivial BatchNorm statistics and classifier bias, so no term hides behind a 0 or a 1
    for name, param in model.state_dict().items():
        if name.endswith("_variance"):
            param.set_value(rng.uniform(0.5, 2.0, param.shape).astype("float32"))
        elif name.endswith("_mean") or name.endswith("norm5.bias") or name == "classifier.bias":
            param.set_value(rng.normal(0, 0.3, param.shape).astype("float32"))
        elif name.endswith("norm5.weight"):
            param.set_value(rng.uniform(0.5, 1.5, param.shape).astype("float32"))
    model.eval()
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(3, 3, 64, 96)).astype("float32")


def features_and_logits(net, images):
    with paddle.no_grad():
        x = paddle.to_tensor(images)
        return net.forward_features(x).numpy().astype(np.float64), net(x).numpy().astype(np.float64)


def test_cam_equals_feature_map_times_classifier_weights(net, images):
    out = class_activation_maps(net, images)
    features, logits = features_and_logits(net, images)
    weight = net.classifier.weight.numpy().astype(np.float64)  # [C, K]
    direct = np.einsum("ck,bchw->bkhw", weight, features)
    assert out.maps.shape == (3, 14, 8, 12) and out.maps.dtype == np.float32
    scale = np.abs(direct).max()
    np.testing.assert_allclose(out.maps, direct, rtol=0, atol=1e-6 * scale + 1e-7)
    # the logit is the map's mean plus the bias; with include_bias the mean IS the logit
    bias = net.classifier.bias.numpy().astype(np.float64)
    np.testing.assert_allclose(out.maps.mean(axis=(2, 3)) + bias, logits, atol=1e-5)
    with_bias = class_activation_maps(net, images, include_bias=True)
    np.testing.assert_allclose(with_bias.maps.mean(axis=(2, 3)), logits, atol=1e-5)
    np.testing.assert_allclose(out.probabilities, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_cam_class_subset_and_batching(net, images):
    full = class_activation_maps(net, images)
    subset = class_activation_maps(net, images, class_ids=[5, 0, 13])
    np.testing.assert_array_equal(subset.class_ids, [5, 0, 13])
    np.testing.assert_allclose(subset.maps, full.maps[:, [5, 0, 13]], atol=1e-6)
    single = class_activation_maps(net, images[1:2], class_ids=[5, 0, 13])
    np.testing.assert_allclose(single.maps[0], subset.maps[1], atol=1e-5)


def test_gradcam_on_linear_head_is_relu_cam_over_cells(net, images):
    cam = class_activation_maps(net, images, class_ids=[2, 7])
    gc = grad_cam(net, images, class_ids=[2, 7])
    h, w = cam.maps.shape[-2:]
    np.testing.assert_allclose(gc.maps, np.maximum(cam.maps, 0) / (h * w), atol=1e-6)
    np.testing.assert_allclose(gc.probabilities, cam.probabilities, atol=1e-6)
    assert (gc.maps >= 0).all()


def test_gradcampp_closed_form_on_linear_head(net, images):
    ids = [1, 4, 9]
    out = grad_cam_plus_plus(net, images, class_ids=ids)
    features, _ = features_and_logits(net, images)
    b, c, h, w = features.shape
    weight = net.classifier.weight.numpy().astype(np.float64)
    expected = np.zeros((b, len(ids), h, w))
    for j, k in enumerate(ids):
        g = weight[:, k] / (h * w)                       # dS/dA, the same in every cell
        sum_a = features.sum(axis=(2, 3))                 # [B, C]
        denominator = 2 + sum_a * g[None, :]
        alpha = np.where(g[None, :] != 0, 1.0 / denominator, 0.0)
        weights = h * w * alpha * np.maximum(g, 0)[None, :]
        expected[:, j] = np.maximum(np.einsum("bc,bchw->bhw", weights, features), 0)
    np.testing.assert_allclose(out.maps, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


def test_gradcam_on_an_earlier_layer_follows_norm5(net, images):
    """Before norm5 the gradient is W * gamma / sqrt(var + eps) where norm5's output is positive, over h*w."""
    k = 3
    out = grad_cam(net, images, class_ids=[k], layer="denseblock2")
    with paddle.no_grad():
        x = paddle.to_tensor(images)
        block = x
        for name, child in net.features.named_children():
            block = child(block)
            if name == "denseblock2":
                break
        a = block.numpy().astype(np.float64)
        post = net.features.norm5(block).numpy().astype(np.float64)
    norm5 = net.features.norm5
    gamma = norm5.weight.numpy().astype(np.float64)
    inv_std = 1 / np.sqrt(norm5._variance.numpy().astype(np.float64) + 1e-5)
    h, w = a.shape[-2:]
    grad = (net.classifier.weight.numpy()[:, k] * gamma * inv_std)[None, :, None, None] * (post > 0) / (h * w)
    weights = grad.mean(axis=(2, 3))
    expected = np.maximum(np.einsum("bc,bchw->bhw", weights, a), 0)
    np.testing.assert_allclose(out.maps[:, 0], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # an earlier layer has a finer map
    assert grad_cam(net, images, class_ids=[k], layer="denseblock1").maps.shape[-2:] == (h * 2, w * 2)
    assert grad_cam_plus_plus(net, images, class_ids=[k], layer="denseblock1").maps.shape == (3, 1, h * 2, w * 2)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_dispatch_shapes_and_train_mode_restored(net, images, method):
    net.train()
    try:
        out = compute_heatmaps(net, paddle.to_tensor(images), method=method, class_ids=[0, 1])
        assert net.training, "the network's mode must be restored"
    finally:
        net.eval()
    assert out.maps.shape == (3, 2, 8, 12) and out.probabilities.shape == (3, 14)
    # eval mode inside: the same result as a call on an eval-mode net
    np.testing.assert_allclose(out.maps, compute_heatmaps(net, images, method=method, class_ids=[0, 1]).maps,
                               atol=1e-6)


def test_errors(net, images):
    with pytest.raises(ValueError, match="class ids"):
        class_activation_maps(net, images, class_ids=[14])
    with pytest.raises(ValueError, match="denseblock"):
        grad_cam(net, images, layer="nope")
    with pytest.raises(ValueError, match="unknown heatmap method"):
        compute_heatmaps(net, images, method="saliency")
    with pytest.raises(ValueError, match="layer"):
        compute_heatmaps(net, images, method="cam", layer="denseblock1")
    with pytest.raises(TypeError, match="network of paddle_chexnet.models"):
        class_activation_maps(paddle.nn.Linear(3, 2), images)
