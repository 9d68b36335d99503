"""Export a model for Paddle Inference and ONNX Runtime, verified against the network; optionally INT8.

Examples:
    python tools/export_model.py --weights outputs/demo/best.pdparams --output-dir exported/demo
    python tools/export_model.py --weights W.pdparams --output-dir DIR --format onnx --crop 224 \
        --images ChestX-ray14/images --labels ChestX-ray14/labels/val_list.txt
    python tools/export_model.py --weights W.pdparams --output-dir DIR --quantize int8 \
        --calibration-images ChestX-ray14/images --calibration-labels ChestX-ray14/labels/val_list.txt \
        --images ChestX-ray14/images --labels ChestX-ray14/labels/test_list.txt

`python tools/export_model.py -h` lists every flag; docs/export.md explains the files.
"""
import sys

from paddle_chexnet.cli.export_model import entry

if __name__ == "__main__":
    sys.exit(entry())
