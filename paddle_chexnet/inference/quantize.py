"""Post-training static INT8 quantisation of an ONNX export (ONNX Runtime's ``quantize_static``), and its check.

The fp32 ONNX model is first prepared with ONNX Runtime's ``quant_pre_process``
(shape inference, graph optimisation, batch norms folded into the convolutions
before them), then rewritten so that the rest quantises too and quantises well
(:mod:`paddle_chexnet.inference.int8_graph`: the remaining batch norms and the
average pools become depthwise convolutions, and each dense block's channels
are rescaled to one range, all exactly), then quantised in the QOperator format
(``QLinearConv``, ``QLinearConcat`` ...): weights int8 per output channel,
activations uint8 with ranges calibrated (min/max) on preprocessed images, the
classifier head after the global pooling in float32. Last, the spatial filters
are re-rounded to keep their sums, and the tensors each chain of concatenations
joins get one scale, so the concatenations copy bytes. The graph then runs in
integers from the first convolution to the global pooling.

Weights have 8 or 7 bits (``weight_bits``). With 7, processors without VNNI
(AVX2's ``vpmaddubsw`` adds pairs of int8 x uint8 products in 16 bits) cannot
saturate; processors with VNNI (AVX-512 VNNI, AVX-VNNI, AMX) sum in 32 bits,
and 8 bits halve the rounding: :func:`default_weight_bits` picks by the
processor that makes the model, so a model made with 8 should run on a VNNI
processor too.

:func:`check_int8` compares the INT8 model with the fp32 one on labelled
images: the per-class AUROC change (the check: at most :data:`AUROC_BOUND`),
the probability difference, and the throughput of both on this machine. A
model whose check fails is not written (:mod:`paddle_chexnet.inference.bundle`).

Needs ``onnxruntime`` with its quantisation tools (which import ``ml_dtypes``).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_chexnet.inference.predictors import Predictor
from paddle_chexnet.inference.preprocess import INPUT_NAME

logger = logging.getLogger(__name__)

#: the largest per-class AUROC change the INT8 model may show against fp32
AUROC_BOUND = 0.005

#: calibration images whose activations are held at once (their min/max are then folded)
CALIBRATION_STRIDE = 16

#: calibration images when the user gives none
DEFAULT_CALIBRATION_COUNT = 200

#: processor flags (``/proc/cpuinfo``) of integer dot products that sum in 32 bits
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

#: the op types quantised: everything a CNN of the registry runs between its first convolution and its head
#: (quantising ``GlobalAveragePool`` and the head too made DenseNet-121 slower and its probabilities coarser)
QUANTIZED_OP_TYPES = ("Conv", "Relu", "Clip", "Concat", "MaxPool", "Add", "Mul", "Sigmoid")


def _quantization_tools():
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise ImportError(f"--quantize int8 needs onnxruntime's quantisation tools ({exc}); "
                          "pip install onnxruntime onnx ml_dtypes") from None
    return quantization


def default_weight_bits() -> int:
    """8 on a processor with VNNI (its integer dot products cannot saturate), else 7."""
    from paddle_chexnet.cpu.runtime import cpu_flags

    return 8 if cpu_flags() & VNNI_FLAGS else 7


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  per_channel: bool = True, weight_bits: int | None = None) -> Path:
    """Quantise ``fp32_path`` to ``int8_path`` (statically, calibrated on ``calibration``).

    Args:
        fp32_path (str | Path): the fp32 ONNX model (input ``image``).
        int8_path (str | Path): where to write the INT8 model.
        calibration (numpy.ndarray): float32 ``[N, 3, crop, crop]`` preprocessed images.
        per_channel (bool, optional): one weight scale per output channel. Default: True.
        weight_bits (int, optional): 7 (safe on every processor) or 8 (for processors with VNNI).
            Default: None (:func:`default_weight_bits`).
    """
    weight_bits = default_weight_bits() if weight_bits is None else weight_bits
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits}")
    q = _quantization_tools()
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the optimiser's notes on folded constants are noise here

    # ranges are folded every `stride` images (memory stays that of `stride` images' activations); the data
    # size must be a multiple of it, so a remainder of fewer than `stride` images is left out
    stride = min(CALIBRATION_STRIDE, len(calibration))
    used = calibration[:len(calibration) - len(calibration) % stride]
    if len(used) < len(calibration):
        logger.info("calibrating on %d of the %d images (a multiple of %d)", len(used), len(calibration), stride)

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._next, self._end = 0, len(used)

        def __len__(self) -> int:
            return len(used)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._end = start_index, min(end_index, len(used))

        def get_next(self):
            if self._next >= self._end:
                return None
            self._next += 1
            return {INPUT_NAME: np.ascontiguousarray(used[self._next - 1:self._next], dtype=np.float32)}

    import onnx

    from paddle_chexnet.inference import int8_graph

    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="chexnet-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        q.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        counts = int8_graph.prepare_for_int8(graph)
        counts["channels equalised"] = int8_graph.equalize_concat_channels(graph, used)
        logger.info("graph rewritten for INT8 (%d-bit weights): %s", weight_bits,
                    ", ".join(f"{k} {v}" for k, v in counts.items()))
        onnx.save(graph, str(prepared))
        q.quantize_static(
            str(prepared), str(int8_path), Reader(),
            quant_format=q.QuantFormat.QOperator, op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=int8_graph.head_nodes(graph),
            per_channel=per_channel, reduce_range=weight_bits == 7,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            extra_options={"CalibStridedMinMax": stride},
        )
    quantized = onnx.load(str(int8_path))
    filters = int8_graph.keep_filter_sums(quantized, graph)
    shared = int8_graph.share_concat_scales(quantized, int8_graph.relu_ranged_tensors(graph))
    corrected = int8_graph.correct_biases(quantized, graph, used)
    logger.info("INT8 model: %d convolutions re-rounded to keep their filters' sums, %d concatenated tensors "
                "sharing their group's scale, %d biases corrected for weight rounding", filters, shared, corrected)
    onnx.save(quantized, str(int8_path))
    return int8_path


def throughput(predictor: Predictor, batch: np.ndarray, rounds: int = 3) -> float:
    """Images per second of ``predictor`` on ``batch`` (best of ``rounds`` after one warm-up)."""
    predictor(batch[:1])
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        predictor(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


@dataclass
class QuantizationReport:
    """The INT8 model against fp32 on labelled images.

    Attributes:
        class_names (tuple[str, ...]): the classes.
        auroc_fp32, auroc_int8 (numpy.ndarray): ``[C]`` per-class AUROC (NaN where a class has one label value).
        max_prob_diff, mean_prob_diff (float): over every image and class.
        images (str): what the check ran on.
        calibration (str): what the ranges were calibrated on.
        bound (float): the largest AUROC change allowed.
        throughput (dict[str, float]): images/s of ``'fp32'`` and ``'int8'`` (ONNX Runtime, this machine).
        weight_bits (int | None): the bits of the INT8 model's weights (7 or 8).
    """

    class_names: tuple[str, ...]
    auroc_fp32: np.ndarray
    auroc_int8: np.ndarray
    max_prob_diff: float
    mean_prob_diff: float
    images: str
    calibration: str
    bound: float = AUROC_BOUND
    throughput: dict = field(default_factory=dict)
    weight_bits: int | None = None

    @property
    def auroc_diff(self) -> np.ndarray:
        return np.abs(self.auroc_int8 - self.auroc_fp32)

    @property
    def scored(self) -> int:
        """Classes whose AUROC is defined on these images."""
        return int(np.isfinite(self.auroc_diff).sum())

    @property
    def max_auroc_diff(self) -> float:
        finite = self.auroc_diff[np.isfinite(self.auroc_diff)]
        return float(finite.max()) if finite.size else float("nan")

    @property
    def passed(self) -> bool:
        return self.scored > 0 and self.max_auroc_diff <= self.bound

    def to_dict(self) -> dict:
        def number(value: float):
            return None if not math.isfinite(value) else float(value)

        return {
            "passed": self.passed, "bound": self.bound, "images": self.images, "calibration": self.calibration,
            "weight_bits": self.weight_bits,
            "max_auroc_diff": number(self.max_auroc_diff), "max_prob_diff": self.max_prob_diff,
            "mean_prob_diff": self.mean_prob_diff, "throughput_images_per_s": self.throughput,
            "per_class": {name: {"auroc_fp32": number(a), "auroc_int8": number(b)}
                          for name, a, b in zip(self.class_names, self.auroc_fp32, self.auroc_int8)},
        }

    def format(self) -> str:
        width = max(len(n) for n in self.class_names)
        bits = f"; {self.weight_bits}-bit weights" if self.weight_bits else ""
        lines = [f"INT8 against fp32 on {self.images}", f"calibrated on {self.calibration}{bits}",
                 f"  {'class':<{width}}  AUROC fp32  AUROC int8     |diff|"]
        for name, a, b in zip(self.class_names, self.auroc_fp32, self.auroc_int8):
            diff = abs(b - a)
            lines.append(f"  {name:<{width}}  {a:10.6f}  {b:10.6f}  {diff:9.2e}")
        lines.append(f"max |AUROC diff| = {self.max_auroc_diff:.2e} over {self.scored} class(es) "
                     f"(bound {self.bound}); max |prob diff| = {self.max_prob_diff:.2e}, "
                     f"mean {self.mean_prob_diff:.2e}")
        if self.throughput:
            fp32, int8 = self.throughput.get("fp32"), self.throughput.get("int8")
            lines.append(f"throughput (ONNX Runtime, this CPU): fp32 {fp32:.2f} img/s, int8 {int8:.2f} img/s "
                         f"({int8 / fp32:.2f}x)")
        lines.append("PASSED" if self.passed else "FAILED: the INT8 model is not written")
        return "\n".join(lines)


def check_int8(fp32: Predictor, int8: Predictor, batch: np.ndarray, labels: np.ndarray,
               class_names: Sequence[str], images: str, calibration: str, bound: float = AUROC_BOUND,
               speed_batch: int = 10, weight_bits: int | None = None) -> QuantizationReport:
    """Compare ``int8`` with ``fp32`` on ``batch`` (labels ``[N, C]``); see :class:`QuantizationReport`."""
    from paddle_chexnet.evaluation.metrics import compute_auroc

    p32, p8 = fp32(batch).astype(np.float64), int8(batch).astype(np.float64)
    diff = np.abs(p8 - p32)
    report = QuantizationReport(
        tuple(class_names), compute_auroc(labels, p32, class_names, warn=False),
        compute_auroc(labels, p8, class_names, warn=False), float(diff.max()), float(diff.mean()),
        images, calibration, bound, weight_bits=weight_bits,
    )
    sample = batch[:speed_batch]
    report.throughput = {"fp32": throughput(fp32, sample), "int8": throughput(int8, sample)}
    return report
