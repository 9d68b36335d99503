"""``tools/compare_models.py``: two models' predictions on the same images, class by class.

For each class and for the mean AUROC: the AUROC of each model, the difference
A - B with its paired percentile bootstrap interval (both models scored on the
same resampled patients), and DeLong's two-sided p-value for correlated ROC
curves. Writes ``OUT/comparison.csv`` (``label, auc_a, auc_b, diff, ci_low,
ci_high, p_delong``) and ``OUT/comparison.json`` (the same with the settings
and skip counts) and prints the table.

In ``comparison.csv``, ``nan`` marks a value that is undefined (a class with a
single label value) and an empty cell a value that is not computed: the
intervals with ``--bootstrap 0``, and ``p_delong`` of the ``Mean`` row, since
DeLong's test is defined per ROC curve (use the mean's bootstrap interval).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from paddle_chexnet.cli.common import HelpFormatter, UserError, run_command
from paddle_chexnet.data.label_lists import read_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Resampler,
    check_level,
    paired_bootstrap_auroc,
)
from paddle_chexnet.evaluation.delong import delong_test
from paddle_chexnet.evaluation.grouping import UNITS
from paddle_chexnet.evaluation.metrics import compute_auroc, mean_auroc
from paddle_chexnet.evaluation.predictions import align_predictions, check_same_images, read_predictions
from paddle_chexnet.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("label", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_delong")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_models.py",
        description="Compare two models' predictions on the same images: AUROC of each, the difference with "
                    "a paired bootstrap interval, and DeLong's p-value, per class and for the mean.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("preds_a", type=Path, help="model A's preds.csv (this project's or reproduce-chexnet's "
                                                   "'prob_<finding>' form)")
    parser.add_argument("preds_b", type=Path, help="model B's preds.csv, the same images")
    parser.add_argument("--label-list", type=Path, required=True, help="the labels of those images")
    parser.add_argument("--output-dir", type=Path, required=True, help="where comparison.csv/.json are written")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples for the interval of the difference; 0 turns it off")
    parser.add_argument("--bootstrap-unit", choices=UNITS, default="patient",
                        help="resample patients (read from NIH or CheXpert names) or single images")
    parser.add_argument("--ci-level", type=float, default=DEFAULT_LEVEL, help="coverage of the interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing comparison in OUTPUT_DIR")
    parser.add_argument("--verbose", action="store_true", help="debug logging, tracebacks of errors")
    return parser


def _num(value: float, digits: str = ".6f") -> str:
    return "nan" if math.isnan(value) else format(value, digits)


def _json(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def compare(args: argparse.Namespace) -> dict:
    """The comparison as a dict: ``rows`` (one per class, then ``Mean``) and ``settings``."""
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (off) or a number of resamples, got {args.bootstrap}")
    check_level(args.ci_level)
    a = read_predictions(args.preds_a)
    b = read_predictions(args.preds_b)
    check_same_images(a, b)
    label_list = read_label_list(args.label_list)
    set_a = align_predictions(a, label_list)
    set_b = align_predictions(b, label_list)
    labels = set_a.labels
    auc_a = compute_auroc(labels, set_a.scores, CLASS_NAMES)
    auc_b = compute_auroc(labels, set_b.scores, CLASS_NAMES, warn=False)
    mean_a, n_used = mean_auroc(auc_a)
    mean_b, _ = mean_auroc(auc_b)
    nan = np.full(len(CLASS_NAMES), np.nan)
    low, high, mean_low, mean_high = nan, nan, float("nan"), float("nan")
    skipped, mean_skipped = [0] * len(CLASS_NAMES), 0
    if args.bootstrap:
        resampler = Resampler.from_names(set_a.names, args.bootstrap_unit, args.bootstrap, args.seed)
        paired = paired_bootstrap_auroc(labels, set_a.scores, set_b.scores, resampler, CLASS_NAMES,
                                        args.ci_level, args.bootstrap_unit, warn=False)
        low, high = paired.diff.ci_low, paired.diff.ci_high
        mean_low, mean_high = paired.diff.mean_ci_low, paired.diff.mean_ci_high
        skipped, mean_skipped = [int(s) for s in paired.diff.skipped], paired.diff.mean_skipped
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        test = delong_test(labels[:, c], set_a.scores[:, c], set_b.scores[:, c])
        rows.append({"label": name, "auc_a": auc_a[c], "auc_b": auc_b[c], "diff": auc_a[c] - auc_b[c],
                     "ci_low": low[c], "ci_high": high[c], "p_delong": test.p_value, "skipped": skipped[c]})
    rows.append({"label": "Mean", "auc_a": mean_a, "auc_b": mean_b, "diff": mean_a - mean_b, "ci_low": mean_low,
                 "ci_high": mean_high, "p_delong": None, "skipped": mean_skipped})
    settings = {"preds_a": str(args.preds_a), "preds_b": str(args.preds_b), "label_list": str(args.label_list),
                "images": len(set_a.names), "classes_in_mean": n_used, "bootstrap": args.bootstrap,
                "bootstrap_unit": args.bootstrap_unit, "ci_level": args.ci_level, "seed": args.seed,
                "p_delong_mean": "not computed: DeLong's test is per ROC curve; see the mean's interval"}
    return {"rows": rows, "settings": settings}


def comparison_csv(rows: list[dict], with_ci: bool) -> str:
    """``comparison.csv`` text: :data:`COLUMNS`, one row per class and ``Mean``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        p = row["p_delong"]
        writer.writerow([
            row["label"], _num(row["auc_a"]), _num(row["auc_b"]), _num(row["diff"]),
            _num(row["ci_low"]) if with_ci else "", _num(row["ci_high"]) if with_ci else "",
            "" if p is None else _num(p, ".6g"),
        ])
    return buffer.getvalue()


def format_comparison(rows: list[dict], level: float, with_ci: bool) -> str:
    """The printed table."""
    width = max(len(r["label"]) for r in rows)
    ci_head = f"{level * 100:g}% CI of diff" if with_ci else ""
    lines = [f"{'Finding':<{width}}  AUROC A  AUROC B     diff  {ci_head:<19}  p (DeLong)"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        ci = f"[{_num(row['ci_low'], '+.4f')}, {_num(row['ci_high'], '+.4f')}]" if with_ci else ""
        p = "" if row["p_delong"] is None else _num(row["p_delong"], ".3g")
        if row["label"] == "Mean":
            lines.append("-" * len(lines[0]))
        lines.append(f"{row['label']:<{width}}  {_num(row['auc_a'], '.4f'):>7}  {_num(row['auc_b'], '.4f'):>7}  "
                     f"{_num(row['diff'], '+.4f'):>7}  {ci:<19}  {p}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    csv_path, json_path = out / "comparison.csv", out / "comparison.json"
    if not args.overwrite and (csv_path.exists() or json_path.exists()):
        raise UserError(f"{csv_path} already exists; pass --overwrite to replace it or choose another --output-dir")
    result = compare(args)
    with_ci = args.bootstrap > 0
    atomic_write_text(csv_path, comparison_csv(result["rows"], with_ci))
    json_rows = [{k: (v if isinstance(v, (str, int)) or v is None else _json(v)) for k, v in row.items()}
                 for row in result["rows"]]
    atomic_write_text(json_path, json.dumps({"settings": result["settings"], "rows": json_rows}, indent=2) + "\n")
    print(f"A: {args.preds_a}\nB: {args.preds_b}\n{result['settings']['images']} images, "
          + (f"{args.bootstrap} paired resamples of {args.bootstrap_unit}s (seed {args.seed})" if with_ci
             else "no bootstrap"))
    print(format_comparison(result["rows"], args.ci_level, with_ci))
    logger.info("wrote %s and %s", csv_path, json_path)
    return 0


def entry(argv=None) -> int:
    return run_command(get_args_parser, main, argv)
