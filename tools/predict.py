"""Predict findings for X-rays, with heatmap overlays and boxes.

`python tools/predict.py -h` lists the flags; the logic is in paddle_chexnet.cli.predict.
"""
import sys

from paddle_chexnet.cli.predict import entry

if __name__ == "__main__":
    sys.exit(entry())
