"""Write train/val/test label lists from NIH's own ChestX-ray14 files.

`python tools/make_label_lists.py -h` lists the flags; the logic is in paddle_chexnet.cli.make_label_lists.
"""
import sys

from paddle_chexnet.cli.make_label_lists import entry

if __name__ == "__main__":
    sys.exit(entry())
