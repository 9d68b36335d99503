"""Graph edits that let an INT8 ONNX model stay in integers from its first convolution to its head, accurately.

ONNX Runtime's static quantiser turns ``Conv`` into ``QLinearConv`` but leaves a
``BatchNormalization`` that follows no convolution (DenseNet's ``norm1`` of each
layer, its transitions' and ``norm5``, which come *before* their convolutions)
in float32, with a ``DequantizeLinear``/``QuantizeLinear`` pair and a layout
change on either side of it. In DenseNet-121 that traffic costs more than the
integer convolutions save. Exact float32 rewrites before quantisation remove it
and prepare the ranges; two edits after it fix what plain rounding gets wrong:

* :func:`batch_norm_to_depthwise`: ``BatchNormalization`` (inference form,
  ``y = k * x + b`` per channel) becomes a depthwise 1x1 ``Conv`` with weight
  ``k`` and bias ``b``. Quantised per output channel, its single weight per
  channel is exact, and the ``Relu`` after it fuses into the convolution.
* :func:`average_pool_to_depthwise`: an unpadded average pool (DenseNet's
  transitions, which pool before their 1x1 convolution) becomes a depthwise
  ``Conv`` whose weights are ``1 / (kh * kw)``, again exact in int8, where
  ONNX Runtime's ``QLinearAveragePool`` was far slower than the float pool.
* :func:`equalize_concat_channels`: the channels a dense block concatenates
  come straight from convolutions, over very different ranges; each is mapped
  to [0, 1] on the calibration images (its writer's weights scaled, its
  readers' undone), so that one uint8 scale serves them all.
* :func:`keep_filter_sums` (after quantisation): the spatial filters' int8
  weights are re-rounded so each keeps its float sum, its response to a flat
  patch, which is most of a chest X-ray.
* :func:`share_concat_scales` (after quantisation): every tensor a chain of
  ``QLinearConcat`` joins (a dense block's input, each layer's new features and
  the running concatenations) gets one scale and zero point, the union of
  their calibrated ranges, so the concatenations copy bytes instead of
  requantising. Tensors whose range must start at 0 (a ``Relu`` fused into the
  convolution that writes them) keep their own unless the union starts at 0.

Each edit leaves a graph without its pattern unchanged, so any architecture of
the registry goes through them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["prepare_for_int8", "batch_norm_to_depthwise", "average_pool_to_depthwise", "concat_groups",
           "measure_channel_ranges", "equalize_concat_channels", "keep_filter_sums", "relu_ranged_tensors",
           "head_nodes", "share_concat_scales"]


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
        for k in range(2, len(node.input), 3):
            parent[find((node.input[k + 1], node.input[k + 2]))] = find(out_pair)

    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for pair in parent:
        groups.setdefault(find(pair), []).append(pair)
    changed = 0
    old_scales: dict[str, float] = {}
    for members in groups.values():
        if not all(s in inits and z in inits for s, z in members):
            continue
        if any(numpy_helper.to_array(inits[z]).dtype != np.uint8 for _, z in members):
            continue
        ranges = {}
        for scale_name, zero_name in members:
            scale = float(numpy_helper.to_array(inits[scale_name]))
            zero = int(numpy_helper.to_array(inits[zero_name]))
            ranges[(scale_name, zero_name)] = (scale * (0 - zero), scale * (255 - zero))
        low = min(r[0] for r in ranges.values())
        if low < 0:  # a Relu-ranged member would lose its clamp at 0: it keeps its own range
            members = [pair for pair in members if pair not in protected]
            low = min((ranges[pair][0] for pair in members), default=0.0)
        if len(members) < 2:
            continue
        high = max(ranges[pair][1] for pair in members)
        scale = (high - low) / 255.0 if high > low else 1.0
        zero = min(255, max(0, round(-low / scale)))
        # widen the step so that the rounded zero point still leaves room for both ends
        scale = max(scale, high / (255 - zero) if zero < 255 else 0.0, -low / zero if zero > 0 else 0.0)
        scale, zero = np.float32(scale * (1 + 1e-6)), np.uint8(zero)
        for scale_name, zero_name in members:
            old_scales[scale_name] = float(numpy_helper.to_array(inits[scale_name]))
            inits[scale_name].CopyFrom(numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name))
            inits[zero_name].CopyFrom(numpy_helper.from_array(np.array(zero, dtype=np.uint8), zero_name))
            changed += 1
    # a convolution's int32 bias is stored in steps of (input scale x weight scale): follow the new input scale
    for node in graph.node:
        if (node.op_type == "QLinearConv" and node.input[1] in old_scales and len(node.input) > 8
                and node.input[8] in inits):
            ratio = old_scales[node.input[1]] / float(numpy_helper.to_array(inits[node.input[1]]))
            bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.float64)
            inits[node.input[8]].CopyFrom(numpy_helper.from_array(np.round(bias * ratio).astype(np.int32),
                                                                  node.input[8]))
    return changed


@dataclass
class ConcatGroup:
    """The tensors a chain of channel concatenations joins (a dense block), and what reads and writes them.

    Attributes:
        leaves (dict[str, tuple[str, bool]]): each joined tensor no concatenation writes, mapped to the
            convolution that writes it and whether a ``Relu`` lies between (then only a positive
            scale may move it: ``Conv -> Relu -> MaxPool``, DenseNet's stem).
        slots (dict[str, list[tuple[str, int]]]): for each tensor of the group, the (leaf, channel) of
            each of its channels.
        readers (list): the depthwise 1x1 convolutions (batch norms, rewritten) that read a tensor of the
            group, with the tensor they read.
    """

    leaves: dict[str, tuple[str, bool]] = field(default_factory=dict)
    slots: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    readers: list[tuple[object, str]] = field(default_factory=list)


def _weight_and_bias(graph, inits, conv):
    """``conv``'s weight and bias arrays (a zero bias is added to a convolution without one)."""
    _, _, numpy_helper = _onnx()
    weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    if len(conv.input) < 3 or not conv.input[2]:
        name = f"{conv.output[0]}.bias"
        graph.initializer.append(numpy_helper.from_array(np.zeros(weight.shape[0], np.float32), name))
        inits[name] = graph.initializer[-1]
        if len(conv.input) < 3:
            conv.input.append(name)
        else:
            conv.input[2] = name
    return weight, numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)


def _store(inits, name: str, value: np.ndarray) -> None:
    _, _, numpy_helper = _onnx()
    inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def concat_groups(model) -> list[ConcatGroup]:
    """The groups of tensors joined by channel ``Concat`` that :func:`equalize_concat_channels` can rescale.

    A group qualifies when each tensor it joins is written by a ``Conv`` (or by
    ``Conv -> Relu -> MaxPool``) that nothing else reads, and every other reader of
    its tensors is a depthwise 1x1 ``Conv`` with a bias: then a per-channel affine
    change of the writers' outputs can be undone exactly in the readers' weights.
    """
    graph = model.graph
    inits = _initializers(graph)
    consumers = _consumers(graph)
    producers = {name: node for node in graph.node for name in node.output}
    concats = [node for node in graph.node if node.op_type == "Concat" and _attributes(node).get("axis") == 1
               and all(name in producers for name in node.input)]
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in concats:
        for name in node.input:
            parent[find(name)] = find(node.output[0])
    members: dict[str, list] = {}
    for node in concats:
        members.setdefault(find(node.output[0]), []).append(node)

    def conv_channels(conv) -> int | None:
        return (inits[conv.input[1]].dims[0] if conv.op_type == "Conv" and len(conv.input) > 1
                and conv.input[1] in inits else None)

    groups = []
    for nodes in members.values():
        group, outputs = ConcatGroup(), {node.output[0] for node in nodes}
        joined = {name for node in nodes for name in node.input} | outputs
        ok = True
        for name in sorted(joined - outputs):
            writer, behind_relu = producers[name], False
            if writer.op_type == "MaxPool":
                relu = producers.get(writer.input[0])
                writer = producers.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
                behind_relu = True
                if writer is None or len(consumers[relu.input[0]]) != 1 or len(consumers[relu.output[0]]) != 1:
                    ok = False
                    break
            count = conv_channels(writer) if writer is not None else None
            if count is None or sum(1 for n in graph.node if n.input[1:2] == [writer.input[1]]) != 1:
                ok = False
                break
            group.leaves[name] = (writer, behind_relu)
            group.slots[name] = [(name, c) for c in range(count)]
        for node in nodes:  # in graph order, so each input's slots are known
            if not ok or any(name not in group.slots for name in node.input):
                ok = False
                break
            group.slots[node.output[0]] = [slot for name in node.input for slot in group.slots[name]]
        if not ok:
            continue
        for name in joined:
            for reader in consumers.get(name, []):
                if reader in nodes:
                    continue
                attributes = _attributes(reader)
                channels = len(group.slots[name])
                if (reader.op_type != "Conv" or attributes.get("group") != channels or reader.input[0] != name
                        or list(attributes.get("kernel_shape", [])) != [1, 1] or len(reader.input) < 3
                        or reader.input[1] not in inits or reader.input[2] not in inits):
                    ok = False
                    break
                group.readers.append((reader, name))
        if ok and group.readers:
            groups.append(group)
    return groups


def _tensor_batches(model, names: list[str], batch: np.ndarray, threads: int | None, chunk: int):
    """Yield ``(images in the chunk, {name: value})`` for the float32 tensors ``names`` of ``model`` over ``batch``."""
    onnx, helper, _ = _onnx()
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for start in range(0, len(batch), chunk):
        part = np.ascontiguousarray(batch[start:start + chunk], np.float32)
        yield len(part), dict(zip(names, session.run(names, {input_name: part})))


def measure_channel_ranges(model, names: list[str], batch: np.ndarray, threads: int | None = None,
                           chunk: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel minimum and maximum of the float32 tensors ``names`` over ``batch`` (ONNX Runtime)."""
    low: dict[str, np.ndarray] = {}
    high: dict[str, np.ndarray] = {}
    for _, values in _tensor_batches(model, names, batch, threads, chunk):
        for name, value in values.items():
            axes = (0, *range(2, value.ndim))
            lo, hi = value.min(axis=axes), value.max(axis=axes)
            low[name] = lo if name not in low else np.minimum(low[name], lo)
            high[name] = hi if name not in high else np.maximum(high[name], hi)
    return {name: (low[name].astype(np.float64), high[name].astype(np.float64)) for name in names}


def equalize_concat_channels(model, batch: np.ndarray, threads: int | None = None) -> int:
    """Map every channel of each :func:`concat_groups` group to the range [0, 1] on ``batch``; the channels moved.

    A dense block's features come straight from convolutions, without a
    normalisation: their channels span very different ranges, and one uint8
    scale for the whole concatenation (which :func:`share_concat_scales` needs
    for byte copies) would leave the narrow ones a few levels. Each writer's
    output channel ``c`` becomes ``a_c * (x_c - m_c)`` (its weights and bias
    scaled, per output channel, so their int8 quantisation is unchanged), with
    ``m_c`` and ``1 / a_c`` the channel's minimum and range over ``batch``; the
    depthwise readers undo it exactly (weight ``k / a_c``, bias ``b + k * m_c``).
    Behind a ``Relu`` only the scale moves (``m_c = 0``). The model computes the
    same function; on ``batch`` every joined tensor then spans [0, 1].
    """
    groups = concat_groups(model)
    if not groups:
        return 0
    leaves = sorted({name for group in groups for name in group.leaves})
    ranges = measure_channel_ranges(model, leaves, batch, threads)
    inits = _initializers(model.graph)
    moved = 0
    for group in groups:
        scale: dict[str, np.ndarray] = {}
        shift: dict[str, np.ndarray] = {}
        for name, (writer, behind_relu) in group.leaves.items():
            low, high = ranges[name]
            if behind_relu:
                low = np.zeros_like(low)
            span = high - low
            a = np.where(span > 1e-6, 1.0 / np.maximum(span, 1e-6), 1.0)
            weight, bias = _weight_and_bias(model.graph, inits, writer)
            shape = (-1,) + (1,) * (weight.ndim - 1)
            _store(inits, writer.input[1], weight * a.reshape(shape))
            _store(inits, writer.input[2], (bias - low) * a)
            scale[name], shift[name] = a, low
            moved += a.size
        for reader, name in group.readers:
            leaf = [leaf for leaf, _ in group.slots[name]]
            channel = np.array([c for _, c in group.slots[name]])
            a = np.array([scale[n][c] for n, c in zip(leaf, channel)])
            m = np.array([shift[n][c] for n, c in zip(leaf, channel)])
            weight, bias = _weight_and_bias(model.graph, inits, reader)
            k = weight.reshape(-1)
            _store(inits, reader.input[2], bias + k * m)
            _store(inits, reader.input[1], (k / a).reshape(weight.shape))
    return moved


def _rounded_keeping_sums(exact: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``exact`` (``[O, C, taps]``, in quantisation steps) rounded so that each ``[o, c]`` filter keeps its sum.

    Plain rounding leaves each filter's sum (its response to a flat patch) off by
    up to ``sqrt(taps / 12)`` steps; moving the taps whose rounding was closest
    to a tie one step the other way brings it back to within half a step.
    Values stay within ``[-bound[o], bound[o]]``.
    """
    rounded = np.round(exact)
    limit = bound.reshape(-1, 1, 1)
    lost = np.round((exact - rounded).sum(axis=2)).astype(int)  # [O, C], in whole steps
    for o, c in zip(*np.nonzero(lost)):
        need = lost[o, c]
        residual = exact[o, c] - rounded[o, c]  # in [-0.5, 0.5]
        step = np.sign(need)
        order = np.argsort(-residual * step, kind="stable")  # the taps nearest to rounding the other way
        allowed = [k for k in order if abs(rounded[o, c, k] + step) <= limit[o, 0, 0]]
        for k in allowed[:abs(need)]:
            rounded[o, c, k] += step
    return rounded


def keep_filter_sums(quantized, float_model) -> int:
    """Re-round the int8 weights of every spatial ``QLinearConv`` so each filter keeps its float sum; the count.

    A chest X-ray is mostly smooth, so a filter's response there is its sum
    times the local intensity: DenseNet's 7x7 stem, rounded plainly, shifted
    the probabilities of a trained model more than all other rounding
    together. The scales and the bias are left as the quantiser made
    them; only which way some taps round changes.

    Args:
        quantized (onnx.ModelProto): the QOperator INT8 model, edited in place.
        float_model (onnx.ModelProto): the float32 graph that was quantised (its weights).
    """
    _, _, numpy_helper = _onnx()
    inits = _initializers(quantized.graph)
    floats = _initializers(float_model.graph)
    suffix = "_quantized"
    changed = 0
    for node in quantized.graph.node:
        if node.op_type != "QLinearConv" or node.input[3] not in inits or node.input[4] not in inits:
            continue
        name = node.input[3]
        source = floats.get(name[:-len(suffix)] if name.endswith(suffix) else name)
        weight_q = numpy_helper.to_array(inits[name])
        if source is None or weight_q.dtype != np.int8 or int(np.prod(weight_q.shape[2:])) < 2:
            continue
        weight = numpy_helper.to_array(source).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[4]]).astype(np.float64).reshape(-1)
        if weight.shape != weight_q.shape or scale.size not in (1, weight.shape[0]) or np.any(scale <= 0):
            continue
        if numpy_helper.to_array(inits[node.input[5]]).any():  # weights with a zero point: not the symmetric grid
            continue
        scale = np.broadcast_to(scale, (weight.shape[0],))
        shape = (weight.shape[0], weight.shape[1], -1)
        exact = (weight / scale.reshape(-1, 1, 1, 1)).reshape(shape)
        bound = np.abs(weight_q.reshape(weight.shape[0], -1)).max(axis=1).astype(np.float64)
        if not np.array_equal(np.clip(np.round(exact), -bound.reshape(-1, 1, 1), bound.reshape(-1, 1, 1)),
                              weight_q.reshape(shape)):
            continue  # not the plain rounding of these weights on this grid: leave it
        rounded = _rounded_keeping_sums(exact, bound).reshape(weight.shape).astype(np.int8)
        inits[name].CopyFrom(numpy_helper.from_array(rounded, name))
        changed += 1
    return changed


def measure_channel_means(model, names: list[str], batch: np.ndarray, threads: int | None = None,
                          chunk: int = 4) -> dict[str, np.ndarray]:
    """Per-channel mean of the float32 tensors ``names`` over ``batch`` (ONNX Runtime)."""
    sums: dict[str, np.ndarray] = {}
    count = 0
    for images, values in _tensor_batches(model, names, batch, threads, chunk):
        for name, value in values.items():
            total = value.astype(np.float64).sum(axis=(0, *range(2, value.ndim))) / np.prod(value.shape[2:])
            sums[name] = total if name not in sums else sums[name] + total
        count += images
    return {name: value / count for name, value in sums.items()}


def correct_biases(quantized, float_model, batch: np.ndarray, threads: int | None = None) -> int:
    """Take each ``QLinearConv``'s expected rounding error out of its int32 bias; the convolutions corrected.

    Rounded weights ``W + dW`` shift output channel ``o`` by ``sum_c,t dW[o, c, t] * E[x_c]`` on average
    (for ReLU inputs, which have positive means, these shifts do not cancel); the bias absorbs it, with
    ``E[x_c]`` the float input's channel means over ``batch`` (Nagel et al. 2019, "Data-Free Quantization
    Through Weight Equalization and Bias Correction", with measured rather than modelled means).
    """
    _, _, numpy_helper = _onnx()
    inits = _initializers(quantized.graph)
    floats = _initializers(float_model.graph)
    float_tensors = {name for node in float_model.graph.node for name in node.output}
    float_tensors |= {value.name for value in float_model.graph.input}
    suffix = "_quantized"

    def float_name(name: str) -> str:
        return name[:-len(suffix)] if name.endswith(suffix) else name

    targets = []
    for node in quantized.graph.node:
        if node.op_type != "QLinearConv" or len(node.input) < 9 or node.input[8] not in inits:
            continue
        weight_name = float_name(node.input[3])
        if float_name(node.input[0]) not in float_tensors or weight_name not in floats or node.input[3] not in inits:
            continue
        if numpy_helper.to_array(inits[node.input[5]]).any():
            continue
        targets.append((node, float_name(node.input[0]), weight_name))
    if not targets:
        return 0
    means = measure_channel_means(float_model, sorted({t[1] for t in targets}), batch, threads)
    for node, input_name, weight_name in targets:
        weight = numpy_helper.to_array(floats[weight_name]).astype(np.float64)
        w_scale = np.broadcast_to(numpy_helper.to_array(inits[node.input[4]]).astype(np.float64).reshape(-1),
                                  (weight.shape[0],))
        rounded = numpy_helper.to_array(inits[node.input[3]]).astype(np.float64) * w_scale.reshape(-1, 1, 1, 1)
        error = (rounded - weight).sum(axis=(2, 3))  # [O, C / group]
        mean = means[input_name]
        groups = int(_attributes(node).get("group", 1))
        per_group = error.shape[1]
        outputs_per_group = weight.shape[0] // groups
        # the input channels output o reads: its group's slice
        index = (np.arange(weight.shape[0]) // outputs_per_group)[:, None] * per_group + np.arange(per_group)
        shift = (error * mean[index]).sum(axis=1)
        x_scale = float(numpy_helper.to_array(inits[node.input[1]]))
        bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.float64)
        inits[node.input[8]].CopyFrom(numpy_helper.from_array(
            np.round(bias - shift / (x_scale * w_scale)).astype(np.int32), node.input[8]))
    return len(targets)
