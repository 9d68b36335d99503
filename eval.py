"""Evaluate a CheXNet on ChestX-ray14: per-finding AUROC with the paper's ten-crop protocol.

Example:
    python eval.py --weights pretrained_models/chexnet.pdparams --data-dir ChestX-ray14 \
        --label-list ChestX-ray14/labels/test_list.txt --output-dir outputs/eval

Writes aucs.csv (with bootstrap intervals), preds.csv, roc_curves.png, metrics.json and
report.html to the output folder; `--preds preds.csv` scores a predictions file without a
network, `--choose-thresholds`, `--thresholds` and `--calibrate` add operating points and
calibration (docs/evaluation.md). All the logic is in paddle_chexnet.cli.evaluate;
`python eval.py -h` lists every flag.
"""
import sys

from paddle_chexnet.cli.evaluate import entry

if __name__ == "__main__":
    sys.exit(entry())
