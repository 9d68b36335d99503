"""Calibration: expected calibration error, reliability diagrams, per-class temperature scaling.

Expected calibration error (ECE) of one class uses ``n_bins`` equal-width bins
of the predicted probability (default :data:`DEFAULT_BINS` = 10: [0, 0.1),
[0.1, 0.2), ..., [0.9, 1.0], the last closed):

    ECE = sum over bins b of (n_b / N) * |mean predicted probability in b - fraction positive in b|,

with ``N`` the images whose label is known (NaN labels are left out of their
class). The reliability diagram plots the same two means per bin.

Temperature scaling divides each class's logit by its own temperature ``T``:
``p' = sigmoid(logit(p) / T)``. ``T`` is fitted on validation probabilities by
minimising the binary cross-entropy (negative log-likelihood) over
``log T`` in ``[log 0.01, log 100]`` (bounded Brent search; the loss is
unimodal there, being convex in ``1 / T``). Probabilities are clipped to
``[1e-12, 1 - 1e-12]`` before the logit so that 0 and 1 stay finite, and the
loss is computed as ``softplus(z) - y z``, which does not overflow. It keeps
the order of the scores, so AUROC is unchanged; thresholds chosen before
calibration must be chosen again after it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label
from paddle_chexnet.utils.io import atomic_write_text, read_json_file

DEFAULT_BINS = 10
CLIP = 1e-12
TEMPERATURE_BOUNDS: tuple[float, float] = (0.01, 100.0)


def _check_probabilities(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or infinity")
    if probs.size and (probs.min() < 0.0 or probs.max() > 1.0):
        raise ValueError(f"calibration needs probabilities in [0, 1], got values from {probs.min():g} to "
                         f"{probs.max():g} (logits? apply a sigmoid first)")
    return probs


def _check_bins(n_bins: int) -> int:
    if int(n_bins) < 1:
        raise ValueError(f"the number of calibration bins must be at least 1, got {n_bins}")
    return int(n_bins)


@dataclass
class Reliability:
    """Reliability-diagram data and ECE of one class.

    Attributes:
        edges (numpy.ndarray): ``[B + 1]`` bin edges, 0 to 1.
        counts (numpy.ndarray): int ``[B]`` images per bin.
        mean_predicted (numpy.ndarray): ``[B]`` mean probability per bin (NaN when empty).
        observed (numpy.ndarray): ``[B]`` fraction of positives per bin (NaN when empty).
        ece (float): expected calibration error (NaN when no label is known).
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    ece: float

    def to_dict(self) -> dict:
        def nums(values):
            return [None if math.isnan(v) else float(v) for v in values]

        return {"ece": None if math.isnan(self.ece) else self.ece, "edges": [float(e) for e in self.edges],
                "counts": [int(c) for c in self.counts], "mean_predicted": nums(self.mean_predicted),
                "observed": nums(self.observed)}


def reliability(labels, probs, n_bins: int = DEFAULT_BINS) -> Reliability:
    """Reliability data and ECE of one class from 0/1/NaN ``labels`` and probabilities ``probs`` ``[N]``.

    Examples:
        >>> r = reliability([0, 1, 1, 0], [0.05, 0.95, 0.85, 0.15], n_bins=10)
        >>> round(r.ece, 6)
        0.1
    """
    n_bins = _check_bins(n_bins)
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = _check_probabilities(probs).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"labels ({len(labels)}) and probabilities ({len(probs)}) differ in length")
    known = ~np.isnan(labels)
    labels, probs = labels[known], probs[known]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, weights=probs, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=labels, minlength=n_bins) / counts
    filled = counts > 0
    total = counts.sum()
    ece = float(np.sum(counts[filled] / total * np.abs(mean_predicted[filled] - observed[filled]))) if total else \
        float("nan")
    return Reliability(edges, counts, mean_predicted, observed, ece)


def reliability_per_class(labels, probs, n_bins: int = DEFAULT_BINS) -> list[Reliability]:
    """:func:`reliability` of every column of ``[N, C]`` labels and probabilities."""
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    probs = np.atleast_2d(_check_probabilities(probs))
    if labels.shape != probs.shape:
        raise ValueError(f"labels {list(labels.shape)} and probabilities {list(probs.shape)} differ in shape")
    return [reliability(labels[:, c], probs[:, c], n_bins) for c in range(labels.shape[1])]


def expected_calibration_error(labels, probs, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """float64 ``[C]``: ECE per class with ``n_bins`` equal-width bins (see the module docstring)."""
    return np.array([r.ece for r in reliability_per_class(labels, probs, n_bins)])


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, CLIP, 1.0 - CLIP)
    return np.log(p) - np.log1p(-p)


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))


def fit_temperature(labels, probs) -> float:
    """The temperature minimising the cross-entropy of ``sigmoid(logit(probs) / T)`` on one class.

    Args:
        labels (array-like): ``[N]`` of 0/1; NaN rows are left out.
        probs (array-like): ``[N]`` probabilities.

    Returns:
        float: ``T`` in :data:`TEMPERATURE_BOUNDS`.

    Raises:
        ValueError: no positive or no negative among the known labels (no temperature is identified).
    """
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = _check_probabilities(probs).ravel()
    known = ~np.isnan(labels)
    y, z = labels[known], _logit(probs[known])
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"cannot fit a temperature from {n_pos} positives and {len(y) - n_pos} negatives")
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: _nll(z, y, math.exp(log_t)), bounds=(low, high), method="bounded",
                            options={"xatol": 1e-8})
    return float(math.exp(found.x))


def apply_temperature(probs, temperatures) -> np.ndarray:
    """``sigmoid(logit(probs) / T)`` per column; a class with ``T == 1`` is returned unchanged.

    Args:
        probs (array-like): ``[N, C]`` (or ``[C]``) probabilities.
        temperatures (array-like): ``[C]`` positive temperatures.

    Returns:
        numpy.ndarray: float64, the shape of ``probs``.
    """
    probs = _check_probabilities(probs)
    temperatures = np.asarray(temperatures, dtype=np.float64)
    if probs.shape[-1] != temperatures.size or not (temperatures > 0).all():
        raise ValueError(f"need one positive temperature per class ({probs.shape[-1]}), got {temperatures.tolist()}")
    scaled = expit(_logit(probs) / temperatures)
    return np.where(temperatures == 1.0, probs, scaled)


@dataclass
class TemperatureScaling:
    """Per-class temperatures fitted on a validation set.

    Attributes:
        class_names (tuple[str, ...]): the classes.
        temperatures (numpy.ndarray): ``[C]``; 1.0 for a class that could not be fitted.
        not_fitted (list[str]): classes with one label value in the validation set (left at 1.0).
        ece_before (numpy.ndarray): ``[C]`` validation ECE before scaling.
        ece_after (numpy.ndarray): ``[C]`` after.
        n_bins (int): bins of the ECE.
        source (str): the validation set.
    """

    class_names: tuple[str, ...]
    temperatures: np.ndarray
    not_fitted: list[str] = field(default_factory=list)
    ece_before: np.ndarray | None = None
    ece_after: np.ndarray | None = None
    n_bins: int = DEFAULT_BINS
    source: str = ""

    def apply(self, probs) -> np.ndarray:
        """:func:`apply_temperature` with these temperatures."""
        return apply_temperature(probs, self.temperatures)

    def to_dict(self) -> dict:
        """The ``calibration.json`` object."""
        def per_class(values):
            if values is None:
                return None
            return {n: (None if math.isnan(v) else float(v)) for n, v in zip(self.class_names, values)}

        return {"method": "temperature", "temperatures": per_class(self.temperatures),
                "not_fitted": list(self.not_fitted), "bins": self.n_bins, "source": self.source,
                "ece_before": per_class(self.ece_before), "ece_after": per_class(self.ece_after)}


def fit_temperatures(
    labels, probs, class_names: Sequence[str] = CLASS_NAMES, n_bins: int = DEFAULT_BINS, source: str = "",
) -> TemperatureScaling:
    """Fit one temperature per class on validation ``labels`` ``[N, C]`` (0/1/NaN) and ``probs`` ``[N, C]``.

    Examples:
        >>> scaling = fit_temperatures(val_labels, val_probs)  # doctest: +SKIP
        >>> test_probs = scaling.apply(test_probs)  # doctest: +SKIP
    """
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    probs = np.atleast_2d(_check_probabilities(probs))
    class_names = tuple(class_names)
    if labels.shape != probs.shape or labels.shape[1] != len(class_names):
        raise ValueError(f"labels {list(labels.shape)}, probabilities {list(probs.shape)} and "
                         f"{len(class_names)} classes do not match")
    temperatures, not_fitted = [], []
    for c, name in enumerate(class_names):
        known = labels[~np.isnan(labels[:, c]), c]
        if known.size == 0 or known.min() == known.max():
            temperatures.append(1.0)
            not_fitted.append(name)
        else:
            temperatures.append(fit_temperature(labels[:, c], probs[:, c]))
    temperatures = np.asarray(temperatures)
    after = apply_temperature(probs, temperatures)
    return TemperatureScaling(class_names, temperatures, not_fitted,
                              expected_calibration_error(labels, probs, n_bins),
                              expected_calibration_error(labels, after, n_bins), n_bins, source)


def write_calibration(path: str | Path, scaling: TemperatureScaling) -> Path:
    """Write ``calibration.json`` (:meth:`TemperatureScaling.to_dict`) atomically."""
    atomic_write_text(path, json.dumps(scaling.to_dict(), indent=2) + "\n")
    return Path(path)


def read_calibration(path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> TemperatureScaling:
    """Read a ``calibration.json`` (or an object with a ``"temperatures"`` key from a sidecar).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, no ``temperatures``, an unknown or missing class, a temperature that is
            not a positive number; the message names the file.
    """
    data = read_json_file(path, "fit one with --calibrate")
    return calibration_from_dict(data, class_names, str(path))


def calibration_from_dict(data: object, class_names: Sequence[str] = CLASS_NAMES,
                          where: str = "calibration") -> TemperatureScaling:
    """:class:`TemperatureScaling` from the object :meth:`TemperatureScaling.to_dict` made (e.g. in a sidecar)."""
    names = tuple(class_names)
    raw = data.get("temperatures") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object with \"temperatures\": {{finding: T}}")
    chosen: dict[str, float] = {}
    for key, value in raw.items():
        try:
            name = key if key in names else canonical_label(key)
        except KeyError:
            name = None
        if name not in names:
            raise ValueError(f"{where}: unknown finding {key!r}; expected {', '.join(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
                not math.isfinite(value):
            raise ValueError(f"{where}: temperature of {key} must be a positive number, got {value!r}")
        chosen[name] = float(value)
    missing = [n for n in names if n not in chosen]
    if missing:
        raise ValueError(f"{where}: no temperature for {', '.join(missing)}")
    return TemperatureScaling(names, np.array([chosen[n] for n in names]),
                              list(data.get("not_fitted", [])), n_bins=int(data.get("bins", DEFAULT_BINS)),
                              source=str(data.get("source", "")))
