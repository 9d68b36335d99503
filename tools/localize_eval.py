"""Score weakly supervised boxes against expert boxes: Wang et al.'s (CVPR 2017) localization table.

    python tools/localize_eval.py --weights W.pdparams \
        --bbox-csv BBox_List_2017.csv --data-dir ChestX-ray14/images [--cam gradcampp] [--output-dir OUT]

For every image in the box file, heatmaps of the boxed findings (the finding is
given, as in Wang et al.) are turned into boxes, and each expert box counts as
found at T when a box of its finding has IoU > T. Prints accuracy and average
false positives per finding for T(IoU) = 0.1 ... 0.7 and accuracy for T(IoBB);
``--output-dir`` also writes them as CSV/Markdown with the boxes.
"""
import sys

from paddle_chexnet.cli.localize_eval import entry

if __name__ == "__main__":
    sys.exit(entry())
