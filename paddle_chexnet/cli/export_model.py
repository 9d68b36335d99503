"""Export a model for Paddle Inference and ONNX Runtime, verified against the network, optionally INT8.

    python tools/export_model.py --weights W.pdparams --output-dir DIR [--format paddle|onnx|both] [--crop 224]
        [--images DIR [--labels LIST]] [--quantize int8 [--calibration-images DIR]] [--no-verify] [--overwrite]

Writes ``DIR/model.json`` + ``model.pdiparams`` (Paddle Inference), ``DIR/model.onnx`` (opset 13),
``DIR/model.int8.onnx`` (``--quantize int8``), ``DIR/preprocess.json`` and ``DIR/verification.txt``
(see :mod:`paddle_chexnet.inference.bundle`). Exit 1 when a runtime differs from the dynamic graph beyond
``--atol`` or the INT8 check fails; nothing is written then.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.inference.bundle import FORMATS
from paddle_chexnet.inference.export_check import DEFAULT_ATOL
from paddle_chexnet.inference.quantize import AUROC_BOUND, DEFAULT_CALIBRATION_COUNT

logger = logging.getLogger("export_model")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a weights file for Paddle Inference and ONNX Runtime (probabilities out), "
                    "checked against the network; optionally quantised to INT8.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--weights", type=Path, required=True,
                        help="a .pdparams of this project (architecture and classes read from its .json)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True,
                        help="the export folder to create (written whole at the end)")
    parser.add_argument("--format", choices=FORMATS, default="both", help="which models to write")
    parser.add_argument("--crop", type=int, default=224, help="input height and width")
    parser.add_argument("--resize", type=int, default=256,
                        help="shorter side before the center crop (recorded in preprocess.json)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 13)")
    parser.add_argument("--no-verify", "--no_verify", dest="no_verify", action="store_true",
                        help="skip comparing the exported models with the dynamic graph")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help="largest probability difference allowed by the verification")
    parser.add_argument("--images", type=Path, default=None,
                        help="real images (a file or folder) to verify on, and to check INT8 on with --labels")
    parser.add_argument("--labels", type=Path, default=None,
                        help="a CheXNet label list of --images (the INT8 AUROC check runs on these)")
    parser.add_argument("--limit", type=int, default=32, help="verify on at most this many of --images (0: all)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="also write an INT8 ONNX model (post-training static quantisation)")
    parser.add_argument("--calibration-images", "--calibration_images", dest="calibration_images", type=Path,
                        default=None, help="validation images to calibrate INT8 on (default: synthetic X-rays)")
    parser.add_argument("--calibration-labels", "--calibration_labels", dest="calibration_labels", type=Path,
                        default=None, help="a label list choosing which of --calibration-images to use")
    parser.add_argument("--calibration-count", "--calibration_count", dest="calibration_count", type=int,
                        default=DEFAULT_CALIBRATION_COUNT, help="at most this many calibration images")
    parser.add_argument("--int8-auroc-bound", "--int8_auroc_bound", dest="auroc_bound", type=float,
                        default=AUROC_BOUND, help="largest per-class AUROC change of INT8 against fp32")
    parser.add_argument("--int8-weight-bits", "--int8_weight_bits", dest="int8_weight_bits", type=int, choices=(7, 8),
                        default=None, help="bits of the INT8 weights: 8 for processors with VNNI (AVX-512 VNNI, "
                        "AVX-VNNI, AMX), 7 for any (AVX2 cannot saturate) (default: 8 on a processor with VNNI, else 7)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the runtimes (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--verbose", action="store_true", help="log details (and tracebacks of errors)")
    return parser


def main(args: argparse.Namespace) -> int:
    from paddle_chexnet.inference.bundle import ExportOptions, check_options, export_bundle
    from paddle_chexnet.models.state_dict import require_weights_file
    from paddle_chexnet.utils.device import prepare_device

    options = ExportOptions(
        format=args.format, crop=args.crop, resize=args.resize, opset=args.opset, verify=not args.no_verify,
        atol=args.atol, images=args.images, labels=args.labels, limit=args.limit or None, quantize=args.quantize,
        calibration_images=args.calibration_images, calibration_labels=args.calibration_labels,
        calibration_count=args.calibration_count, auroc_bound=args.auroc_bound,
        int8_weight_bits=args.int8_weight_bits, overwrite=args.overwrite,
        threads=args.threads,
    )
    check_options(options, args.output_dir)  # before the weights are read
    require_weights_file(args.weights)
    prepare_device("cpu", args.threads)  # the reference runs on the CPU, like the runtimes it is compared with
    # an ExportCheckError is a UserError: run_command prints its one line and exits with 1
    result = export_bundle(args.weights, args.output_dir, options, report=print)
    for key, path in result.files.items():
        logger.info("%-14s %s", key, path)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
