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
import sys

from paddle_chexnet.cli.make_label_lists import entry

if __name__ == "__main__":
    sys.exit(entry())
