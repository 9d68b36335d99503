"""Evaluation outputs: the printed table, ``aucs.csv``, ``preds.csv``, ``metrics.json``, ROC plots.

``aucs.csv`` is ``label,auc,ci_low,ci_high``: one row per class, then ``Mean``;
``nan`` marks an AUROC that is undefined (a class with one label value), an
empty cell an interval that was not computed (no bootstrap). ``metrics.json``
holds the mean and per-class AUROC, the run's settings and, when the statistics
of :mod:`~paddle_chexnet.evaluation.statistics` were computed, their results
(``bootstrap``, ``calibration``, ``thresholds_chosen``, ``operating_points``);
it is strict JSON (an undefined value is ``null``).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paddle_chexnet.utils.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from paddle_chexnet.evaluation.statistics import Statistics

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What an evaluation produced.

    Attributes:
        names (list[str]): image names, in evaluation order.
        class_names (tuple[str, ...]): the output columns.
        probs (numpy.ndarray): ``[N, C]`` probabilities (averaged over crops; float32 from the network,
            float64 once calibrated or read from a file).
        labels (numpy.ndarray): float32 ``[N, C]``.
        per_class (dict[str, float]): AUROC per class (NaN where a class has one label value).
        mean (float): mean AUROC over the defined classes.
        n_used (int): how many classes the mean covers.
        skipped (list[str]): listed images skipped as missing.
        crops (str): ``'ten'`` or ``'center'``.
        backend (str): the predictor's backend.
        seconds (float): wall time of loading + inference.
        files (dict[str, Path]): written outputs by kind.
        name_column (str): the first column of ``preds.csv``: ``Image Index`` (NIH) or ``Path`` (CheXpert).
        statistics (Statistics, optional): intervals, calibration, operating points
            (:func:`~paddle_chexnet.evaluation.statistics.run_statistics`). Default: None.
        details (dict): further facts for ``metrics.json`` (the predictions file, the label list,
            whether the probabilities are calibrated). Default: {}.
    """

    names: list[str]
    class_names: tuple[str, ...]
    probs: np.ndarray
    labels: np.ndarray
    per_class: dict[str, float]
    mean: float
    n_used: int
    skipped: list[str] = field(default_factory=list)
    crops: str = "ten"
    backend: str = ""
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)
    name_column: str = "Image Index"
    statistics: Statistics | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.names) / self.seconds if self.seconds > 0 else float("nan")

    def table(self) -> str:
        """The per-class AUROC table and the mean (with their intervals when bootstrapped), as ``eval.py`` prints."""
        if self.statistics is None:
            return format_table(self.per_class, self.mean, self.n_used)
        table = (self.statistics.bootstrap.table() if self.statistics.bootstrap is not None
                 else format_table(self.per_class, self.mean, self.n_used))
        return "\n".join([table, *self.statistics.summary_lines()])

    def metrics(self) -> dict[str, Any]:
        """The ``metrics.json`` object (NaN as ``None``)."""
        summary = {
            "mean_auroc": _json_number(self.mean),
            "classes_in_mean": self.n_used,
            "per_class": {k: _json_number(v) for k, v in self.per_class.items()},
            "images": len(self.names),
            "skipped": len(self.skipped),
            "crops": self.crops or None,
            "backend": self.backend or None,
            "seconds": round(self.seconds, 3),
            "images_per_second": _json_number(round(self.images_per_second, 4)),
        }
        summary.update(self.details)
        if self.statistics is not None:
            summary.update(self.statistics.to_metrics())
        return summary


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else float(value)


def format_table(per_class: dict[str, float], mean: float, n_used: int) -> str:
    """CheXNet reference style: the average first, then one line per finding."""
    width = max(len(name) for name in per_class)
    lines = [f"The average AUROC is {mean:.3f} (over {n_used} of {len(per_class)} classes)"]
    lines += [f"{'Finding':<{width}}  AUROC", f"{'-' * width}  ------"]
    for name, auc in per_class.items():
        lines.append(f"{name:<{width}}  {'   n/a' if math.isnan(auc) else f'{auc:.4f}'}")
    lines.append(f"{'-' * width}  ------")
    lines.append(f"{'Mean':<{width}}  {mean:.4f}")
    return "\n".join(lines)


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_outputs(result: EvalResult, output_dir: str | Path, plot: bool = True, preds: bool = True
                  ) -> dict[str, Path]:
    """Write ``aucs.csv``, ``preds.csv``, ``metrics.json``, ``roc_curves.png`` (and ``skipped.txt``).

    Args:
        result (EvalResult): what to write; with ``result.statistics`` the intervals and the
            statistics' keys of ``metrics.json`` are written too.
        output_dir (str | Path): the folder.
        plot (bool, optional): draw ``roc_curves.png``. Default: True.
        preds (bool, optional): write ``preds.csv`` (not when scoring that very file). Default: True.
    """
    from paddle_chexnet.evaluation.statistics import auc_rows, dumps

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"aucs": out / "aucs.csv", "metrics": out / "metrics.json"}
    rows = result.statistics.csv_rows() if result.statistics is not None else auc_rows(result.per_class, result.mean)
    atomic_write_text(files["aucs"], _csv_text(rows))
    if preds:
        files["preds"] = out / "preds.csv"
        # float32 network outputs need 8 digits; calibrated (float64) ones more, so no two are rounded together
        digits = 8 if np.asarray(result.probs).dtype == np.float32 else 12
        pred_rows = [[result.name_column, *result.class_names]]
        pred_rows += [[name, *(f"{p:.{digits}g}" for p in row)] for name, row in zip(result.names, result.probs)]
        atomic_write_text(files["preds"], _csv_text(pred_rows))
    atomic_write_text(files["metrics"], dumps(result.metrics()))
    if result.skipped:
        files["skipped"] = out / "skipped.txt"
        atomic_write_text(files["skipped"], "\n".join(result.skipped) + "\n")
    if plot:
        files["roc"] = out / "roc_curves.png"
        plot_roc_curves(result, files["roc"])
    return files


def plot_roc_curves(result: EvalResult, path: str | Path) -> None:
    """One ROC panel per class (AUROC in the title), saved as a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    n = len(result.class_names)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for c, name in enumerate(result.class_names):
        ax = axes[c // cols][c % cols]
        auc = result.per_class[name]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if not math.isnan(auc):
            known = ~np.isnan(result.labels[:, c])  # unknown labels (CheXpert's ignored ones) are left out
            fpr, tpr, _ = roc_curve(result.labels[known, c], result.probs[known, c])
            ax.plot(fpr, tpr, lw=1.5)
        ax.set_title(f"{name}\nAUROC {auc:.3f}" if not math.isnan(auc) else f"{name}\nAUROC n/a", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        if c % cols == 0:
            ax.set_ylabel("true positive rate", fontsize=8)
        if c // cols == rows - 1:
            ax.set_xlabel("false positive rate", fontsize=8)
    for c in range(n, rows * cols):
        axes[c // cols][c % cols].axis("off")
    how = f"{result.crops}-crop, " if result.crops else ""
    fig.suptitle(f"ROC, {how}{len(result.names)} images, mean AUROC {result.mean:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
