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
            else:  # not shared: only a Relu-ranged tensor, which keeps its range at 0
                assert new == old and new[1] == 0
        # equalised channels start at 0, so even the stem's Relu-ranged output joins: every input is copied
        assert all(_pair_values(quantized, tuple(node.input[k + 1:k + 3])) == out for k in range(2, len(node.input), 3))
        assert out[1] == 0


def test_without_equalisation_a_relu_ranged_tensor_keeps_its_zero(exported, tmp_path, monkeypatch):
    fp32, _ = exported
    monkeypatch.setattr(int8_graph, "equalize_concat_channels", lambda model, batch: 0)
    path = quantize.quantize_onnx(fp32, tmp_path / "m.onnx", generated_inputs(32, CROP, RESIZE, seed=1).batch)
    model = onnx.load(str(path))
    first = next(n for n in model.graph.node if n.op_type == "QLinearConcat")
    stem, out = _pair_values(model, tuple(first.input[3:5])), _pair_values(model, tuple(first.input[:2]))
    # the stem's pooled Relu output: the block's other tensors go below 0, so it is requantised, not shared
    assert out[1] > 0 and stem[1] == 0 and stem != out
    others = [_pair_values(model, tuple(first.input[k + 1:k + 3])) for k in range(5, len(first.input), 3)]
    assert others and all(pair == out for pair in others)


def test_equalised_channels_span_zero_to_one_and_the_model_is_unchanged(exported):
    _, prepared = exported
    before = onnx.load(str(prepared))
    after = onnx.load(str(prepared))
    int8_graph.prepare_for_int8(before)
    int8_graph.prepare_for_int8(after)
    batch = generated_inputs(16, CROP, RESIZE, seed=3).batch
    groups = int8_graph.concat_groups(after)
    assert len(groups) == 2  # the tiny DenseNet's two dense blocks
    assert int8_graph.equalize_concat_channels(after, batch) == sum(len(s) for g in groups for s in
                                                                    [g.slots[name] for name in g.leaves])
    leaves = sorted({name for group in int8_graph.concat_groups(after) for name in group.leaves})
    for name, (low, high) in int8_graph.measure_channel_ranges(after, leaves, batch).items():
        np.testing.assert_allclose(low, 0, atol=1e-5, err_msg=name)
        # a dead channel (constant on these images) keeps span 0; every other one spans [0, 1]
        assert np.all((np.abs(high - 1) < 1e-4) | (np.abs(high - low) < 1e-6)), name
    x = generated_inputs(8, CROP, RESIZE, seed=9).batch  # other images: the function itself is unchanged
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=0, atol=2e-6)


def _filters(model, name):
    inits = {i.name: i for i in model.graph.initializer}
    return numpy_helper.to_array(inits[name])


def test_spatial_filters_keep_their_sums(exported, quantized):
    _, prepared = exported
    float_graph = onnx.load(str(prepared))  # the float graph the fixture quantised, rebuilt the same way
    int8_graph.prepare_for_int8(float_graph)
    int8_graph.equalize_concat_channels(float_graph, generated_inputs(32, CROP, RESIZE, seed=1).batch)
    floats = {i.name: numpy_helper.to_array(i) for i in float_graph.graph.initializer}
    checked = 0
    for node in quantized.graph.node:
        if node.op_type != "QLinearConv":
            continue
        q8 = _filters(quantized, node.input[3]).astype(np.float64)
        if q8.shape[2] * q8.shape[3] < 2:
            continue
        scale = _filters(quantized, node.input[4]).astype(np.float64).reshape(-1, 1, 1, 1)
        source = node.input[3].removesuffix("_quantized")
        exact = floats[source] / scale
        # within one step of the plain rounding, and each [o, c] filter's sum within half a step
        assert np.abs(q8 - exact).max() <= 1.0 + 1e-6
        assert np.abs(q8.sum((2, 3)) - exact.sum((2, 3))).max() <= 0.5 + 1e-6
        checked += 1
    assert checked >= 4  # the stem, three 3x3 convolutions, the transition's pool


def test_rounding_keeps_sums_within_bounds():
    rng = np.random.default_rng(5)
    exact = rng.uniform(-5, 5, size=(6, 3, 49))
    exact[0, 0, :] = 4.49  # every tap rounds down: the sum is 24 steps short
    bound = np.full(6, 5.0)
    rounded = int8_graph._rounded_keeping_sums(exact, bound)
    assert np.abs(rounded.sum(2) - exact.sum(2)).max() <= 0.5
    assert np.abs(rounded).max() <= 5 and np.abs(rounded - exact).max() <= 1.0
    assert np.array_equal(rounded, np.round(rounded))


@pytest.mark.parametrize("bits, largest", [(7, 64), (8, 127)])
def test_weight_bits_set_the_int8_range(exported, tmp_path, bits, largest):
    fp32, _ = exported
    path = quantize.quantize_onnx(fp32, tmp_path / "m.onnx", generated_inputs(16, CROP, RESIZE, seed=1).batch,
                                  weight_bits=bits)
    model = onnx.load(str(path))
    weights = [_filters(model, n.input[3]) for n in model.graph.node if n.op_type == "QLinearConv"]
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == largest
    with pytest.raises(ValueError, match="7 or 8"):
        quantize.quantize_onnx(fp32, tmp_path / "x.onnx", generated_inputs(16, CROP, RESIZE, seed=1).batch,
                               weight_bits=6)


def _layer_shift(model, float_graph, batch) -> float:
    """The mean signed error of the first dense layer's 3x3 convolution output (int8 - float), over ``batch``."""
    conv = [n for n in model.graph.node if n.op_type == "QLinearConv"][3]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_tensor_value_info(conv.output[0], TensorProto.UINT8, None)])
    q = _run(probe, batch).astype(np.float64)
    value = (q - inits[conv.input[7]]) * inits[conv.input[6]]
    name = conv.output[0].removesuffix("_quantized")
    reference = onnx.ModelProto()
    reference.CopyFrom(float_graph)
    del reference.graph.output[:]
    reference.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    return float(np.abs((value - _run(reference, batch)).mean(axis=(0, 2, 3))).mean())


def test_bias_correction_takes_out_the_mean_shift(exported, quantized, tmp_path, monkeypatch):
    _, prepared = exported
    calibration = generated_inputs(32, CROP, RESIZE, seed=1).batch
    float_graph = onnx.load(str(prepared))
    int8_graph.prepare_for_int8(float_graph)
    int8_graph.equalize_concat_channels(float_graph, calibration)
    monkeypatch.setattr(int8_graph, "correct_biases", lambda *args, **kwargs: 0)
    plain = onnx.load(str(quantize.quantize_onnx(exported[0], tmp_path / "plain.onnx", calibration)))
    # per-channel mean error of one layer, on the calibration images: smaller with the correction
    corrected, uncorrected = _layer_shift(quantized, float_graph, calibration), _layer_shift(plain, float_graph, calibration)
    assert corrected < 0.8 * uncorrected
