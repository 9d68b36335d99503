"""Compare two models' predictions on the same images: AUROC of each, paired bootstrap CI of the difference, DeLong.

    python tools/compare_models.py A/preds.csv B/preds.csv --label-list LIST --output-dir OUT \
        [--bootstrap 1000] [--bootstrap-unit patient|image] [--ci-level 0.95] [--seed 0]

Reads this project's ``preds.csv`` and jrzech/reproduce-chexnet's (``prob_<finding>`` columns).
Writes ``OUT/comparison.csv`` (``label, auc_a, auc_b, diff, ci_low, ci_high, p_delong``) and
``OUT/comparison.json``, and prints the table.
"""
import sys

from paddle_chexnet.cli.compare_models import entry

if __name__ == "__main__":
    sys.exit(entry())
