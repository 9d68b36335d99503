"""Everything ``eval.py`` computes once the probabilities exist, and the files it writes from them.

From image names, labels and probabilities (a network's, or a ``preds.csv``
read by :mod:`~paddle_chexnet.evaluation.predictions`) :func:`compute_statistics` gives:

* the AUROC of each class and of the mean with percentile bootstrap intervals
  (:func:`~paddle_chexnet.evaluation.bootstrap.bootstrap_auroc`, patients or images resampled);
* the expected calibration error of each class over equal-width probability bins
  (:mod:`~paddle_chexnet.evaluation.calibration`; :data:`~paddle_chexnet.evaluation.calibration.DEFAULT_BINS`
  bins unless told otherwise) and the reliability diagrams;
* optionally, per-class temperatures fitted on these images (``--calibrate``);
* optionally, per-class thresholds chosen on these images by a rule (``--choose-thresholds``),
  or the operating points of given thresholds (``--thresholds``, or those stored in the weights),
  each rate with its bootstrap interval over the same resamples as the AUROC;
* the pointwise bootstrap band of each ROC curve, for the report.

:func:`run_statistics` attaches them to an :class:`~paddle_chexnet.evaluation.reports.EvalResult`
and writes every output: ``aucs.csv`` (``label,auc,ci_low,ci_high`` and a ``Mean`` row),
``metrics.json``, ``thresholds.json``, ``operating_points.csv``, ``calibration.json`` and
``report.html``.

When temperatures are fitted in the same run as thresholds are chosen, the thresholds are
chosen on the calibrated probabilities (the ones ``tools/predict.py`` compares with them once
both are stored in the weights); every other output describes the probabilities as
evaluated (``preds.csv``), and ``calibration.json`` gives the calibration error before and after.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from paddle_chexnet.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    BootstrapResult,
    Resampler,
    bootstrap_auroc,
    bootstrap_roc_band,
    check_level,
)
from paddle_chexnet.evaluation.calibration import (
    DEFAULT_BINS,
    Reliability,
    TemperatureScaling,
    apply_temperature,
    fit_temperatures,
    reliability_per_class,
    write_calibration,
)
from paddle_chexnet.evaluation.grouping import UNITS
from paddle_chexnet.evaluation.metrics import compute_auroc, mean_auroc
from paddle_chexnet.evaluation.operating_points import (
    OperatingPoints,
    ThresholdChoice,
    choose_thresholds,
    operating_points,
    parse_rule,
    write_operating_points,
    write_thresholds,
)

if TYPE_CHECKING:
    from paddle_chexnet.evaluation.html_report import ReportData
    from paddle_chexnet.evaluation.reports import EvalResult

BINNING = "equal-width bins of the predicted probability over [0, 1], the last one closed"


@dataclass
class StatisticsOptions:
    """What :func:`compute_statistics` computes (the flags of ``eval.py``'s "statistics" group).

    Attributes:
        bootstrap (int): resamples of the bootstrap; 0 computes no interval. Default: 1000.
        ci_level (float): coverage of the intervals. Default: 0.95.
        unit (str): ``'patient'`` (read from the image names) or ``'image'``. Default: 'patient'.
        seed (int): seed of the resamples. Default: 0.
        ece_bins (int): equal-width bins of the calibration error. Default: 10.
        choose_rule (str, optional): choose thresholds on these images by this rule
            (``youden``, ``f1``, ``sensitivity=X``, ``specificity=X``). Default: None.
        thresholds (Sequence[float], optional): thresholds (class order) whose operating points
            are wanted. Default: None.
        threshold_rule (str): the rule that made ``thresholds``, for the outputs. Default: 'unknown'.
        threshold_source (str): where ``thresholds`` came from, for the outputs. Default: ''.
        calibrate (bool): fit per-class temperatures on these images. Default: False.
        roc_band (bool): compute the ROC bands (for the report). Default: True.
    """

    bootstrap: int = DEFAULT_RESAMPLES
    ci_level: float = DEFAULT_LEVEL
    unit: str = "patient"
    seed: int = 0
    ece_bins: int = DEFAULT_BINS
    choose_rule: str | None = None
    thresholds: Sequence[float] | None = None
    threshold_rule: str = "unknown"
    threshold_source: str = ""
    calibrate: bool = False
    roc_band: bool = True

    def check(self) -> StatisticsOptions:
        """``self`` if every value is usable, else a ``ValueError`` naming the flag."""
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must be 0 (no intervals) or a number of resamples, got {self.bootstrap}")
        try:
            check_level(self.ci_level)
        except ValueError as exc:
            raise ValueError(f"--ci-level: {exc}") from None
        if self.unit not in UNITS:
            raise ValueError(f"--bootstrap-unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.ece_bins < 1:
            raise ValueError(f"--ece-bins must be at least 1, got {self.ece_bins}")
        if self.choose_rule is not None:
            try:
                parse_rule(self.choose_rule)
            except ValueError as exc:
                raise ValueError(f"--choose-thresholds: {exc}") from None
            if self.thresholds is not None:
                raise ValueError("--choose-thresholds chooses thresholds on a validation list and --thresholds "
                                 "applies chosen ones to a test list: give one of them per run")
        return self


@dataclass
class Statistics:
    """What :func:`compute_statistics` found.

    Attributes:
        class_names (tuple[str, ...]): the classes.
        auroc (numpy.ndarray): ``[C]`` AUROC (NaN where a class has one label value).
        mean (float): the mean AUROC over the defined classes.
        n_used (int): classes in the mean.
        bootstrap (BootstrapResult | None): the intervals (None with ``bootstrap=0``).
        reliability (list[Reliability] | None): one per class (None when the scores are not
            probabilities in [0, 1]).
        ece_bins (int): bins of the calibration error.
        calibration (TemperatureScaling | None): temperatures fitted on these images.
        chosen (ThresholdChoice | None): thresholds chosen on these images.
        chosen_calibrated (bool): ``chosen`` was chosen on the probabilities after ``calibration``.
        operating_points (OperatingPoints | None): rates at the given or chosen thresholds.
        operating_source (str): where their thresholds came from.
        roc_band (tuple | None): ``(fpr_grid, low, high)`` for the report.
        options (StatisticsOptions): the settings.
    """

    class_names: tuple[str, ...]
    auroc: np.ndarray
    mean: float
    n_used: int
    bootstrap: BootstrapResult | None = None
    reliability: list[Reliability] | None = None
    ece_bins: int = DEFAULT_BINS
    calibration: TemperatureScaling | None = None
    chosen: ThresholdChoice | None = None
    chosen_calibrated: bool = False
    operating_points: OperatingPoints | None = None
    operating_source: str = ""
    roc_band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    options: StatisticsOptions = field(default_factory=StatisticsOptions)

    @property
    def ece(self) -> np.ndarray | None:
        """``[C]`` expected calibration error per class, or None."""
        return None if self.reliability is None else np.array([r.ece for r in self.reliability])

    def per_class(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.class_names, self.auroc)}

    def csv_rows(self) -> list[list[str]]:
        """``aucs.csv``: ``label, auc, ci_low, ci_high`` per class and ``Mean``; empty intervals without bootstrap."""
        if self.bootstrap is not None:
            return self.bootstrap.csv_rows()
        return auc_rows(self.per_class(), self.mean)

    def summary_lines(self) -> list[str]:
        """What ``eval.py`` prints after the AUROC table."""
        lines = []
        ece = self.ece
        if ece is not None and not np.isnan(ece).all():
            lines.append(f"Expected calibration error ({self.ece_bins} equal-width bins): mean "
                         f"{np.nanmean(ece):.4f}, highest {self.class_names[int(np.nanargmax(ece))]} "
                         f"{np.nanmax(ece):.4f}")
        if self.calibration is not None:
            before, after = self.calibration.ece_before, self.calibration.ece_after
            lines.append(f"Temperatures fitted on these images: mean ECE {_nanmean(before):.4f} -> "
                         f"{_nanmean(after):.4f} on the same images"
                         + (f"; not fitted (one label value): {', '.join(self.calibration.not_fitted)}"
                            if self.calibration.not_fitted else ""))
        if self.chosen is not None:
            lines.append(f"Thresholds chosen by the {self.chosen.rule} rule on these images"
                         + (" (on the calibrated probabilities)" if self.chosen_calibrated else ""))
        if self.operating_points is not None:
            points = self.operating_points
            sens = points.rates["sensitivity"].estimate
            spec = points.rates["specificity"].estimate
            where = f", {self.operating_source}" if self.operating_source else ""
            lines.append(f"Operating points ({points.rule} thresholds{where}): mean sensitivity "
                         f"{_nanmean(sens):.3f}, mean specificity {_nanmean(spec):.3f}")
        return lines

    def to_metrics(self) -> dict:
        """The keys ``metrics.json`` gains: ``bootstrap``, ``calibration``, ``thresholds``, ``operating_points``."""
        ece = self.ece
        calibration = {
            "bins": self.ece_bins, "binning": BINNING,
            "ece": None if ece is None else {n: _num(v) for n, v in zip(self.class_names, ece)},
            "mean_ece": None if ece is None or np.isnan(ece).all() else float(np.nanmean(ece)),
            "temperatures_fitted": None if self.calibration is None else self.calibration.to_dict(),
        }
        if ece is None:
            calibration["note"] = "scores outside [0, 1] are not probabilities: no calibration error"
        chosen = None
        if self.chosen is not None:
            chosen = {**self.chosen.to_dict(), "calibrated": self.chosen_calibrated}
        points = None
        if self.operating_points is not None:
            points = {**self.operating_points.to_dict(), "source": self.operating_source}
        return {
            "bootstrap": None if self.bootstrap is None else self.bootstrap.to_dict(),
            "calibration": calibration,
            "thresholds_chosen": chosen,
            "operating_points": points,
        }


def _num(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64) if values is not None else np.array([np.nan])
    return float("nan") if np.isnan(values).all() else float(np.nanmean(values))


def auc_rows(per_class: Mapping[str, float], mean: float) -> list[list[str]]:
    """``aucs.csv`` rows without intervals: ``label, auc, ci_low, ci_high`` with the interval cells empty."""
    def fmt(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.6f}"

    rows = [["label", "auc", "ci_low", "ci_high"]]
    rows += [[name, fmt(auc), "", ""] for name, auc in per_class.items()]
    rows.append(["Mean", fmt(mean), "", ""])
    return rows


def _is_probability(scores: np.ndarray) -> bool:
    return bool(scores.size == 0 or (scores.min() >= 0.0 and scores.max() <= 1.0))


def compute_statistics(
    names: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    options: StatisticsOptions | None = None,
    raw_probs: np.ndarray | None = None,
    warn: bool = False,
    source: str = "",
) -> Statistics:
    """The statistics of one scored set (see the module docstring).

    Args:
        names (Sequence[str]): image names (NIH or CheXpert form for ``unit='patient'``), row order.
        labels (numpy.ndarray): ``[N, C]`` of 0/1/NaN.
        probs (numpy.ndarray): ``[N, C]`` the probabilities evaluated (what ``preds.csv`` holds).
        class_names (Sequence[str]): one per column.
        options (StatisticsOptions, optional): what to compute. Default: None (the defaults).
        raw_probs (numpy.ndarray, optional): the network's probabilities before the temperatures
            of its sidecar were applied; ``calibrate`` fits on them, so the fitted temperatures
            replace the stored ones. Default: None (``probs``).
        warn (bool, optional): warn about classes whose AUROC is undefined. Default: False.
        source (str, optional): the label list, recorded in ``thresholds.json`` and ``calibration.json``.
            Default: ''.

    Returns:
        Statistics: every result.

    Raises:
        ValueError: bad options, names without a patient (``unit='patient'``), a class without a
            positive or a negative when thresholds are chosen, or scores outside [0, 1] with ``calibrate``.
    """
    options = (options or StatisticsOptions()).check()
    class_names = tuple(class_names)
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    resampler = None
    if options.bootstrap:
        resampler = Resampler.from_names(list(names), options.unit, options.bootstrap, options.seed)
    if resampler is not None:
        boot = bootstrap_auroc(labels, probs, resampler, class_names, options.ci_level, unit=options.unit, warn=warn)
        auroc, mean, n_used = boot.estimate, boot.mean, boot.n_used
    else:
        boot = None
        auroc = compute_auroc(labels, probs, class_names, warn=warn)
        mean, n_used = mean_auroc(auroc)
    probabilities = _is_probability(probs)
    reliability = reliability_per_class(labels, probs, options.ece_bins) if probabilities else None
    calibration = None
    fit_on = probs if raw_probs is None else np.asarray(raw_probs, dtype=np.float64)
    if options.calibrate:
        if not _is_probability(fit_on):
            raise ValueError("--calibrate needs probabilities in [0, 1]; these scores reach "
                             f"{fit_on.min():g} to {fit_on.max():g} (logits?)")
        calibration = fit_temperatures(labels, fit_on, class_names, options.ece_bins, source=source)
    chosen = None
    chosen_calibrated = False
    points, operating_source = None, ""
    if options.choose_rule is not None:
        scores = probs
        if calibration is not None:
            scores, chosen_calibrated = calibration.apply(fit_on), True
        chosen = choose_thresholds(labels, scores, options.choose_rule, class_names, source)
        points = operating_points(labels, scores, chosen.thresholds, resampler, class_names, options.ci_level,
                                  str(chosen.rule))
        operating_source = "chosen on these images, in-sample"
    elif options.thresholds is not None:
        thresholds = np.asarray(options.thresholds, dtype=np.float64)
        if thresholds.shape != (len(class_names),):
            raise ValueError(f"{thresholds.size} thresholds for {len(class_names)} classes")
        points = operating_points(labels, probs, thresholds, resampler, class_names, options.ci_level,
                                  options.threshold_rule)
        operating_source = options.threshold_source
    band = None
    if options.roc_band and resampler is not None:
        band = bootstrap_roc_band(labels, probs, resampler, level=options.ci_level)
    return Statistics(class_names, np.asarray(auroc, dtype=np.float64), float(mean), int(n_used), boot, reliability,
                      options.ece_bins, calibration, chosen, chosen_calibrated, points, operating_source, band, options)


def report_data(result: EvalResult, stats: Statistics, title: str = "",
                details: Mapping[str, str] | None = None) -> ReportData:
    """The :class:`~paddle_chexnet.evaluation.html_report.ReportData` of an evaluation and its statistics."""
    from paddle_chexnet.evaluation.html_report import ReportData

    return ReportData(result.class_names, result.labels, result.probs, stats.bootstrap, stats.roc_band,
                      stats.operating_points, stats.reliability, title or "paddle-chexnet evaluation",
                      dict(details or {}))


def run_statistics(
    result: EvalResult,
    output_dir: str | Path,
    options: StatisticsOptions | None = None,
    raw_probs: np.ndarray | None = None,
    plot: bool = False,
    preds: bool = True,
    report: bool = True,
    warn: bool = False,
    source: str = "",
    title: str = "",
    details: Mapping[str, str] | None = None,
) -> Statistics:
    """Compute the statistics of ``result``, attach them to it and write every output to ``output_dir``.

    Args:
        result (EvalResult): names, labels and probabilities (``result.probs``: what is evaluated).
        output_dir (str | Path): the folder.
        options (StatisticsOptions, optional): what to compute. Default: None.
        raw_probs (numpy.ndarray, optional): see :func:`compute_statistics`. Default: None.
        plot (bool, optional): (re)draw ``roc_curves.png``. Default: False.
        preds (bool, optional): (re)write ``preds.csv``. Default: True.
        report (bool, optional): write ``report.html``. Default: True.
        warn (bool, optional): warn about undefined classes. Default: False.
        source (str, optional): the label list, for the outputs. Default: ''.
        title (str, optional): the report's title. Default: ''.
        details (Mapping[str, str], optional): lines under the report's title. Default: None.

    Returns:
        Statistics: also set as ``result.statistics``; ``result.per_class``, ``mean`` and ``n_used``
        are those of ``result.probs``; ``result.files`` lists every file written.
    """
    from paddle_chexnet.evaluation.html_report import write_report
    from paddle_chexnet.evaluation.reports import write_outputs

    out = Path(output_dir)
    stats = compute_statistics(result.names, result.labels, result.probs, result.class_names, options, raw_probs,
                               warn, source)
    result.statistics = stats
    result.per_class, result.mean, result.n_used = stats.per_class(), stats.mean, stats.n_used
    files = dict(result.files)
    files.update(write_outputs(result, out, plot=plot, preds=preds))
    if stats.chosen is not None:
        files["thresholds"] = write_thresholds(out / "thresholds.json", stats.chosen,
                                               {"calibrated": stats.chosen_calibrated})
    if stats.operating_points is not None:
        files["operating_points"] = write_operating_points(out / "operating_points.csv", stats.operating_points)
    if stats.calibration is not None:
        files["calibration"] = write_calibration(out / "calibration.json", stats.calibration)
    if report:
        files["report"] = write_report(out / "report.html", report_data(result, stats, title, details))
    result.files = files
    return stats


def calibrated(probs: np.ndarray, temperatures: Sequence[float]) -> np.ndarray:
    """``probs`` through per-class temperatures, float64 (rounding to float32 could tie neighbours)."""
    return apply_temperature(probs, np.asarray(temperatures, dtype=np.float64))


def json_ready(value):
    """``value`` with NaN and infinity as ``None``, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dumps(value) -> str:
    """Strict JSON (no NaN), indented, with a final newline."""
    return json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n"
