"""Predict findings for X-rays, with heatmap overlays and boxes.

    python tools/predict.py IMAGE_OR_FOLDER --weights W.pdparams --output-dir OUT \
        [--cam cam|gradcam|gradcampp|pcam] [--threshold 0.5 | --threshold thresholds.json]

Reads PNG, JPEG and DICOM (``.dcm``, or any file with DICOM's ``DICM`` magic).
Writes ``OUT/predictions.csv``, ``OUT/predictions.txt``, ``OUT/boxes.csv``,
``OUT/bounding_box.txt`` and ``OUT/heatmaps/<image>_<finding>.png`` for each
finding at or above its threshold.

Without ``--threshold``, the thresholds stored in the weights' sidecar are used
(``eval.py --choose-thresholds RULE --save-to-weights``; the log and
``predictions.txt`` name the rule), else 0.5. Temperatures stored there
(``eval.py --calibrate --save-to-weights``) make every probability printed the
calibrated one.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.cli.heatmap_args import add_heatmap_box_arguments
from paddle_chexnet.localization.cam import METHODS

logger = logging.getLogger("predict")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="CheXNet probabilities, heatmaps and boxes for an image or a folder of images.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("input", type=Path, help="an image (PNG, JPEG, DICOM) or a folder searched at any depth")
    parser.add_argument("--weights", type=Path, required=True, help="a .pdparams file (architecture read from it)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True,
                        help="folder for predictions.csv/.txt, boxes.csv, bounding_box.txt and heatmaps/")
    parser.add_argument("--cam", "--method", dest="method", choices=METHODS, default="cam",
                        help="heatmap method: CAM, Grad-CAM, Grad-CAM++, or PCAM (the probability maps of a "
                             "network trained with --pooling pcam)")
    parser.add_argument("--threshold", "--thresholds", dest="threshold", default=None,
                        help="probability threshold for positive calls, overlays and boxes: a number, or a .json "
                             "({finding: value, 'default': value}; eval.py's thresholds.json) or .csv "
                             "(finding,threshold) file (default: the thresholds in the weights' sidecar, else 0.5)")
    add_heatmap_box_arguments(parser)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="images per forward pass")
    parser.add_argument("--alpha", type=float, default=0.4, help="weight of the heatmap colours in overlays")
    parser.add_argument("--no-overlays", "--no_overlays", dest="no_overlays", action="store_true",
                        help="write no heatmap PNGs (probabilities and boxes only)")
    parser.add_argument("--skip-unreadable", "--skip_unreadable", dest="skip_unreadable", action="store_true",
                        help="log and skip files that cannot be read (e.g. DICOM reports without pixels) "
                             "instead of stopping at the first")
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    parser.add_argument("--quiet", action="store_true", help="do not print the table of probabilities")
    return parser


def check_box_arguments(args: argparse.Namespace) -> None:
    """The checks ``tools/predict.py`` and ``tools/localize_eval.py`` share, made before any work."""
    from paddle_chexnet.errors import UserError

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.box_threshold <= 1.0:
        raise UserError(f"--box-threshold must be in [0, 1] (a fraction of the map's maximum), got "
                        f"{args.box_threshold}")
    if args.layer is not None and args.method == "cam":
        raise UserError("--layer applies to --cam gradcam and gradcampp; CAM uses the last feature map")
    if args.resize < 1 or args.crop < 0 or args.crop > args.resize:
        raise UserError(f"--resize must be at least 1 and --crop between 0 and --resize, got --resize {args.resize} "
                        f"--crop {args.crop}")


SKIP_HINT = "--skip-unreadable logs and skips such files"


def check_inputs(paths: list[Path], skip_unreadable: bool, input_size: int) -> list[Path]:
    """Read every input's header before the model is loaded: unreadable files and tiny images are found first.

    Returns:
        list[Path]: the readable files (all of them unless ``skip_unreadable``).

    Raises:
        ImageReadError: a file whose header cannot be read, without ``skip_unreadable`` (the message says it).
    """
    from paddle_chexnet.data.images import (
        SMALL_IMAGE_FRACTION,
        ImageReadError,
        image_size,
        read_xray,
        small_images_message,
    )

    readable, small = [], []
    for path in paths:
        size = image_size(path)
        if size is None:
            try:  # only for the rare bad file: reading it whole gives the precise reason
                read_xray(path)
                reason = f"cannot read the header of {path}"
            except ImageReadError as exc:
                reason = str(exc)
            if not skip_unreadable:
                raise ImageReadError(f"{reason}; {SKIP_HINT}")
            continue  # predict() skips and reports it
        readable.append(path)
        if min(size) < SMALL_IMAGE_FRACTION * input_size:
            small.append((path, size))
    if small:
        logger.warning("%s", small_images_message(small, len(paths), input_size))
    return readable


def decision_settings(threshold: str | None, weights: str | Path, spec) -> tuple[np.ndarray, np.ndarray | None,
                                                                             list[str]]:
    """The thresholds, the temperatures (or None) and the notes for ``predictions.txt``.

    ``threshold`` (the ``--threshold`` flag) wins; without it the sidecar's thresholds are used,
    else 0.5. The sidecar's temperatures are always applied.

    Raises:
        ValueError: a bad ``--threshold`` or malformed thresholds or temperatures in the sidecar.
    """
    from paddle_chexnet.localization.predict import read_thresholds
    from paddle_chexnet.models.spec import sidecar_path

    sidecar = sidecar_path(weights)
    notes = []
    stored = spec.threshold_values(f"{sidecar}: thresholds")
    if threshold is not None:
        thresholds = read_thresholds(threshold, spec.class_names)
    elif stored is not None:
        thresholds = np.asarray(stored)
        notes.append(f"thresholds: {spec.threshold_rule or 'unnamed'} rule, from {sidecar.name}")
        logger.info("calling findings positive at the thresholds in %s (chosen by the %s rule)", sidecar,
                    spec.threshold_rule or "unnamed")
    else:
        thresholds = read_thresholds(0.5, spec.class_names)
    temperatures = spec.temperature_values(f"{sidecar}: temperatures")
    if temperatures is not None:
        notes.append(f"probabilities: calibrated by the per-finding temperatures in {sidecar.name}")
        logger.info("probabilities calibrated by the temperatures in %s", sidecar)
    return thresholds, None if temperatures is None else np.asarray(temperatures), notes


def run(args: argparse.Namespace):
    from tqdm import tqdm

    from paddle_chexnet.data.images import ImageReadError, list_images
    from paddle_chexnet.localization.cam import resolve_layer
    from paddle_chexnet.localization.predict import PredictOptions, predict
    from paddle_chexnet.models.loading import load_network, network_spec
    from paddle_chexnet.utils.device import prepare_device
    from paddle_chexnet.utils.io import ensure_output_dir

    check_box_arguments(args)
    spec = network_spec(args.weights)  # the weights' classes, to check thresholds before anything is loaded
    thresholds, temperatures, notes = decision_settings(args.threshold, args.weights, spec)
    inputs = check_inputs(list_images(args.input), args.skip_unreadable, args.crop or args.resize)
    if not inputs:
        raise ImageReadError(f"none of the files under {args.input} can be read as an image")
    ensure_output_dir(args.output_dir)
    device = prepare_device(args.device)
    net = load_network(args.weights)
    options = PredictOptions(
        method=args.method,
        thresholds=thresholds,
        box_threshold=args.box_threshold,
        resize=args.resize,
        crop=args.crop or None,
        batch_size=args.batch_size,
        max_boxes=args.max_boxes,
        min_box_area=args.min_box_area,
        layer=None if args.layer is None else resolve_layer(net, args.layer),
        overlays=not args.no_overlays,
        alpha=args.alpha,
        skip_unreadable=args.skip_unreadable,
        temperatures=temperatures,
        notes=tuple(notes),
    )
    logger.info("weights %s (%s) on %s, %s heatmaps", args.weights, spec.arch, device, args.method)
    try:
        result = predict(net, args.input, args.output_dir, options,
                         progress_factory=lambda total: tqdm(total=total, unit="img", disable=None))
    except ImageReadError as exc:
        raise ImageReadError(f"{exc}; {SKIP_HINT}") from exc
    if not args.quiet:
        print(result.files["predictions_txt"].read_text(encoding="utf-8"), end="")
    logger.info("%d image(s), %d overlay(s), %d box(es); results in %s", len(result.predictions),
                len(result.overlays), sum(len(b) for b in result.boxes.values()), args.output_dir)
    if result.skipped:
        logger.warning("%d unreadable file(s) skipped: %s", len(result.skipped),
                       ", ".join(str(p) for p in result.skipped[:5]))
    return result


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
