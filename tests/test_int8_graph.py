"""paddle_chexnet.inference.int8_graph: the float32 rewrites before INT8 quantisation are exact, the
quantised DenseNet runs in integers from the first convolution to the head, and the concatenated tensors
share one scale that covers each one's calibrated range (and never moves a Relu's range off 0)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import write_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("paddle2onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from paddle_chexnet.inference import int8_graph, quantize  # noqa: E402
from paddle_chexnet.inference.bundle import ExportOptions, export_bundle  # noqa: E402
from paddle_chexnet.inference.export_check import generated_inputs  # noqa: E402

CROP, RESIZE = 64, 73


def _run(model, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The ONNX export of the seeded tiny DenseNet (dense blocks, a transition), and its pre-processed form."""
    folder = tmp_path_factory.mktemp("int8")
    weights = write_weights(folder / "w", "tiny")
    export_bundle(weights, folder / "export", ExportOptions(format="onnx", crop=CROP, resize=RESIZE, verify=False),
                  report=lambda text: None)
    prepared = folder / "prepared.onnx"
    quantization.quant_pre_process(str(folder / "export" / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    return folder / "export" / "model.onnx", prepared


def test_rewrites_keep_the_float32_outputs(exported):
    _, prepared = exported
    before = onnx.load(str(prepared))
    after = onnx.load(str(prepared))
    counts = int8_graph.prepare_for_int8(after)
    # tiny: norm1 of 3 layers, the transition's norm and norm5 stay after the pre-processing's folding
    assert counts == {"batch_norm_to_depthwise": 5, "average_pool_to_depthwise": 1}
    assert not {n.op_type for n in after.graph.node} & {"BatchNormalization", "AveragePool"}
    x = np.random.default_rng(0).normal(size=(4, 3, CROP, CROP)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=0, atol=1e-6)


def _graph(nodes, initializers, channels: int, size: int):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_batch_norm_becomes_the_formula():
    rng = np.random.default_rng(1)
    c = 5
    stats = {"s": rng.uniform(0.5, 2, c), "b": rng.normal(size=c), "m": rng.normal(size=c), "v": rng.uniform(0.1, 3, c)}
    model = _graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"], epsilon=1e-3),
                    helper.make_node("Relu", ["t"], ["y"])], stats, c, 6)
    assert int8_graph.batch_norm_to_depthwise(model) == 1
    conv = model.graph.node[0]
    assert conv.op_type == "Conv" and helper.get_attribute_value(conv.attribute[0]) == c
    x = rng.normal(size=(2, c, 6, 6)).astype(np.float32)
    shape = (1, c, 1, 1)
    expected = np.maximum(stats["s"].reshape(shape) * (x - stats["m"].reshape(shape))
                          / np.sqrt(stats["v"].reshape(shape) + 1e-3) + stats["b"].reshape(shape), 0)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1)])
def test_average_pool_becomes_the_window_mean(kernel, stride):
    rng = np.random.default_rng(2)
    c, size = 4, 8
    model = _graph([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[kernel, kernel],
                                     strides=[stride, stride])], {}, c, size)
    x = rng.normal(size=(2, c, size, size)).astype(np.float32)
    out = (size - kernel) // stride + 1
    expected = np.stack([np.stack([x[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel].mean((2, 3))
                                   for j in range(out)], -1) for i in range(out)], -2)
    assert int8_graph.prepare_for_int8(model)["average_pool_to_depthwise"] == 1
    conv = model.graph.node[0]
    assert conv.op_type == "Conv" and int(helper.get_attribute_value(
        next(a for a in conv.attribute if a.name == "group"))) == c
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-6)


def test_graphs_without_the_patterns_are_left_alone():
    rng = np.random.default_rng(3)
    # a padded pool divides by a count that changes at the border: not a fixed depthwise kernel
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"], kernel_shape=[3, 3]),
             helper.make_node("AveragePool", ["t"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])]
    model = _graph(nodes, {"w": rng.normal(size=(2, 2, 3, 3))}, 2, 8)
    assert int8_graph.prepare_for_int8(model) == {"batch_norm_to_depthwise": 0, "average_pool_to_depthwise": 0}
    assert [n.op_type for n in model.graph.node] == ["Conv", "AveragePool"]


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    fp32, _ = exported
    path = tmp_path_factory.mktemp("q") / "model.int8.onnx"
    quantize.quantize_onnx(fp32, path, generated_inputs(32, CROP, RESIZE, seed=1).batch)
    return onnx.load(str(path))


def test_the_quantised_densenet_runs_in_integers_up_to_its_head(exported, quantized):
    ops = [n.op_type for n in quantized.graph.node]
    assert "BatchNormalization" not in ops and "AveragePool" not in ops
    # one quantisation of the input, one dequantisation before the float32 head (global pool, classifier)
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert ops.count("QLinearConcat") == 3 and "QLinearMatMul" not in ops and "Sigmoid" in ops
    fp32, _ = exported
    x = generated_inputs(24, CROP, RESIZE, seed=4).batch
    p32, p8 = _run(onnx.load(str(fp32)), x), _run(quantized, x)
    assert np.abs(p8 - p32).max() < 0.03


def _pair_values(model, pair) -> tuple[float, int]:
    inits = {i.name: i for i in model.graph.initializer}
    return float(numpy_helper.to_array(inits[pair[0]])), int(numpy_helper.to_array(inits[pair[1]]))


def test_concatenated_tensors_share_a_scale_that_covers_each_range(exported, quantized, tmp_path, monkeypatch):
    fp32, _ = exported
    # the same quantisation without the sharing: each tensor's own calibrated range
    monkeypatch.setattr(int8_graph, "share_concat_scales", lambda model, relu: 0)
    own_path = tmp_path / "own.onnx"
    quantize.quantize_onnx(fp32, own_path, generated_inputs(32, CROP, RESIZE, seed=1).batch)
    own = onnx.load(str(own_path))
    protected_zero = 0
    for node in quantized.graph.node:
        if node.op_type != "QLinearConcat":
            continue
        out = _pair_values(quantized, node.input[:2])
        for k in range(2, len(node.input), 3):
            pair = tuple(node.input[k + 1:k + 3])
            new, old = _pair_values(quantized, pair), _pair_values(own, pair)
            if new == out:  # shared: the group's range holds this tensor's whole calibrated range
                assert new[0] * (0 - new[1]) <= old[0] * (0 - old[1]) + 1e-7
                assert new[0] * (255 - new[1]) >= old[0] * (255 - old[1]) - 1e-7
            else:  # not shared: only a Relu-ranged tensor (the stem's pooled output), which keeps its range at 0
                assert new == old and new[1] == 0
                protected_zero += 1
        # the dense block's inputs beyond its first share the concatenation's scale
        shared = sum(_pair_values(quantized, tuple(node.input[k + 1:k + 3])) == out for k in range(2, len(node.input), 3))
        assert shared >= (len(node.input) - 2) // 3 - 1
    assert protected_zero >= 1
