"""Score weakly supervised boxes against expert boxes: Wang et al.'s (CVPR 2017) localization table.

`python tools/localize_eval.py -h` lists the flags; the logic is in paddle_chexnet.cli.localize_eval.
"""
import sys

from paddle_chexnet.cli.localize_eval import entry

if __name__ == "__main__":
    sys.exit(entry())
