"""Operating points: per-class thresholds chosen on a validation set, and the rates they give on a test set.

A finding is called positive when its probability is **at or above** its
threshold (as ``tools/predict.py`` does). A threshold is chosen per class from
the validation scores by one of four rules (:func:`parse_rule`):

* ``youden``: maximise Youden's J = sensitivity + specificity - 1;
* ``f1``: maximise F1 = 2 TP / (2 TP + FP + FN);
* ``sensitivity=X``: the highest threshold whose sensitivity is at least X
  (so the best specificity with that sensitivity);
* ``specificity=X``: the lowest threshold whose specificity is at least X
  (so the best sensitivity with that specificity).

The candidates are the validation scores themselves, plus one just above the
highest (every image negative) unless that would exceed 1; among equally good
candidates the highest threshold wins. The choice is written to ``thresholds.json``::

    {"rule": "youden", "thresholds": {"Atelectasis": 0.123, ...},
     "validation": {"source": ..., "images": N, "per_class": {finding: {"sensitivity": ..., ...}}}}

which :func:`paddle_chexnet.localization.predict.read_thresholds` reads as is
(it takes the ``"thresholds"`` object). On a test set,
:func:`operating_points` gives sensitivity, specificity, PPV, NPV and F1 per
class, each with a percentile bootstrap interval over the same resamples as
the AUROC (:class:`~paddle_chexnet.evaluation.bootstrap.Resampler`); a rate
whose denominator is zero in a resample (for example PPV when nothing is
called positive) is skipped there and counted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label
from paddle_chexnet.evaluation.bootstrap import DEFAULT_LEVEL, Resampler, check_level, percentile_interval
from paddle_chexnet.utils.io import atomic_write_text, read_json_file

RULE_KINDS: tuple[str, ...] = ("youden", "f1", "sensitivity", "specificity")
METRICS: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "f1")
RULE_HELP = "youden, f1, sensitivity=X or specificity=X with X in (0, 1], e.g. sensitivity=0.95"

_RULE = re.compile(r"^\s*(sensitivity|specificity)\s*=\s*([0-9.eE+-]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds are chosen: ``kind`` in :data:`RULE_KINDS`, ``target`` for the two rate rules."""

    kind: str
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}={self.target:g}"


def parse_rule(text: str | ThresholdRule) -> ThresholdRule:
    """A :class:`ThresholdRule` from ``'youden'``, ``'f1'``, ``'sensitivity=0.95'`` or ``'specificity=0.9'``.

    Raises:
        ValueError: anything else; the message lists the accepted forms.

    Examples:
        >>> parse_rule("sensitivity=0.95")
        ThresholdRule(kind='sensitivity', target=0.95)
    """
    if isinstance(text, ThresholdRule):
        return text
    word = str(text).strip().lower()
    if word in ("youden", "f1"):
        return ThresholdRule(word)
    match = _RULE.match(word)
    if not match:
        raise ValueError(f"unknown threshold rule {text!r}; expected {RULE_HELP}")
    try:
        target = float(match.group(2))
    except ValueError:
        raise ValueError(f"threshold rule {text!r}: {match.group(2)!r} is not a number; expected "
                         f"{RULE_HELP}") from None
    if not 0.0 < target <= 1.0:
        raise ValueError(f"threshold rule {text!r}: the {match.group(1)} must lie in (0, 1], got {target:g}")
    return ThresholdRule(match.group(1), target)


def _rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """The five rates from confusion counts (arrays of any shape); NaN where a denominator is 0."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        def ratio(num, den):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

        return {
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
        }


def _candidates(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Descending candidate thresholds and the TP and FP at each (positive iff score >= threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order] == 1
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    if s[0] >= 1.0:  # no probability threshold lies above 1: no "every image negative" candidate
        return s[last_of_tie], tp, fp
    return np.r_[np.nextafter(s[0], np.inf), s[last_of_tie]], np.r_[0, tp], np.r_[0, fp]


def choose_threshold(labels, scores, rule: str | ThresholdRule) -> float:
    """The threshold of one class chosen by ``rule`` on validation ``labels`` (0/1/NaN) and ``scores``.

    Raises:
        ValueError: the class has no positive or no negative among its known labels.

    Examples:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "youden")
        0.8
    """
    rule = parse_rule(rule)
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({len(labels)}) and scores ({len(scores)}) differ in length")
    known = ~np.isnan(labels)
    labels, scores = labels[known], scores[known]
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    n_pos = int((labels == 1).sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"cannot choose a threshold from {n_pos} positives and {n_neg} negatives; "
                         f"the validation set needs both")
    thresholds, tp, fp = _candidates(labels, scores)
    sensitivity, specificity = tp / n_pos, 1.0 - fp / n_neg
    tolerance = 1e-12  # e.g. 19/20 >= 0.95 must hold although 19/20 rounds below 0.95
    if rule.kind == "youden":
        best = int(np.argmax(sensitivity + specificity))  # first maximum: the highest threshold
    elif rule.kind == "f1":
        best = int(np.argmax(2 * tp / (tp + fp + n_pos)))
    elif rule.kind == "sensitivity":
        best = int(np.flatnonzero(sensitivity >= rule.target - tolerance)[0])  # the last candidate always is
    else:
        feasible = np.flatnonzero(specificity >= rule.target - tolerance)
        best = int(feasible[-1]) if len(feasible) else 0  # none only when scores reach 1.0: the highest
    return float(thresholds[best])


@dataclass
class ThresholdChoice:
    """Thresholds chosen on a validation set, with the rates they reached there.

    Attributes:
        rule (ThresholdRule): the rule.
        class_names (tuple[str, ...]): the classes.
        thresholds (numpy.ndarray): float64 ``[C]``.
        validation (dict): ``{"source", "images", "per_class": {finding: {rates, positives, negatives}}}``.
    """

    rule: ThresholdRule
    class_names: tuple[str, ...]
    thresholds: np.ndarray
    validation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``thresholds.json`` object."""
        return {
            "rule": str(self.rule),
            "thresholds": {n: float(t) for n, t in zip(self.class_names, self.thresholds)},
            "validation": self.validation,
        }


def confusion_counts(labels, scores, thresholds) -> np.ndarray:
    """int64 ``[C, 4]``: TP, FP, FN, TN per class at ``thresholds`` (positive iff score >= threshold).

    NaN labels (unknown) are left out of their class.
    """
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if labels.shape != scores.shape or labels.shape[1] != len(thresholds):
        raise ValueError(f"labels {list(labels.shape)}, scores {list(scores.shape)} and {len(thresholds)} "
                         f"thresholds do not match")
    called = scores >= thresholds
    pos, neg = labels == 1, labels == 0
    return np.stack([(called & pos).sum(0), (called & neg).sum(0), (~called & pos).sum(0),
                     (~called & neg).sum(0)], axis=1).astype(np.int64)


def choose_thresholds(
    labels, scores, rule: str | ThresholdRule, class_names: Sequence[str] = CLASS_NAMES, source: str = "",
) -> ThresholdChoice:
    """Per-class thresholds chosen by ``rule`` on a validation set.

    Args:
        labels (array-like): ``[N, C]`` of 0/1/NaN.
        scores (array-like): ``[N, C]`` probabilities.
        rule (str | ThresholdRule): see :func:`parse_rule`.
        class_names (Sequence[str], optional): one per column. Default: CLASS_NAMES.
        source (str, optional): the validation list, recorded in the result. Default: ''.

    Returns:
        ThresholdChoice: the thresholds and the validation rates they reach.

    Raises:
        ValueError: a bad rule, or a class without positives or negatives (named).
    """
    rule = parse_rule(rule)
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    class_names = tuple(class_names)
    thresholds = []
    for c, name in enumerate(class_names):
        try:
            thresholds.append(choose_threshold(labels[:, c], scores[:, c], rule))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    thresholds = np.asarray(thresholds)
    counts = confusion_counts(labels, scores, thresholds)
    rates = _rates(*counts.T)
    per_class = {}
    for c, name in enumerate(class_names):
        tp, fp, fn, tn = (int(v) for v in counts[c])
        per_class[name] = {"positives": tp + fn, "negatives": fp + tn,
                           **{m: _json_number(rates[m][c]) for m in METRICS}}
    validation = {"source": source, "images": int(labels.shape[0]), "per_class": per_class}
    return ThresholdChoice(rule, class_names, thresholds, validation)


def _json_number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def write_thresholds(path: str | Path, choice: ThresholdChoice, extra: dict | None = None) -> Path:
    """Write ``thresholds.json`` atomically; ``extra`` keys (e.g. ``"calibrated": true``) are added at the top."""
    data = choice.to_dict()
    if extra:
        data.update(extra)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return Path(path)


def read_thresholds_file(path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> tuple[np.ndarray, str]:
    """Thresholds (in ``class_names`` order) and the rule's name from a ``thresholds.json``.

    Accepts what :func:`write_thresholds` writes and a bare ``{finding: value}`` object (rule
    ``'unknown'``); NIH spellings of the findings are accepted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, a value outside [0, 1], an unknown or missing finding; the message names the file.
    """
    data = read_json_file(path, "write one with --choose-thresholds")
    return thresholds_from_dict(data, class_names, str(path))


def thresholds_from_dict(
    data: object, class_names: Sequence[str] = CLASS_NAMES, where: str = "thresholds"
) -> tuple[np.ndarray, str]:
    """Thresholds and rule from the object :meth:`ThresholdChoice.to_dict` made (a file's or a sidecar's).

    Raises:
        ValueError: a value outside [0, 1], an unknown or missing finding; the message starts with ``where``.
    """
    rule = "unknown"
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        rule = str(data.get("rule", rule))
        data = data["thresholds"]
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object {{\"rule\": ..., \"thresholds\": {{finding: value}}}}")
    names = tuple(class_names)
    chosen: dict[str, float] = {}
    for key, raw in data.items():
        try:
            name = key if key in names else canonical_label(key)
        except KeyError:
            name = None
        if name not in names:
            raise ValueError(f"{where}: unknown finding {key!r}; expected {', '.join(names)}")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= float(raw) <= 1.0:
            raise ValueError(f"{where}: threshold of {key} must be a number in [0, 1], got {raw!r}")
        chosen[name] = float(raw)
    missing = [n for n in names if n not in chosen]
    if missing:
        raise ValueError(f"{where}: no threshold for {', '.join(missing)}")
    return np.array([chosen[n] for n in names], dtype=np.float64), rule


@dataclass
class RateInterval:
    """One rate per class with its percentile interval.

    Attributes:
        estimate (numpy.ndarray): ``[C]`` on the full set (NaN when its denominator is 0).
        ci_low (numpy.ndarray): ``[C]``.
        ci_high (numpy.ndarray): ``[C]``.
        skipped (numpy.ndarray): int ``[C]``: resamples where the rate was undefined.
    """

    estimate: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    skipped: np.ndarray


@dataclass
class OperatingPoints:
    """Rates at fixed thresholds on a test set.

    Attributes:
        class_names (tuple[str, ...]): the classes.
        thresholds (numpy.ndarray): ``[C]``.
        counts (numpy.ndarray): int ``[C, 4]``: TP, FP, FN, TN.
        rates (dict[str, RateInterval]): by metric name (:data:`METRICS`).
        rule (str): where the thresholds came from.
        level (float): coverage of the intervals.
        n_resamples (int): resamples (0: no intervals, NaN bounds).
    """

    class_names: tuple[str, ...]
    thresholds: np.ndarray
    counts: np.ndarray
    rates: dict[str, RateInterval]
    rule: str = "unknown"
    level: float = DEFAULT_LEVEL
    n_resamples: int = 0

    def to_dict(self) -> dict:
        """JSON-ready, per class: threshold, counts, and ``{metric: {estimate, ci_low, ci_high}}``."""
        out = {}
        for c, name in enumerate(self.class_names):
            tp, fp, fn, tn = (int(v) for v in self.counts[c])
            entry = {"threshold": float(self.thresholds[c]), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
            for metric, interval in self.rates.items():
                entry[metric] = {"estimate": _json_number(interval.estimate[c]),
                                 "ci_low": _json_number(interval.ci_low[c]),
                                 "ci_high": _json_number(interval.ci_high[c])}
            out[name] = entry
        return {"rule": self.rule, "level": self.level, "resamples": self.n_resamples, "per_class": out}


def operating_points(
    labels, scores, thresholds, resampler: Resampler | None = None, class_names: Sequence[str] = CLASS_NAMES,
    level: float = DEFAULT_LEVEL, rule: str = "unknown",
) -> OperatingPoints:
    """Sensitivity, specificity, PPV, NPV and F1 per class at ``thresholds``, with bootstrap intervals.

    Args:
        labels (array-like): ``[N, C]`` of 0/1/NaN (NaN left out of its class).
        scores (array-like): ``[N, C]``.
        thresholds (array-like): ``[C]``.
        resampler (Resampler, optional): the resamples; None gives no intervals (NaN). Default: None.
        class_names (Sequence[str], optional): one per column. Default: CLASS_NAMES.
        level (float, optional): coverage of the intervals. Default: 0.95.
        rule (str, optional): recorded with the result. Default: 'unknown'.

    Returns:
        OperatingPoints: counts, rates and intervals.
    """
    check_level(level)
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    class_names = tuple(class_names)
    counts = confusion_counts(labels, scores, thresholds)
    estimates = _rates(*counts.T)
    n_classes = labels.shape[1]
    if resampler is None:
        nan = np.full(n_classes, np.nan)
        rates = {m: RateInterval(estimates[m], nan.copy(), nan.copy(), np.zeros(n_classes, np.int64))
                 for m in METRICS}
        return OperatingPoints(class_names, thresholds, counts, rates, rule, level, 0)
    if len(resampler.groups) != labels.shape[0]:
        raise ValueError(f"the resampler groups {len(resampler.groups)} images, the scores have {labels.shape[0]}")
    # cell of each (image, class): row 4 c + (0 TP, 1 FP, 2 FN, 3 TN); unknown labels have none
    called = scores >= thresholds
    cell = np.where(called, np.where(labels == 1, 0, 1), np.where(labels == 1, 2, 3)) + 4 * np.arange(n_classes)
    known = ~np.isnan(labels)
    rows = cell[known]
    cols = np.broadcast_to(resampler.groups[:, None], labels.shape)[known]
    matrix = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(4 * n_classes, resampler.n_groups))
    blocks = [(matrix @ c).reshape(n_classes, 4, -1) for c in resampler.counts()]
    cells = np.concatenate(blocks, axis=2)  # [C, 4, B]
    replicates = _rates(cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3])  # each [C, B]
    rates = {}
    for metric in METRICS:
        bounds = np.array([percentile_interval(replicates[metric][c], level) for c in range(n_classes)])
        rates[metric] = RateInterval(estimates[metric], bounds[:, 0], bounds[:, 1],
                                     np.isnan(replicates[metric]).sum(axis=1))
    return OperatingPoints(class_names, thresholds, counts, rates, rule, level, resampler.n_resamples)


def operating_points_csv(points: OperatingPoints) -> str:
    """``operating_points.csv``: ``label, threshold, tp, fp, fn, tn`` then ``M, M_ci_low, M_ci_high`` per metric."""
    def fmt(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.6f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "rule", "threshold", "tp", "fp", "fn", "tn"]
                    + [f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")])
    for c, name in enumerate(points.class_names):
        row = [name, points.rule, f"{points.thresholds[c]:.8g}", *(int(v) for v in points.counts[c])]
        for m in METRICS:
            r = points.rates[m]
            row += [fmt(r.estimate[c]), fmt(r.ci_low[c]), fmt(r.ci_high[c])]
        writer.writerow(row)
    return buffer.getvalue()


def write_operating_points(path: str | Path, points: OperatingPoints) -> Path:
    """Write :func:`operating_points_csv` to ``path`` atomically."""
    atomic_write_text(path, operating_points_csv(points))
    return Path(path)
