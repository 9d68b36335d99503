"""Write a seeded synthetic ChestX-ray14-style data set with known lesion boxes.

Examples:
    python tools/make_synthetic.py                      # the quick-start demo set
    python tools/make_synthetic.py --num-images 200 --image-size 256 --seed 1 --output-dir /tmp/syn
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.synthetic import SPLITS, make_dataset

LOGGER = logging.getLogger("make_synthetic")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a synthetic data set in the ChestX-ray14 layout (PNG images, CheXNet label "
        "lists split by patient, BBox_List_2017.csv, Data_Entry_2017.csv). The same seed gives "
        "byte-identical files.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--output-dir", "--output_dir", default="demo/ChestX-ray14-synthetic",
                        help="folder to write (images/, labels/, CSVs)")
    parser.add_argument("--num-images", "--num_images", type=int, default=600, help="number of images")
    parser.add_argument("--image-size", "--image_size", type=int, default=128,
                        help="side of the square PNG images in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--val-fraction", "--val_fraction", type=float, default=0.2,
                        help="share of images (whole patients) in the validation list")
    parser.add_argument("--test-fraction", "--test_fraction", type=float, default=0.15,
                        help="share of images (whole patients) in the test list")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads drawing and writing images (default: min(4, CPUs)); does not change the output")
    return parser


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    dataset = make_dataset(
        args.output_dir,
        num_images=args.num_images,
        image_size=args.image_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{split} {len(dataset.split_records(split))}" for split in SPLITS)
    LOGGER.info("wrote %d images of %dx%d px to %s in %.1f s (%s)", len(dataset.records),
                args.image_size, args.image_size, dataset.root, seconds, sizes)
    train_positives = [sum(r.labels[i] for r in dataset.split_records("train")) for i in range(len(CLASS_NAMES))]
    LOGGER.info("train positives: %s", ", ".join(f"{n} {c}" for n, c in zip(CLASS_NAMES, train_positives)))
    LOGGER.info("label lists: %s", dataset.root / "labels")
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
