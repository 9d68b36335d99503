"""Compare two models' predictions on the same images: AUROC of each, paired bootstrap CI of the difference, DeLong.

`python tools/compare_models.py -h` lists the flags; the logic is in paddle_chexnet.cli.compare_models.
"""
import sys

from paddle_chexnet.cli.compare_models import entry

if __name__ == "__main__":
    sys.exit(entry())
