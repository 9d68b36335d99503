"""Graph rewrites that let an INT8 ONNX model stay in integers from its first convolution to its head.

ONNX Runtime's static quantiser turns ``Conv`` into ``QLinearConv`` but leaves a
``BatchNormalization`` that follows no convolution (DenseNet's ``norm1`` of each
layer, its transitions' and ``norm5``, which come *before* their convolutions)
in float32, with a ``DequantizeLinear``/``QuantizeLinear`` pair and a layout
change on either side of it. In DenseNet-121 that traffic costs more than the
integer convolutions save. Two exact float32 rewrites before quantisation
remove it, and one edit after it makes the dense concatenations plain copies:

* :func:`batch_norm_to_depthwise`: ``BatchNormalization`` (inference form,
  ``y = k * x + b`` per channel) becomes a depthwise 1x1 ``Conv`` with weight
  ``k`` and bias ``b``. Quantised per output channel, its single weight per
  channel is exact, and the ``Relu`` after it fuses into the convolution.
* :func:`average_pool_to_depthwise`: an unpadded average pool (DenseNet's
  transitions, which pool before their 1x1 convolution) becomes a depthwise
  ``Conv`` whose weights are ``1 / (kh * kw)``, again exact in int8, where
  ONNX Runtime's ``QLinearAveragePool`` ran ten times slower than the float
  pool.
* :func:`share_concat_scales` (after quantisation): every tensor a chain of
  ``QLinearConcat`` joins (a dense block's input, each layer's new features and
  the running concatenations) gets one scale and zero point, the union of
  their calibrated ranges, so the concatenations copy bytes instead of
  requantising. Tensors whose range must start at 0 (a ``Relu`` fused into the
  convolution that writes them) keep their own.

Each rewrite leaves a graph without the pattern unchanged, so any architecture
of the registry goes through them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["prepare_for_int8", "batch_norm_to_depthwise", "average_pool_to_depthwise", "relu_ranged_tensors", "head_nodes", "share_concat_scales"]


def _onnx():
    import onnx
    from onnx import helper, numpy_helper
    return onnx, helper, numpy_helper


def _attributes(node) -> dict:
    _, helper, _ = _onnx()
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _initializers(graph) -> dict:
    return {init.name: init for init in graph.initializer}


def _consumers(graph) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def batch_norm_to_depthwise(model) -> int:
    """Replace every ``BatchNormalization`` with constant statistics by a depthwise 1x1 ``Conv``; the count.

    ``y = scale * (x - mean) / sqrt(var + eps) + bias`` is ``k * x + b`` per
    channel with ``k = scale / sqrt(var + eps)`` and ``b = bias - mean * k``.
    """
    _, helper, numpy_helper = _onnx()
    graph = model.graph
    inits = _initializers(graph)
    replaced = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "BatchNormalization" or len(node.output) != 1:
            continue
        if not all(name in inits for name in node.input[1:5]):
            continue
        scale, bias, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in node.input[1:5])
        eps = _attributes(node).get("epsilon", 1e-5)
        k = scale / np.sqrt(var + eps)
        b = bias - mean * k
        channels = k.size
        weight_name, bias_name = f"{node.output[0]}.depthwise_weight", f"{node.output[0]}.depthwise_bias"
        graph.initializer.extend([
            numpy_helper.from_array(k.astype(np.float32).reshape(channels, 1, 1, 1), weight_name),
            numpy_helper.from_array(b.astype(np.float32), bias_name),
        ])
        conv = helper.make_node("Conv", [node.input[0], weight_name, bias_name], list(node.output),
                                name=(node.name or node.output[0]) + ".as_depthwise_conv",
                                group=channels, kernel_shape=[1, 1])
        graph.node.remove(node)
        graph.node.insert(index, conv)
        replaced += 1
    return replaced


def _plain_average_pool(node) -> bool:
    attributes = _attributes(node)
    return (node.op_type == "AveragePool" and not any(attributes.get("pads", [])) and not attributes.get("ceil_mode", 0)
            and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"))


def _channels(model) -> dict[str, int]:
    """Channel count (dim 1) of every tensor shape inference can tell."""
    onnx, _, _ = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            found[value.name] = dims[1].dim_value
    return found


def average_pool_to_depthwise(model) -> int:
    """Replace every unpadded ``AveragePool`` over a 4-D tensor of known channels by a depthwise ``Conv``."""
    _, helper, numpy_helper = _onnx()
    graph = model.graph
    channels = _channels(model)
    replaced = 0
    for index, node in enumerate(list(graph.node)):
        if not _plain_average_pool(node) or node.input[0] not in channels:
            continue
        attributes = _attributes(node)
        kernel = list(attributes["kernel_shape"])
        if len(kernel) != 2:
            continue
        count = channels[node.input[0]]
        weight_name = f"{node.output[0]}.average_weight"
        weight = np.full((count, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        conv = helper.make_node("Conv", [node.input[0], weight_name], list(node.output),
                                name=(node.name or node.output[0]) + ".as_depthwise_conv", group=count,
                                kernel_shape=kernel, strides=list(attributes.get("strides", [1, 1])))
        graph.node.remove(node)
        graph.node.insert(index, conv)
        replaced += 1
    return replaced


def prepare_for_int8(model) -> dict[str, int]:
    """Apply the exact float32 rewrites in place; the count of each."""
    onnx, _, _ = _onnx()
    counts = {"batch_norm_to_depthwise": batch_norm_to_depthwise(model),
              "average_pool_to_depthwise": average_pool_to_depthwise(model)}
    del model.graph.value_info[:]  # stale after the rewrites; the quantiser infers shapes again
    onnx.checker.check_model(model)
    return counts


def relu_ranged_tensors(model) -> set[str]:
    """Tensors whose quantised range must start at 0: the input and output of every ``Relu``.

    The quantiser drops a ``Relu`` that follows a quantised op and gives that
    op's output the Relu's range: the clamp at 0 is then the uint8 zero point.
    """
    return {name for node in model.graph.node if node.op_type == "Relu" for name in (node.input[0], node.output[0])}


def head_nodes(model) -> list[str]:
    """Names of the nodes from the last ``GlobalAveragePool`` to the output (kept in float32).

    The classifier is a few hundred multiply-adds; quantising its logits would
    only add rounding to the probabilities.
    """
    nodes = list(model.graph.node)
    last = max((i for i, node in enumerate(nodes) if node.op_type == "GlobalAveragePool"), default=None)
    if last is None:
        return []
    reached = set(nodes[last].output)
    names = [nodes[last].name]
    for node in nodes[last + 1:]:
        if any(name in reached for name in node.input):
            reached.update(node.output)
            names.append(node.name)
    return [name for name in names if name]


def share_concat_scales(quantized, relu_ranged: set[str]) -> int:
    """Give every group of tensors joined by ``QLinearConcat`` one scale and zero point; the tensors changed.

    Args:
        quantized (onnx.ModelProto): the QOperator INT8 model, edited in place.
        relu_ranged (set[str]): float32 names of tensors whose range must start at 0
            (:func:`relu_ranged_tensors` of the graph that was quantised); a scale
            any of them uses is left alone.
    """
    _, _, numpy_helper = _onnx()
    graph = quantized.graph
    inits = _initializers(graph)
    suffix = "_quantized"

    def float_name(name: str) -> str:
        return name[:-len(suffix)] if name.endswith(suffix) else name

    # the (scale, zero point) pairs some Relu-ranged tensor is written or read with
    protected = set()
    pairs_of: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        if node.op_type == "QLinearConv":
            pairs_of[node.output[0]] = (node.input[6], node.input[7])
            pairs_of[node.input[0]] = (node.input[1], node.input[2])
        elif node.op_type == "QLinearConcat":
            pairs_of[node.output[0]] = (node.input[0], node.input[1])
            for k in range(2, len(node.input), 3):
                pairs_of[node.input[k]] = (node.input[k + 1], node.input[k + 2])
    for name, pair in pairs_of.items():
        if float_name(name) in relu_ranged:
            protected.add(pair)

    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(pair):
        parent.setdefault(pair, pair)
        while parent[pair] != pair:
            parent[pair] = parent[parent[pair]]
            pair = parent[pair]
        return pair

    for node in graph.node:
        if node.op_type != "QLinearConcat":
            continue
        out_pair = (node.input[0], node.input[1])
        find(out_pair)
        for k in range(2, len(node.input), 3):
            pair = (node.input[k + 1], node.input[k + 2])
            if pair not in protected and out_pair not in protected:
                parent[find(pair)] = find(out_pair)

    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for pair in parent:
        groups.setdefault(find(pair), []).append(pair)
    changed = 0
    for members in groups.values():
        if len(members) < 2 or not all(s in inits and z in inits for s, z in members):
            continue
        zero_type = numpy_helper.to_array(inits[members[0][1]]).dtype
        if zero_type != np.uint8:
            continue
        low, high = 0.0, 0.0
        for scale_name, zero_name in members:
            scale = float(numpy_helper.to_array(inits[scale_name]))
            zero = int(numpy_helper.to_array(inits[zero_name]))
            low, high = min(low, scale * (0 - zero)), max(high, scale * (255 - zero))
        scale = (high - low) / 255.0 if high > low else 1.0
        zero = min(255, max(0, round(-low / scale)))
        # widen the step so that the rounded zero point still leaves room for both ends
        scale = max(scale, high / (255 - zero) if zero < 255 else 0.0, -low / zero if zero > 0 else 0.0)
        scale, zero = np.float32(scale * (1 + 1e-6)), np.uint8(zero)
        for scale_name, zero_name in members:
            inits[scale_name].CopyFrom(numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name))
            inits[zero_name].CopyFrom(numpy_helper.from_array(np.array(zero, dtype=np.uint8), zero_name))
            changed += 1
    return changed
