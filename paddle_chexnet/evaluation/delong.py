"""DeLong's test for two correlated ROC curves, with the fast algorithm of Sun and Xu (2014).

DeLong, DeLong and Clarke-Pearson (1988) write the AUROC of ``m`` positives
``X`` and ``n`` negatives ``Y`` as a two-sample U-statistic with kernel
``psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise``, and its structural
components

    V10(X_i) = (1/n) sum_j psi(X_i, Y_j),    V01(Y_j) = (1/m) sum_i psi(X_i, Y_j).

The AUROC is the mean of either; its variance (and the covariance of two
AUROCs on the same images) is ``S10 / m + S01 / n``, with ``S10`` and ``S01``
the sample covariance matrices of the components over positives and negatives.
Sun and Xu (2014, IEEE Signal Processing Letters 21(11)) obtain the
components from midranks in O((m + n) log(m + n)) instead of O(m n):

    V10(X_i) = (Tz_i - Tx_i) / n,      V01(Y_j) = 1 - (Tz_{m+j} - Ty_j) / m,

where ``Tz``, ``Tx`` and ``Ty`` are midranks within all scores, the positives
and the negatives. The test of ``AUROC_a = AUROC_b`` is
``z = (A_a - A_b) / sqrt(Var_a + Var_b - 2 Cov_ab)``, two-sided normal p-value.

DeLong's variance treats the images as independent; several images of one
patient make it optimistic. The patient bootstrap
(:func:`~paddle_chexnet.evaluation.bootstrap.paired_bootstrap_auroc`) does not
assume that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass
class DeLongResult:
    """DeLong's comparison of two AUROCs on the same images.

    Attributes:
        auc_a (float): AUROC of the first scores.
        auc_b (float): AUROC of the second.
        var_a (float): DeLong variance of ``auc_a``.
        var_b (float): DeLong variance of ``auc_b``.
        cov (float): their covariance.
        z (float): ``(auc_a - auc_b) / sqrt(var_a + var_b - 2 cov)``; NaN when that variance is 0.
        p_value (float): two-sided; 1.0 when both curves are identical (zero difference, zero
            variance); NaN when the class has one label value.
    """

    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p_value: float

    @property
    def diff(self) -> float:
        return self.auc_a - self.auc_b


def _split(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores {list(scores.shape)} must be [K, N] for {len(labels)} labels")
    known = ~np.isnan(labels)
    labels, scores = labels[known], scores[:, known]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN (unknown)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; check the model's output")
    positive = labels == 1
    return scores[:, positive], scores[:, ~positive]


def structural_components(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs and DeLong's structural components by Sun and Xu's midrank algorithm.

    Args:
        labels (array-like): ``[N]`` of 0/1; NaN (unknown) rows are left out.
        scores (array-like): ``[N]`` or ``[K, N]``: ``K`` score sets for the same images.

    Returns:
        tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]: ``auc`` ``[K]``, ``v10`` ``[K, m]`` (one per
        positive) and ``v01`` ``[K, n]`` (one per negative).

    Raises:
        ValueError: shapes differ, labels not 0/1/NaN, scores not finite, or one label value only.
    """
    x, y = _split(labels, scores)
    m, n = x.shape[1], y.shape[1]
    if m == 0 or n == 0:
        raise ValueError(f"DeLong's test needs positives and negatives, got {m} positives and {n} negatives")
    tx = rankdata(x, axis=1)
    ty = rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    return auc, v10, v01


def delong_covariance(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and DeLong's covariance matrix ``S10 / m + S01 / n`` of ``K`` score sets.

    Args:
        labels (array-like): ``[N]`` of 0/1/NaN.
        scores (array-like): ``[N]`` or ``[K, N]``.

    Returns:
        tuple[numpy.ndarray, numpy.ndarray]: ``auc`` ``[K]`` and ``cov`` ``[K, K]`` (``[1, 1]`` for one set).

    Examples:
        >>> auc, cov = delong_covariance([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> float(auc[0])
        0.75
    """
    auc, v10, v01 = structural_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def delong_variance(labels, scores) -> tuple[float, float]:
    """``(auc, variance)`` of one score set by DeLong's method."""
    auc, cov = delong_covariance(labels, np.asarray(scores, dtype=np.float64).ravel())
    return float(auc[0]), float(cov[0, 0])


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's two-sided test that two correlated AUROCs (same images, same labels) are equal.

    Args:
        labels (array-like): ``[N]`` of 0/1; NaN rows are left out.
        scores_a (array-like): ``[N]`` scores of model A.
        scores_b (array-like): ``[N]`` scores of model B.

    Returns:
        DeLongResult: the AUROCs, variances, covariance, ``z`` and ``p_value``. A class with one
        label value gives NaN everywhere instead of an error.

    Examples:
        >>> r = delong_test([0, 0, 1, 1, 0, 1], [.1, .4, .35, .8, .2, .9], [.2, .3, .6, .7, .5, .4])
        >>> 0.0 <= r.p_value <= 1.0
        True
    """
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two score sets differ in length: {len(a)} and {len(b)}")
    known = ~np.isnan(np.asarray(labels, dtype=np.float64).ravel())
    positives = int((np.asarray(labels, dtype=np.float64).ravel()[known] == 1).sum())
    if positives == 0 or positives == int(known.sum()):
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan)
    auc, cov = delong_covariance(labels, np.stack([a, b]))
    variance = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = auc[0] - auc[1]
    # Rounding can leave a tiny variance for identical curves; treat it as zero relative to the variances.
    scale = max(cov[0, 0] + cov[1, 1], np.finfo(np.float64).tiny)
    if variance <= 1e-12 * scale:
        z = float("nan")
        p = 1.0 if abs(diff) <= 1e-12 else float("nan")
    else:
        z = float(diff / math.sqrt(variance))
        p = float(math.erfc(abs(z) / math.sqrt(2.0)))
    return DeLongResult(float(auc[0]), float(auc[1]), float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1]), z, p)
