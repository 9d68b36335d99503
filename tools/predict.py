"""Predict findings for X-rays, with heatmap overlays and boxes.

    python tools/predict.py IMAGE_OR_FOLDER --weights W.pdparams --output-dir OUT \
        [--cam cam|gradcam|gradcampp] [--threshold 0.5 | --threshold thresholds.json]

Reads PNG, JPEG and DICOM (``.dcm``, or any file with DICOM's ``DICM`` magic).
Writes ``OUT/predictions.csv``, ``OUT/predictions.txt``, ``OUT/boxes.csv``,
``OUT/bounding_box.txt`` and ``OUT/heatmaps/<image>_<finding>.png`` for each
finding at or above its threshold.
"""
import sys

from paddle_chexnet.cli.predict import entry

if __name__ == "__main__":
    sys.exit(entry())
