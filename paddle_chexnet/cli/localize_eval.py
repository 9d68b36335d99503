"""Score weakly supervised boxes against expert boxes: Wang et al.'s (CVPR 2017) localization table.

    python tools/localize_eval.py --weights W.pdparams \
        --bbox-csv BBox_List_2017.csv --data-dir ChestX-ray14/images [--cam gradcampp] [--output-dir OUT]

For every image in the box file, heatmaps of the boxed findings (the finding is
given, as in Wang et al.) are turned into boxes, and each expert box counts as
found at T when a box of its finding has IoU > T. Prints accuracy and average
false positives per finding for T(IoU) = 0.1 ... 0.7 and accuracy for T(IoBB);
``--output-dir`` also writes them as CSV/Markdown with the boxes.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.cli.heatmap_args import add_heatmap_box_arguments
from paddle_chexnet.localization.boxes import IOBB_THRESHOLDS, IOU_THRESHOLDS
from paddle_chexnet.localization.cam import METHODS

logger = logging.getLogger("localize_eval")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be in [0, 1), got {text!r}")
    return values


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Localization accuracy of CAM/Grad-CAM boxes against expert boxes (IoU and IoBB).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--weights", type=Path, required=True, help="a .pdparams file (architecture read from it)")
    parser.add_argument("--bbox-csv", "--bbox_csv", dest="bbox_csv", type=Path, required=True,
                        help="NIH's BBox_List_2017.csv (or the synthetic set's)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", type=Path, required=True,
                        help="folder holding the images (flat or NIH's images_0NN/images/ layout)")
    parser.add_argument("--cam", "--method", dest="method", choices=METHODS, default="cam", help="heatmap method")
    add_heatmap_box_arguments(parser)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="images per forward pass")
    parser.add_argument("--iou-thresholds", "--iou_thresholds", dest="iou_thresholds", type=_floats,
                        default=IOU_THRESHOLDS, help="T(IoU) values, comma-separated")
    parser.add_argument("--iobb-thresholds", "--iobb_thresholds", dest="iobb_thresholds", type=_floats,
                        default=IOBB_THRESHOLDS, help="T(IoBB) values, comma-separated")
    parser.add_argument("--image-list", "--image_list", dest="image_list", type=Path, default=None,
                        help="evaluate only the images named in the first column of this file (a CheXNet label "
                             "list such as labels/test_list.txt, or NIH's test_list.txt)")
    parser.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true",
                        help="evaluate the boxed images that are present instead of stopping at missing ones")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, default=None,
                        help="write localization.csv, localization.md, boxes.csv and bounding_box.txt here")
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    return parser


def run(args: argparse.Namespace):
    from tqdm import tqdm

    from paddle_chexnet.cli.predict import check_box_arguments
    from paddle_chexnet.data.datasets import index_images
    from paddle_chexnet.localization.boxes import (
        localization_accuracy,
        read_bbox_csv,
        write_boxes_csv,
        write_localization_txt,
    )
    from paddle_chexnet.localization.cam import resolve_layer
    from paddle_chexnet.localization.protocol import localize_known_findings
    from paddle_chexnet.models.loading import load_network
    from paddle_chexnet.models.state_dict import require_weights_file
    from paddle_chexnet.utils.device import prepare_device
    from paddle_chexnet.utils.io import atomic_write_text, ensure_output_dir

    check_box_arguments(args)
    require_weights_file(args.weights)
    if args.output_dir is not None:
        ensure_output_dir(args.output_dir)
    truths = read_bbox_csv(args.bbox_csv)
    if args.image_list is not None:
        if not args.image_list.is_file():
            raise FileNotFoundError(f"--image-list {args.image_list}: no such file")
        lines = args.image_list.read_text(encoding="utf-8-sig").splitlines()
        keep = {line.split()[0] for line in lines if line.split()}
        truths = {name: boxes for name, boxes in truths.items() if name in keep}
        logger.info("%d boxed images are in %s", len(truths), args.image_list)
    images = index_images(args.data_dir)
    missing = [name for name in truths if name not in images]
    if missing and args.skip_missing:
        logger.warning("%d of %d boxed images are not under %s; evaluating the other %d",
                       len(missing), len(truths), args.data_dir, len(truths) - len(missing))
        truths = {name: boxes for name, boxes in truths.items() if name in images}
    if not truths:
        raise FileNotFoundError(f"none of the images of {args.bbox_csv} is under {args.data_dir}")
    device = prepare_device(args.device)
    net = load_network(args.weights)
    logger.info("%d images with %d expert boxes; %s heatmaps on %s", len(truths),
                sum(len(b) for b in truths.values()), args.method, device)
    detected = localize_known_findings(
        net, truths, images, method=args.method, box_threshold=args.box_threshold, resize=args.resize,
        crop=args.crop or None, batch_size=args.batch_size, max_boxes=args.max_boxes,
        min_box_area=args.min_box_area, layer=None if args.layer is None else resolve_layer(net, args.layer),
        progress_factory=lambda total: tqdm(total=total, unit="img", disable=None),
    )
    report = localization_accuracy(detected, truths, args.iou_thresholds, args.iobb_thresholds)
    print(report.to_markdown(), end="")
    if args.output_dir is not None:
        atomic_write_text(args.output_dir / "localization.csv", report.to_csv())
        atomic_write_text(args.output_dir / "localization.md", report.to_markdown())
        write_boxes_csv(args.output_dir / "boxes.csv", detected)
        write_localization_txt(args.output_dir / "bounding_box.txt", detected)
        logger.info("table and boxes written to %s", args.output_dir)
    return report


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
