"""The export folder of ``tools/export_model.py``: models, ``preprocess.json``, verification, all or nothing.

Layout of ``DIR`` (``--format both``)::

    DIR/model.json, DIR/model.pdiparams   Paddle Inference (Paddle 3's program; .pdmodel in older Paddles)
    DIR/model.onnx                        ONNX, opset 13, batch dimension "N"
    DIR/model.int8.onnx                   with --quantize int8 (QOperator format)
    DIR/preprocess.json                   input, preprocessing, class names, thresholds (see inference.preprocess)
    DIR/verification.txt                  the tables printed by --verify (and the INT8 report)

Everything is written to a hidden folder beside ``DIR`` and renamed onto it at
the end, so an export that fails (its check included) leaves nothing behind,
and a finished ``DIR`` is replaced only when asked (``overwrite``).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle

from paddle_chexnet.errors import UserError
from paddle_chexnet.inference.export import MODEL_PREFIX, export_model, model_file
from paddle_chexnet.inference.export_check import (
    DEFAULT_ATOL,
    ComparisonRow,
    LabelledInputs,
    compare,
    format_comparison,
    generated_inputs,
    real_inputs,
)
from paddle_chexnet.inference.preprocess import preprocess_record, write_preprocess
from paddle_chexnet.inference.quantize import AUROC_BOUND, DEFAULT_CALIBRATION_COUNT, QuantizationReport

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("paddle", "onnx", "both")

ONNX_FILE = "model.onnx"

INT8_FILE = "model.int8.onnx"

REPORT_FILE = "verification.txt"


class ExportCheckError(UserError):
    """The exported model does not give the network's probabilities (or the INT8 check failed); nothing written."""


@dataclass
class ExportOptions:
    """Settings of :func:`export_bundle` (the flags of ``tools/export_model.py``).

    Args:
        format (str): ``'paddle'``, ``'onnx'`` or ``'both'``.
        crop (int): input height and width.
        resize (int): shorter side before the center crop (recorded in ``preprocess.json``).
        opset (int | None): ONNX opset; None: :data:`~paddle_chexnet.inference.onnx_export.ONNX_OPSET`.
        verify (bool): compare every runtime with the dynamic graph (exit 1 when beyond ``atol``).
        atol (float): the bound of the comparison.
        generated (int): synthetic X-rays to compare on.
        images (Path | None): the user's images (a file or folder), compared too, and the INT8 check's set.
        labels (Path | None): a label list for ``images`` (needed for the INT8 AUROC check on real images).
        limit (int | None): use at most this many of ``images`` for the fp32 comparison.
        quantize (str | None): ``'int8'`` for an INT8 ONNX model too.
        calibration_images (Path | None): images to calibrate INT8 ranges on; None: generated ones.
        calibration_labels (Path | None): a label list choosing which of ``calibration_images``.
        calibration_count (int): at most this many calibration images.
        auroc_bound (float): the largest per-class AUROC change of INT8 against fp32.
        int8_weight_bits (int | None): 7 or 8; None: 8 on a processor with VNNI, else 7.
        overwrite (bool): replace a finished ``output_dir``.
        threads (int | None): CPU threads of the runtimes; None: all usable cores.
    """

    format: str = "both"
    crop: int = 224
    resize: int = 256
    opset: int | None = None
    verify: bool = True
    atol: float = DEFAULT_ATOL
    generated: int = 4
    images: Path | None = None
    labels: Path | None = None
    limit: int | None = 32
    quantize: str | None = None
    calibration_images: Path | None = None
    calibration_labels: Path | None = None
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    auroc_bound: float = AUROC_BOUND
    int8_weight_bits: int | None = None
    overwrite: bool = False
    threads: int | None = None


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote and measured."""

    output_dir: Path
    files: dict[str, Path]
    rows: list[ComparisonRow] = field(default_factory=list)
    quantization: QuantizationReport | None = None


def check_options(options: ExportOptions, output_dir: Path) -> None:
    """Every check that needs no model, made before any work (one message naming the flag).

    Raises:
        UserError: a wrong flag, a missing path, or a finished ``output_dir`` without ``overwrite``.
    """
    if options.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    if options.crop < 32:
        raise UserError(f"--crop must be at least 32 (the network downsamples 32x), got {options.crop}")
    if options.resize < options.crop:
        raise UserError(f"--resize ({options.resize}) must be at least --crop ({options.crop})")
    if options.quantize not in (None, "int8"):
        raise UserError(f"--quantize supports int8, got {options.quantize!r}")
    if options.quantize and options.format == "paddle":
        raise UserError("--quantize int8 quantises the ONNX model; use --format onnx or both")
    if not options.atol > 0:
        raise UserError(f"--atol must be positive, got {options.atol}")
    if not 0 < options.auroc_bound < 1:
        raise UserError(f"--int8-auroc-bound must be in (0, 1), got {options.auroc_bound}")
    if options.int8_weight_bits not in (None, 7, 8):
        raise UserError(f"--int8-weight-bits must be 7 or 8, got {options.int8_weight_bits}")
    if options.int8_weight_bits is not None and not options.quantize:
        raise UserError("--int8-weight-bits sets the INT8 model's weights; add --quantize int8")
    if options.calibration_count < 1:
        raise UserError(f"--calibration-count must be at least 1, got {options.calibration_count}")
    if options.labels is not None and options.images is None:
        raise UserError("--labels names images of --images; give --images DIR too")
    if options.calibration_labels is not None and options.calibration_images is None:
        raise UserError("--calibration-labels needs --calibration-images DIR")
    for flag, path in (("--images", options.images), ("--labels", options.labels),
                       ("--calibration-images", options.calibration_images),
                       ("--calibration-labels", options.calibration_labels)):
        if path is not None and not Path(path).exists():
            raise UserError(f"{flag} {path} does not exist")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise UserError(f"--output-dir {output_dir} is a file; choose a folder")
        if any(output_dir.iterdir()) and not options.overwrite:
            raise UserError(f"--output-dir {output_dir} already holds files; pass --overwrite to replace it, "
                            "or choose another folder")
    parent = output_dir.resolve().parent  # the bundle is staged beside the output folder, then renamed onto it
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {parent} for --output-dir {output_dir} ({exc.strerror or exc}); "
                        "choose another --output-dir") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write beside --output-dir {output_dir}: {parent} is not a writable folder")


def _publish(staging: Path, output_dir: Path) -> None:
    """Rename ``staging`` onto ``output_dir`` (an old one moved aside first, removed after)."""
    old = None
    if output_dir.exists():
        if any(output_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
        else:
            output_dir.rmdir()
    staging.chmod(0o755)  # mkdtemp makes it private
    os.replace(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _reference(net, batch: np.ndarray) -> np.ndarray:
    from paddle_chexnet.inference.predictors import DygraphPredictor

    return DygraphPredictor(net, micro_batch=8)(batch)


def _calibration_set(options: ExportOptions, class_names: Sequence[str]) -> LabelledInputs:
    count = options.calibration_count
    if options.calibration_images is not None:
        return real_inputs(options.calibration_images, options.calibration_labels, options.crop, options.resize,
                           limit=count, class_names=class_names)
    logger.warning("no --calibration-images given: calibrating the INT8 ranges on %d synthetic X-rays; real "
                   "validation images (a few hundred) calibrate better", count)
    return generated_inputs(count, options.crop, options.resize, seed=1, class_names=class_names)


def _int8_check_set(options: ExportOptions, class_names: Sequence[str]) -> LabelledInputs:
    if options.images is not None and options.labels is not None:
        return real_inputs(options.images, options.labels, options.crop, options.resize, class_names=class_names)
    inputs = generated_inputs(200, options.crop, options.resize, seed=2, class_names=class_names)
    if inputs.labels is None:
        raise UserError("the INT8 check scores AUROC on labelled images: give --images DIR --labels LIST with "
                        f"labels of the model's classes ({', '.join(class_names)})")
    logger.warning("no --images/--labels given: the INT8 check runs on 200 labelled synthetic X-rays; give real "
                   "images with their label list to check it on them")
    return inputs


def export_bundle(
    weights: str | Path,
    output_dir: str | Path,
    options: ExportOptions | None = None,
    report: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``weights`` to ``output_dir`` (see the module docstring); verify and quantise as ``options`` say.

    Args:
        weights (str | Path): any weights file of the project (read through
            :func:`~paddle_chexnet.models.loading.load_network`).
        output_dir (str | Path): the folder to create.
        options (ExportOptions, optional): Default: ``ExportOptions()``.
        report (Callable[[str], None], optional): receives the verification tables as they are made.
            Default: None (logged).

    Raises:
        UserError: bad options, or a finished ``output_dir`` without ``overwrite``.
        ExportCheckError: a runtime differs from the dynamic graph beyond ``atol``, or the INT8 check
            failed; nothing is written.
        OnnxExportError: paddle2onnx failed.
    """
    from paddle_chexnet.inference import onnx_export
    from paddle_chexnet.inference.predictors import InferencePredictor
    from paddle_chexnet.models.loading import load_network
    from paddle_chexnet.utils.hashing import file_sha256

    options = options or ExportOptions()
    output_dir = Path(output_dir)
    check_options(options, output_dir)
    report = report or logger.info
    net = load_network(weights)
    spec = net.spec
    class_names = tuple(net.class_names)
    want_paddle = options.format in ("paddle", "both")
    want_onnx = options.format in ("onnx", "both")
    opset = options.opset or onnx_export.ONNX_OPSET

    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.resolve().parent))
    try:
        paddle_dir = staging if want_paddle else Path(tempfile.mkdtemp(dir=staging, prefix=".paddle-"))
        prefix = paddle_dir / MODEL_PREFIX
        export_model(net, prefix, options.crop)
        files: dict[str, Path] = {}
        if want_paddle:
            files["paddle_model"] = model_file(prefix)
            files["paddle_params"] = Path(f"{prefix}.pdiparams")
        if want_onnx:
            files["onnx"] = onnx_export.export_onnx(prefix, staging / ONNX_FILE, opset)

        runtimes = {}
        if want_paddle:
            runtimes["Paddle Inference (oneDNN)"] = InferencePredictor(prefix, num_threads=options.threads,
                                                                       class_names=class_names)
        if want_onnx:
            runtimes["ONNX Runtime"] = onnx_export.OnnxPredictor(files["onnx"], options.threads, class_names)
        rows: list[ComparisonRow] = []
        if options.verify:
            sets = [("synthetic", generated_inputs(options.generated, options.crop, options.resize,
                                                   class_names=class_names))]
            if options.images is not None:
                sets.append(("real", real_inputs(options.images, options.labels, options.crop, options.resize,
                                                 options.limit, class_names)))
            for label, inputs in sets:
                rows += compare(_reference(net, inputs.batch), runtimes, inputs.batch, label, options.atol)
            legend = "\n".join(f"  {label}: {inputs.source}" for label, inputs in sets)
            table = f"against the dynamic graph (Paddle, CPU):\n{format_comparison(rows)}\ninputs:\n{legend}"
            report(table)
            if not all(row.ok for row in rows):
                worst = max(rows, key=lambda r: r.max_abs_diff if r.max_abs_diff == r.max_abs_diff else np.inf)
                raise ExportCheckError(f"the exported model does not give the network's probabilities: "
                                       f"{worst.runtime} differs by {worst.max_abs_diff:.2e} (bound "
                                       f"{options.atol:.0e}); nothing was written")
        quantization = None
        if options.quantize == "int8":
            quantization = _quantize(options, staging, files, runtimes["ONNX Runtime"], class_names)
            report(quantization.format())
            if not quantization.passed:
                files.pop("onnx_int8", None)
                raise ExportCheckError(
                    f"the INT8 model fails its check (max per-class AUROC change {quantization.max_auroc_diff:.4f}, "
                    f"bound {quantization.bound}); nothing was written. Export without --quantize, or calibrate "
                    "on more real images")
        if not want_paddle:
            shutil.rmtree(paddle_dir)

        relative = {key: path.name for key, path in files.items()}
        extra = {
            "onnx_opset": opset if want_onnx else None,
            "quantization": None if quantization is None else {
                "type": "int8 static (onnxruntime quantize_static, QOperator, per-channel int8 weights, "
                        "uint8 activations, MinMax calibration; paddle_chexnet.inference.int8_graph edits)",
                "weight_bits": quantization.weight_bits,
                "calibration": quantization.calibration, "check": quantization.to_dict()},
            "source": {"weights": Path(weights).name, "sha256": file_sha256(weights)},
            "versions": _versions(want_onnx),
        }
        write_preprocess(staging, preprocess_record(spec, options.crop, options.resize, relative, extra))
        text = []
        if rows:
            text.append(table)
        if quantization is not None:
            text.append(quantization.format())
        if text:
            (staging / REPORT_FILE).write_text("\n\n".join(text) + "\n", encoding="utf-8")
        _publish(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    files = {key: output_dir / path.name for key, path in files.items()}
    files["preprocess"] = output_dir / "preprocess.json"
    return ExportResult(output_dir, files, rows, quantization)


def _versions(onnx: bool) -> dict[str, str]:
    versions = {"paddle": paddle.__version__}
    if onnx:
        import onnxruntime
        import paddle2onnx

        versions.update(paddle2onnx=paddle2onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def _quantize(options: ExportOptions, staging: Path, files: dict[str, Path], fp32, class_names):
    from paddle_chexnet.inference.onnx_export import OnnxPredictor
    from paddle_chexnet.inference.quantize import check_int8, default_weight_bits, quantize_onnx

    calibration = _calibration_set(options, class_names)
    checked = _int8_check_set(options, class_names)
    logger.info("quantising to INT8, calibrated on %s", calibration.source)
    bits = default_weight_bits() if options.int8_weight_bits is None else options.int8_weight_bits
    path = quantize_onnx(files["onnx"], staging / INT8_FILE, calibration.batch, weight_bits=bits)
    int8 = OnnxPredictor(path, options.threads, class_names)
    report = check_int8(fp32, int8, checked.batch, checked.labels, class_names, checked.source,
                        calibration.source, options.auroc_bound, weight_bits=bits)
    if report.passed:
        files["onnx_int8"] = path
    else:
        path.unlink()
    return report
