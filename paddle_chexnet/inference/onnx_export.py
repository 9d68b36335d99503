"""ONNX export (paddle2onnx) and an ONNX Runtime predictor.

:func:`export_onnx` converts the Paddle Inference export of
:func:`~paddle_chexnet.inference.export.export_model` (``WithSigmoid(net)``, so
the graph ends with the sigmoid) with paddle2onnx at opset :data:`ONNX_OPSET`,
then names the input ``image`` and the output ``probabilities``, gives the
batch dimension the symbolic name ``N`` (any batch size), drops the
initializers nothing reads, and checks the model with ``onnx.checker``.

Opset 13 is the oldest opset with per-channel ``QuantizeLinear`` (what
``--quantize int8`` produces), and every current runtime (ONNX Runtime,
OpenVINO, TensorRT) reads it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paddle_chexnet.inference.export import model_file
from paddle_chexnet.inference.predictors import Predictor
from paddle_chexnet.inference.preprocess import INPUT_NAME, OUTPUT_NAME
from paddle_chexnet.utils.io import atomic_path
from paddle_chexnet.utils.system import usable_cores

logger = logging.getLogger(__name__)

ONNX_OPSET = 13

BATCH_DIM = "N"


class OnnxExportError(RuntimeError):
    """paddle2onnx could not convert the model, or the result is not a valid ONNX model."""


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def _drop_unused_initializers(graph) -> int:
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return len(unused)


def finish_onnx_model(model):
    """Name the input/output, make the batch dimension symbolic, drop unused initializers; returns ``model``.

    Raises:
        OnnxExportError: the graph has not one input and one output, or does not end with a ``Sigmoid``.
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxExportError(f"expected one input and one output, got {len(inputs)} and {len(graph.output)}")
    _rename(graph, inputs[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (inputs[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    last = [node for node in graph.node if OUTPUT_NAME in node.output]
    if not last or last[0].op_type != "Sigmoid":
        found = last[0].op_type if last else "nothing"
        raise OnnxExportError(f"the exported graph ends with {found}, not the sigmoid")
    _drop_unused_initializers(graph)
    return model


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(paddle_prefix: str | Path, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Convert a Paddle Inference export to ONNX at ``path`` (written atomically).

    Args:
        paddle_prefix (str | Path): the prefix given to :func:`~paddle_chexnet.inference.export.export_model`.
        path (str | Path): the ``.onnx`` file to write.
        opset (int, optional): ONNX opset. Default: :data:`ONNX_OPSET` (13).

    Raises:
        OnnxExportError: the conversion failed or produced an invalid model.
        ImportError: paddle2onnx or onnx is not installed (``pip install paddle2onnx onnx``).
    """
    try:
        import onnx
        import paddle2onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs paddle2onnx and onnx ({exc}); pip install paddle2onnx onnx") from None
    graph = model_file(paddle_prefix)
    try:
        # no optimize_tool: paddle2onnx's default (polygraphy) is not installed and would try to pip install it
        data = paddle2onnx.export(str(graph), f"{paddle_prefix}.pdiparams", None, opset_version=opset,
                                  auto_upgrade_opset=False, enable_onnx_checker=True, optimize_tool="none")
    except Exception as exc:  # paddle2onnx raises bare Exceptions (and UnboundLocalError when it failed)
        raise OnnxExportError(f"paddle2onnx could not convert {graph}: {exc}") from exc
    if not data:
        raise OnnxExportError(f"paddle2onnx returned no model for {graph}")
    model = finish_onnx_model(onnx.load_from_string(data))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"the ONNX model of {graph} is not valid: {exc}") from exc
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def onnx_session(path: str | Path, num_threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` with ``num_threads`` intra-op threads (default: all usable)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or usable_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor(Predictor):
    """An exported ONNX model run by ONNX Runtime on the CPU.

    Args:
        path (str | Path): the ``.onnx`` file.
        num_threads (int, optional): intra-op threads; ``None`` uses every core this process may use. Default: None.
        class_names (Sequence[str], optional): names of the outputs; ``None``: ``class_0 ...``. Default: None.
        micro_batch (int, optional): images per call, see :class:`~paddle_chexnet.inference.predictors.Predictor`.
            Default: None (whole batches).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, num_threads: int | None = None, class_names: Sequence[str] | None = None,
                 micro_batch: int | None = None) -> None:
        self.path = Path(path)
        self.micro_batch = micro_batch
        self.session = onnx_session(self.path, num_threads)
        self._input = self.session.get_inputs()[0].name
        width = self.session.get_outputs()[0].shape[-1]
        if class_names is None:
            class_names = tuple(f"class_{i}" for i in range(int(width))) if isinstance(width, int) else ()
        self.class_names = tuple(class_names)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]
