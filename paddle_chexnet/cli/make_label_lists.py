"""Write train/val/test label lists from NIH's own ChestX-ray14 files.

NIH ships ``Data_Entry_2017.csv`` (findings per image), ``train_val_list.txt``
and ``test_list.txt`` (its official, patient-level split). This tool turns them
into CheXNet label lists (``<image> <14 values of 0/1>``) and splits train_val
into train and val by patient (no patient in two lists), reproducibly from a seed.

Example:
    python tools/make_label_lists.py --data-entry Data_Entry_2017_v2020.csv.gz \
        --train-val-list train_val_list.txt --test-list test_list.txt \
        --output-dir ChestX-ray14/labels --val-fraction 0.125 --seed 0
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.data.label_lists import write_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.nih import nih_label_lists, read_nih_data_entry

LOG = logging.getLogger("make_label_lists")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="NIH Data_Entry_2017.csv + train_val_list.txt + test_list.txt -> CheXNet label lists, "
        "with a seeded patient-level train/val split.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data-entry", "--data_entry", default="ChestX-ray14/Data_Entry_2017.csv",
                        help="NIH's Data_Entry_2017.csv (or _v2020, .csv.gz is fine)")
    parser.add_argument("--train-val-list", "--train_val_list", default="ChestX-ray14/train_val_list.txt",
                        help="NIH's train_val_list.txt")
    parser.add_argument("--test-list", "--test_list", default="ChestX-ray14/test_list.txt",
                        help="NIH's test_list.txt")
    parser.add_argument("--output-dir", "--output_dir", default="ChestX-ray14/labels",
                        help="where train_list.txt, val_list.txt and test_list.txt are written")
    parser.add_argument("--val-fraction", "--val_fraction", type=float, default=0.125,
                        help="share of the train_val images (whole patients) that go to val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle")
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the three lists and print their sizes and positives per class."""
    entry = read_nih_data_entry(args.data_entry)
    patient_of = dict(zip(entry.names, entry.patient_ids.tolist()))
    lists = nih_label_lists(entry, args.train_val_list, args.test_list, args.val_fraction, args.seed)
    out = Path(args.output_dir)
    written = {}
    print(f"{'split':<6} {'images':>7} {'patients':>9}  positives per class ({', '.join(CLASS_NAMES)})")
    for split in ("train", "val", "test"):
        label_list = lists[split]
        path = out / f"{split}_list.txt"
        write_label_list(path, label_list)
        written[split] = path
        patients = len({patient_of[name] for name in label_list.names})
        positives = " ".join(str(int(v)) for v in label_list.labels.sum(axis=0))
        print(f"{split:<6} {len(label_list):>7} {patients:>9}  {positives}")
    print(f"wrote {', '.join(str(p) for p in written.values())} "
          f"(val: about {args.val_fraction} of the train_val images, whole patients, seed {args.seed})")
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
