"""The C++ CPU kernels (fused BatchNorm + ReLU, 3x3 convolution) against Paddle's own operators."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest
from conftest import cli_env

from paddle_chexnet.cpu import kernels as kernels_module
from paddle_chexnet.cpu import runtime as cpu_runtime
from paddle_chexnet.cpu.kernels import (
    build,
    build_or_warn,
    cpu_kernels,
    kernels_enabled,
)
from paddle_chexnet.cpu.layers import use_cpu_training_layers, use_plain_layers
from paddle_chexnet.cpu.ops import (
    batch_norm_relu,
    batch_norm_relu_pool,
    concat_channels,
    conv3x3_kernel,
    conv_im2col_kernel,
    fused_path_applies,
    kernels_apply,
    max_pool_kernel,
)
from paddle_chexnet.models.densenet import DenseNet

needs_kernels = pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler (g++)")


@pytest.fixture(scope="module", autouse=True)
def _built_kernels():
    """Build the kernels once, as the trainer does before training (they are never built inside a forward)."""
    kernels_module.prepare_kernels()


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    monkeypatch.setattr(cpu_runtime, "_configured_threads", request.param)
    return request.param


@needs_kernels
def test_kernels_build_where_a_compiler_is():
    assert cpu_kernels() is not None


def test_switch_variable_turns_the_kernels_off(monkeypatch):
    for value in ("0", "false", "off", "No"):
        monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", value)
        assert not kernels_enabled()
        assert cpu_kernels() is None
    monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", "1")
    assert kernels_enabled()


def _norm_with_state(channels: int, rng: np.random.Generator) -> nn.BatchNorm2D:
    norm = nn.BatchNorm2D(channels, momentum=0.9, epsilon=1e-5)
    norm.weight.set_value(rng.uniform(0.5, 1.5, channels).astype("float32"))
    norm.bias.set_value(rng.normal(0, 0.3, channels).astype("float32"))
    norm._mean.set_value(rng.normal(0, 1, channels).astype("float32"))
    norm._variance.set_value(rng.uniform(0.5, 2, channels).astype("float32"))
    return norm


def _assert_fused_equals_paddle(shape, output_shape, run, monkeypatch) -> None:
    """``run(x, norm)`` with the kernels and with Paddle's operators: output, gradients, running statistics."""
    rng = np.random.default_rng(sum(shape))
    x_np = (rng.normal(size=shape) * 2 + 1.5).astype("float32")  # a mean far from 0 tests the variance
    grad_np = rng.normal(size=output_shape).astype("float32")
    results = {}
    for fused in (False, True):
        monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", "1" if fused else "0")
        norm = _norm_with_state(shape[1], np.random.default_rng(1))
        norm.train()
        x = paddle.to_tensor(x_np, stop_gradient=False)
        assert fused_path_applies(x, norm) == fused
        y = run(x, norm)
        dx, dw, db = paddle.grad(y, [x, norm.weight, norm.bias], paddle.to_tensor(grad_np))
        results[fused] = [t.numpy() for t in (y, dx, dw, db, norm._mean, norm._variance)]
    names = ("y", "dx", "dscale", "dbias", "running mean", "running variance")
    for name, got, expected in zip(names, results[True], results[False]):
        assert got.shape == expected.shape, name
        # a gradient that cancels to ~0 is judged on the scale of its inputs
        assert np.abs(got - expected).max() <= 2e-5 * max(np.abs(expected).max(), 1.0), name


@needs_kernels
@pytest.mark.parametrize("shape", [(8, 64, 28, 28), (3, 5, 7, 9), (2, 3, 1, 1), (2, 1, 4, 4), (4, 16, 1, 3)])
def test_fused_batch_norm_relu_equals_paddle(shape, threads, monkeypatch):
    """BatchNorm in training mode + ReLU."""
    _assert_fused_equals_paddle(shape, shape, batch_norm_relu, monkeypatch)


@needs_kernels
@pytest.mark.parametrize("shape", [(8, 64, 28, 28), (3, 5, 7, 9), (2, 4, 2, 3), (1, 3, 6, 2)])
def test_fused_batch_norm_relu_pool_equals_paddle(shape, threads, monkeypatch):
    """A transition's BatchNorm + ReLU + AvgPool2D(2, 2), odd sides included (the last row/column is dropped)."""
    output_shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    _assert_fused_equals_paddle(shape, output_shape, lambda x, norm: batch_norm_relu_pool(x, norm, nn.AvgPool2D(2, 2)),
                                monkeypatch)


@needs_kernels
def test_fused_pool_only_for_a_plain_2x2_average_pool():
    norm = nn.BatchNorm2D(2)
    x = paddle.randn([2, 2, 6, 6])
    calls = []
    original = kernels_module.cpu_kernels()

    class _Spy:
        def __getattr__(self, op):
            calls.append(op)
            return getattr(original, op)

    kernels = kernels_module.cpu_kernels
    try:
        kernels_module.cpu_kernels = lambda: _Spy()
        for pool in (nn.AvgPool2D(3, 2), nn.AvgPool2D(2, 2, padding=1), nn.AvgPool2D(2, 2, ceil_mode=True),
                     nn.MaxPool2D(2, 2)):
            np.testing.assert_allclose(batch_norm_relu_pool(x, norm, pool).numpy(), pool(F.relu(norm(x))).numpy(),
                                       rtol=1e-5, atol=1e-5)
        assert "chexnet_bn_relu_pool" not in calls
        batch_norm_relu_pool(x, norm, nn.AvgPool2D(2, 2))
        assert "chexnet_bn_relu_pool" in calls
    finally:
        kernels_module.cpu_kernels = kernels


@needs_kernels
def test_fused_path_only_in_training_on_the_cpu_in_a_dynamic_graph():
    norm = nn.BatchNorm2D(4)
    x = paddle.randn([2, 4, 3, 3])
    norm.train()
    assert fused_path_applies(x, norm)
    norm.eval()  # running statistics: Paddle's kernel, and no update
    assert not fused_path_applies(x, norm)
    before = norm._mean.numpy().copy()
    np.testing.assert_allclose(batch_norm_relu(x, norm).numpy(), F.relu(norm(x)).numpy())
    np.testing.assert_array_equal(norm._mean.numpy(), before)
    norm.train()
    assert not fused_path_applies(paddle.randn([1, 4, 1, 1]), norm)  # one value per channel: Paddle's own rule
    assert not fused_path_applies(x.astype("float64"), norm.to(dtype="float64"))
    assert not fused_path_applies(paddle.randn([2, 4, 3]), nn.BatchNorm1D(4))
    sync = nn.SyncBatchNorm(4)
    sync.train()
    assert not fused_path_applies(x, sync)


@needs_kernels
def test_fused_batch_norm_relu_with_a_frozen_scale_and_bias():
    norm = nn.BatchNorm2D(3)
    norm.weight.stop_gradient = norm.bias.stop_gradient = True
    x = paddle.randn([2, 3, 5, 5])
    x.stop_gradient = False
    batch_norm_relu(x, norm).sum().backward()
    assert x.grad is not None and norm.weight.grad is None


@needs_kernels
@pytest.mark.parametrize(
    "shape, out_channels",
    [((8, 128, 28, 28), 32), ((3, 5, 6, 7), 4), ((1, 7, 1, 1), 3), ((2, 3, 2, 5), 2), ((1, 4, 9, 3), 6)],
)
def test_conv3x3_kernel_equals_conv2d(shape, out_channels, threads):
    """Forward and both gradients; batches smaller than the thread count run image after image."""
    rng = np.random.default_rng(sum(shape) + out_channels)
    x = paddle.to_tensor(rng.normal(size=shape).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.normal(size=(out_channels, shape[1], 3, 3)).astype("float32"), stop_gradient=False)
    grad_out = paddle.to_tensor(rng.normal(size=(shape[0], out_channels, *shape[2:])).astype("float32"))
    assert kernels_apply(x, w)
    expected = F.conv2d(x, w, padding=1)
    expected_grads = paddle.grad(expected, [x, w], grad_out)
    got = conv3x3_kernel(x, w)
    got_grads = paddle.grad(got, [x, w], grad_out)
    assert _relative(got.numpy(), expected.numpy()) < 1e-5
    for name, a, b in zip(("dx", "dw"), got_grads, expected_grads):
        assert _relative(a.numpy(), b.numpy()) < 1e-5, name


@needs_kernels
def test_conv3x3_kernel_with_a_frozen_input_or_weight():
    x, w = paddle.randn([2, 4, 6, 6]), paddle.randn([3, 4, 3, 3])
    x.stop_gradient, w.stop_gradient = True, False
    conv3x3_kernel(x, w).sum().backward()
    assert w.grad is not None and x.grad is None
    x.stop_gradient, w.stop_gradient = False, True
    (dx,) = paddle.grad(conv3x3_kernel(x, w), [x], paddle.ones([2, 3, 6, 6]))
    (expected,) = paddle.grad(F.conv2d(x, w, padding=1), [x], paddle.ones([2, 3, 6, 6]))
    assert _relative(dx.numpy(), expected.numpy()) < 1e-5


@needs_kernels
def test_conv3x3_kernel_refuses_a_mismatched_weight():
    with pytest.raises(Exception, match="channels"):
        conv3x3_kernel(paddle.randn([1, 4, 5, 5]), paddle.randn([2, 3, 3, 3]))


@needs_kernels
@pytest.mark.parametrize(
    "shape, out_channels, kernel, stride, padding",
    [((4, 3, 224, 224), 64, 7, 2, 3), ((3, 4, 9, 11), 5, 3, 2, 1), ((1, 2, 5, 5), 3, 5, 1, 2),
     ((2, 3, 8, 8), 4, 1, 1, 0), ((2, 2, 6, 7), 3, 2, 2, 0)],
)
def test_im2col_convolution_kernel_equals_conv2d(shape, out_channels, kernel, stride, padding, threads):
    rng = np.random.default_rng(sum(shape) + kernel)
    x = paddle.to_tensor(rng.normal(size=shape).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.normal(size=(out_channels, shape[1], kernel, kernel)).astype("float32"),
                         stop_gradient=False)
    expected = F.conv2d(x, w, stride=stride, padding=padding)
    grad_out = paddle.to_tensor(rng.normal(size=expected.shape).astype("float32"))
    expected_grads = paddle.grad(expected, [x, w], grad_out)
    got = conv_im2col_kernel(x, w, stride, padding)
    got_grads = paddle.grad(got, [x, w], grad_out)
    assert got.shape == expected.shape
    assert _relative(got.numpy(), expected.numpy()) < 1e-5
    for name, a, b in zip(("dx", "dw"), got_grads, expected_grads):
        assert _relative(a.numpy(), b.numpy()) < 1e-5, name


@needs_kernels
def test_im2col_convolution_skips_the_input_gradient_of_an_image():
    x = paddle.randn([2, 3, 16, 16])  # stop_gradient, as an input image
    w = paddle.randn([4, 3, 7, 7])
    w.stop_gradient = False
    got = conv_im2col_kernel(x, w, 2, 3)
    (dw,) = paddle.grad(got, [w], paddle.ones(got.shape))
    (expected,) = paddle.grad(F.conv2d(x, w, stride=2, padding=3), [w], paddle.ones(got.shape))
    assert _relative(dw.numpy(), expected.numpy()) < 1e-5 and x.grad is None


@needs_kernels
@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [((8, 64, 112, 112), 3, 2, 1), ((2, 3, 7, 9), 3, 2, 1), ((1, 2, 5, 5), 2, 2, 0), ((2, 2, 6, 6), 3, 1, 1)],
)
def test_max_pool_kernel_equals_paddle_including_ties(shape, kernel, stride, padding, threads):
    """After a ReLU many windows tie at 0; the gradient goes where Paddle sends it (the first maximum)."""
    rng = np.random.default_rng(sum(shape))
    x_np = np.maximum(rng.normal(size=shape), 0).astype("float32")
    x_np[..., :2, :2] = 1.0  # ties between positive values too
    x = paddle.to_tensor(x_np, stop_gradient=False)
    expected = F.max_pool2d(x, kernel, stride, padding)
    grad_out = paddle.to_tensor(rng.normal(size=expected.shape).astype("float32"))
    (expected_dx,) = paddle.grad(expected, [x], grad_out)
    got = max_pool_kernel(x, kernel, stride, padding)
    (dx,) = paddle.grad(got, [x], grad_out)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    np.testing.assert_array_equal(dx.numpy(), expected_dx.numpy())


@needs_kernels
def test_concat_kernel_equals_paddle_concat_and_split(threads):
    rng = np.random.default_rng(0)
    pieces = [paddle.to_tensor(rng.normal(size=(3, c, 5, 7)).astype("float32"), stop_gradient=False)
              for c in (4, 1, 3)]
    pieces[1].stop_gradient = True  # a piece that needs no gradient
    got = concat_channels(pieces)
    np.testing.assert_array_equal(got.numpy(), paddle.concat(pieces, axis=1).numpy())
    grad_out = paddle.to_tensor(rng.normal(size=(3, 8, 5, 7)).astype("float32"))
    grads = paddle.grad(got, [pieces[0], pieces[2]], grad_out)
    np.testing.assert_array_equal(grads[0].numpy(), grad_out.numpy()[:, :4])
    np.testing.assert_array_equal(grads[1].numpy(), grad_out.numpy()[:, 5:])
    assert concat_channels([pieces[0]]) is pieces[0]
    with pytest.raises(Exception, match="spatial"):
        concat_channels([pieces[0], paddle.randn([3, 2, 5, 6])])


@needs_kernels
def test_stem_layers_take_the_kernels_only_where_they_apply():
    from paddle_chexnet.cpu.layers import ThreadedConv2D, ThreadedMaxPool2D

    conv = ThreadedConv2D(3, 4, 7, stride=2, padding=3)
    pool = ThreadedMaxPool2D(3, 2, 1)
    assert list(conv.state_dict()) == ["weight"] and conv.bias is None
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_allclose(conv(x).numpy(), F.conv2d(x, conv.weight, stride=2, padding=3).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pool(x).numpy(), F.max_pool2d(x, 3, 2, 1).numpy())
    with pytest.raises(ValueError, match="stride"):
        ThreadedConv2D(3, 4, 3, stride=(1, 2))


@needs_kernels
def test_densenet_training_step_same_with_and_without_the_kernels(monkeypatch):
    """One forward + backward of a small DenseNet: gradients and running statistics agree either way."""
    def train_step(enabled: bool) -> dict[str, np.ndarray]:
        monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", "1" if enabled else "0")
        paddle.seed(3)
        net = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
        use_cpu_training_layers(net)
        net.train()
        x = paddle.to_tensor(np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype("float32"))
        net(x).square().mean().backward()
        state = {f"grad {n}": p.grad.numpy() for n, p in net.named_parameters() if p.grad is not None}
        state.update({n: b.numpy() for n, b in net.state_dict().items() if "_mean" in n or "_variance" in n})
        return state

    calls = {op: 0 for op in kernels_module.OPERATORS}
    original = kernels_module.cpu_kernels

    class _Counting:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, op):
            def counted(*args):
                calls[op] += 1
                return getattr(self.module, op)(*args)

            return counted

    monkeypatch.setattr(kernels_module, "cpu_kernels", lambda: original() and _Counting(original()))
    plain = train_step(enabled=False)
    assert not any(calls.values())
    fused = train_step(enabled=True)
    # stem norm0 and 2 per dense layer (4 layers); the transition; 4 dense-layer 3x3 convolutions; the stem
    # concatenations: the 2nd layer of each block and each block's output
    assert calls == {"chexnet_bn_relu": 1 + 2 * 4, "chexnet_bn_relu_pool": 1, "chexnet_concat": 2 * 2,
                     "chexnet_conv3x3": 4, "chexnet_conv_im2col": 1, "chexnet_max_pool": 1,
                     "chexnet_depthwise_conv": 0}  # EfficientNet's (tests/test_backbones.py)
    assert plain.keys() == fused.keys()
    overall = max(float(np.abs(g).max()) for n, g in plain.items() if n.startswith("grad"))
    for name in plain:
        scale = overall if name.startswith("grad") else 1.0
        np.testing.assert_allclose(fused[name], plain[name], rtol=1e-3, atol=1e-5 * scale, err_msg=name)


@needs_kernels
def test_the_swap_keeps_every_parameter_and_is_undone():
    """Swapped layers are the same objects with the same state dict; the plain network comes back exactly."""
    paddle.seed(1)
    net = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    parameters = [id(p) for p in net.parameters()]
    classes = [type(layer) for layer in net.sublayers()]
    swapped = use_cpu_training_layers(net)
    assert swapped == {"FusingSequential": 1, "ThreadedConv2D": 1, "ThreadedMaxPool2D": 1, "CpuDenseBlock": 2,
                       "CpuDenseLayer": 4, "Conv3x3": 4, "CpuTransition": 1}
    assert [id(p) for p in net.parameters()] == parameters
    assert list(net.state_dict()) == list(before)
    use_plain_layers(net)
    assert [type(layer) for layer in net.sublayers()] == classes
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])


def test_models_import_nothing_of_the_cpu_package():
    """The boundary: the networks are pure Paddle; the CPU layers are swapped in from outside."""
    import subprocess
    import sys

    code = ("import sys, paddle_chexnet.models as m, paddle_chexnet.models.densenet, paddle_chexnet.models.loading;"
            "m.build_network('tiny'); print(sorted(n for n in sys.modules if n.startswith('paddle_chexnet.cpu')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=cli_env())
    assert out.stdout.strip() == "[]"
    import ast
    from pathlib import Path

    for source in (Path(__file__).resolve().parents[1] / "paddle_chexnet" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("paddle_chexnet.cpu") for n in names), (source, names)


def test_a_failed_build_says_why_and_training_falls_back(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text("#include \"paddle/extension.h\"\nthis is not C++;\n")
    monkeypatch.setattr(kernels_module, "SOURCE", broken)
    with caplog.at_level(logging.WARNING, logger="paddle_chexnet.cpu.kernels"):
        assert build_or_warn(tmp_path / "builds") is None  # one compiler run: build() raised inside
    message = caplog.text
    assert "could not build" in message and str(broken) in message
    assert "PADDLE_CHEXNET_CPU_KERNELS=0" in message  # how to stop trying
    assert "build.log" in message and "error" in message  # the compiler's own words, from the build log
    # with no kernels, the layers run Paddle's operators
    monkeypatch.setattr(kernels_module, "cpu_kernels", lambda: None)
    norm = nn.BatchNorm2D(2)
    x = paddle.randn([2, 2, 3, 3])
    assert not fused_path_applies(x, norm)
    assert not kernels_apply(x, paddle.randn([2, 2, 3, 3]))
    np.testing.assert_allclose(batch_norm_relu(x, norm).numpy(), F.relu(nn.BatchNorm2D(2)(x)).numpy(),
                               rtol=1e-6, atol=1e-6)


@needs_kernels
def test_building_again_in_the_same_process_gives_the_same_operators():
    assert build() is cpu_kernels()


def test_build_key_changes_with_the_source_the_installation_and_the_processor(tmp_path, monkeypatch):
    first = kernels_module.build_key()
    assert kernels_module.build_key() == first
    changed = tmp_path / "changed.cc"
    changed.write_text(kernels_module.SOURCE.read_text() + "\n// another version\n")
    with monkeypatch.context() as patch:
        patch.setattr(kernels_module, "SOURCE", changed)
        assert kernels_module.build_key() != first
    with monkeypatch.context() as patch:  # another virtual environment's Paddle
        patch.setattr(paddle, "__file__", str(tmp_path / "other-venv" / "paddle" / "__init__.py"))
        assert kernels_module.build_key() != first
    with monkeypatch.context() as patch:  # another processor (a home folder shared by several machines)
        patch.setattr(kernels_module, "cpu_flags", lambda: frozenset({"sse2"}))
        assert kernels_module.build_key() != first


@needs_kernels
def test_exported_models_contain_no_custom_operators(tmp_path):
    """Paddle Inference loads exports without this package's kernels, so an export must use Paddle's operators."""
    from paddle_chexnet.inference.export import export_model

    assert cpu_kernels() is not None  # the kernels are loaded in this process, yet not exported
    net = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
    graph = export_model(net, tmp_path / "model", crop=64)
    text = graph.read_text(errors="replace")
    assert "conv2d" in text  # the graph names its operators
    assert not any(op in text for op in kernels_module.OPERATORS)


def test_an_unusable_build_folder_is_a_warning_not_a_crash(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(kernels_module, "_loaded", {})  # as in a process that has not loaded them yet
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="paddle_chexnet.cpu.kernels"):
        assert build_or_warn(blocker / "kernels") is None
    assert "could not build" in caplog.text and str(blocker) in caplog.text
