"""Write a seeded synthetic ChestX-ray14-style data set with known lesion boxes.

Examples:
    python tools/make_synthetic.py                      # the quick-start demo set
    python tools/make_synthetic.py --num-images 200 --image-size 256 --seed 1 --output-dir /tmp/syn
"""
import sys

from paddle_chexnet.cli.make_synthetic import entry

if __name__ == "__main__":
    sys.exit(entry())
