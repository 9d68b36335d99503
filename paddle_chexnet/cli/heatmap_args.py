"""Command-line options that ``tools/predict.py`` and ``tools/localize_eval.py`` share."""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_heatmap_box_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options ``tools/predict.py`` and ``tools/localize_eval.py`` share, so their defaults agree.

    ``--box-threshold``, ``--max-boxes``, ``--min-box-area`` (how boxes are cut from a heatmap),
    ``--resize``, ``--crop`` (the network input) and ``--layer`` (where Grad-CAM looks).
    """
    parser.add_argument("--box-threshold", "--box_threshold", dest="box_threshold", type=float, default=0.5,
                        help="heatmap threshold as a fraction of the map's maximum")
    parser.add_argument("--max-boxes", "--max_boxes", dest="max_boxes", type=int, default=None,
                        help="keep at most this many boxes per finding and image (highest first)")
    parser.add_argument("--min-box-area", "--min_box_area", dest="min_box_area", type=float, default=0.0,
                        help="drop boxes smaller than this fraction of the image area")
    parser.add_argument("--resize", type=int, default=256, help="shorter side of the network input")
    parser.add_argument("--crop", type=int, default=0,
                        help="center crop of the network input; 0 feeds the whole resized image so heatmaps "
                             "cover every pixel")
    parser.add_argument("--layer", default=None,
                        help="layer for gradcam/gradcampp (a child of net.features, e.g. denseblock4); "
                             "default: the last feature map")
