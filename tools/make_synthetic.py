"""Write a seeded synthetic ChestX-ray14-style data set with known lesion boxes.

`python tools/make_synthetic.py -h` lists the flags; the logic is in paddle_chexnet.cli.make_synthetic.
"""
import sys

from paddle_chexnet.cli.make_synthetic import entry

if __name__ == "__main__":
    sys.exit(entry())
