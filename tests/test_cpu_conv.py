"""The fold path of DenseNet's 3x3 convolutions against paddle.nn.functional.conv2d.

The fold path is what training uses where the C++ kernels cannot be built, so
these tests turn the kernels off (tests/test_cpu_kernels.py tests those).
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_chexnet.cpu import fold as cpu_fold
from paddle_chexnet.cpu.fold import conv3x3_fold, fold_path_applies
from paddle_chexnet.cpu.layers import Conv3x3, use_cpu_training_layers
from paddle_chexnet.models.densenet import DenseNet


@pytest.fixture(autouse=True)
def _without_cpu_kernels(monkeypatch):
    monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", "0")


def _relative(a: paddle.Tensor, b: paddle.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape", [(2, 16, 28, 28), (3, 5, 29, 33), (1, 7, 1, 1), (2, 4, 3, 40)])
def test_fold_path_equals_conv2d_forward_and_gradients(shape):
    rng = np.random.default_rng(sum(shape))
    x = paddle.to_tensor(rng.normal(size=shape).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.normal(size=(6, shape[1], 3, 3)).astype("float32"), stop_gradient=False)
    grad_out = paddle.to_tensor(rng.normal(size=(shape[0], 6, shape[2], shape[3])).astype("float32"))
    expected = F.conv2d(x, w, padding=1)
    expected_grads = paddle.grad(expected, [x, w], grad_out)
    got = conv3x3_fold(x, w)
    got_grads = paddle.grad(got, [x, w], grad_out)
    assert _relative(got, expected) < 1e-5
    for name, a, b in zip(("dx", "dw"), got_grads, expected_grads):
        assert _relative(a, b) < 1e-5, name


def test_frozen_weight_or_input_gets_no_gradient():
    x = paddle.randn([2, 4, 28, 28])
    w = paddle.randn([3, 4, 3, 3])
    x.stop_gradient, w.stop_gradient = False, True
    (dx,) = paddle.grad(conv3x3_fold(x, w), [x], paddle.ones([2, 3, 28, 28]))
    assert _relative(dx, paddle.grad(F.conv2d(x, w, padding=1), [x], paddle.ones([2, 3, 28, 28]))[0]) < 1e-5
    x.stop_gradient, w.stop_gradient = True, False
    conv3x3_fold(x, w).sum().backward()
    assert w.grad is not None and x.grad is None


def test_path_taken_only_where_it_pays():
    w = paddle.randn([3, 4, 3, 3])
    w.stop_gradient = False
    big, small = paddle.randn([1, 4, 28, 28]), paddle.randn([1, 4, 27, 27])
    assert fold_path_applies(big, w)
    assert not fold_path_applies(small, w)
    with paddle.no_grad():  # prediction: Paddle's kernel is as fast
        assert not fold_path_applies(big, w)
    w.stop_gradient = True
    assert not fold_path_applies(big, w)


def test_densenet_training_step_same_with_and_without_the_fold_path(monkeypatch):
    """A DenseNet with 32x32 maps in its first block: one Adam step either way gives the same weights."""
    calls = []
    original = cpu_fold.conv3x3_fold
    monkeypatch.setattr(cpu_fold, "conv3x3_fold", lambda x, w: calls.append(1) or original(x, w))

    def train_step(fold: bool) -> dict[str, np.ndarray]:
        monkeypatch.setattr(cpu_fold, "MIN_PIXELS", 32 * 32 if fold else 1 << 30)
        paddle.seed(3)
        net = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
        assert use_cpu_training_layers(net) == {"Conv3x3": 4}  # kernels off: only the fold path's layers
        x = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype("float32"))
        net(x).square().mean().backward()
        return {n: p.grad.numpy() for n, p in net.named_parameters() if p.grad is not None}

    plain = train_step(fold=False)
    assert not calls
    folded = train_step(fold=True)
    assert len(calls) == 2  # block 1's two dense layers (32x32); block 2 (16x16) keeps conv2d
    assert plain.keys() == folded.keys()
    # float rounding differs; gradients that cancel to ~0 (the stem's BatchNorm) are judged on the
    # scale of all gradients, the others within 0.1% of themselves
    overall = max(float(np.abs(g).max()) for g in plain.values())
    for name in plain:
        np.testing.assert_allclose(folded[name], plain[name], rtol=1e-3, atol=1e-5 * overall, err_msg=name)


def test_state_dict_key_is_unchanged():
    layer = Conv3x3(4, 2)
    assert list(layer.state_dict()) == ["weight"]
    assert layer.weight.shape == [2, 4, 3, 3] and layer.bias is None
