"""Seeded percentile bootstrap of per-class AUROC and of the mean, resampling patients or images.

The resamples
-------------
A :class:`Resampler` draws ``n_resamples`` resamples of the units (patients by
default, see :mod:`~paddle_chexnet.evaluation.grouping`): each resample picks
``G`` units out of ``G`` with replacement, by
``numpy.random.default_rng(seed).integers(0, G, size=(k, G))`` in consecutive
blocks of ``k`` rows (the stream does not depend on ``k``). Every image of a
picked unit enters the resample once per pick. The same seed gives the same
resamples, so two score sets (model A and model B) can be bootstrapped on
identical resamples (:func:`paired_bootstrap_auroc`).

How it is fast
--------------
Resampling only changes how often each unit occurs, so a resample is a vector
of integer weights, and its AUROC is the weighted Mann-Whitney statistic
(a positive above a negative counts 1, a tie one half). Per class the scores
are sorted once; the positives' tie groups split the negatives into segments,
and each unit's images are counted per segment, so the weights of every
resample in a block of ``k`` come from one sparse matrix product, and the
statistic from a cumulative sum over the (few) positive tie groups. The sums
are of integers, exact in float64, so each resample's AUROC equals
scikit-learn's ``roc_auc_score`` on that resample spelled out image by image.

What is skipped
---------------
Labels may be NaN (unknown): those images are left out of that class only, as
:func:`~paddle_chexnet.evaluation.metrics.compute_auroc` does. A resample in
which a class has a single label value has no AUROC for that class: it is
skipped for that class and counted (``skipped``). The mean AUROC of a resample
is the mean over the classes that are defined on the full set; a resample in
which any of them is undefined is skipped for the mean (``mean_skipped``), so
that every replicate of the mean averages the same classes.

The interval is the percentile interval: the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of the kept replicates (``numpy.quantile``,
linear interpolation).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.grouping import group_codes
from paddle_chexnet.evaluation.metrics import compute_auroc, mean_auroc

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_CHUNK = 128


class Resampler:
    """The bootstrap resamples of a set of images grouped into units (patients or images).

    Args:
        groups (array-like): int ``[N]``: the unit of each image, in ``0 .. n_groups - 1``.
        n_resamples (int): how many resamples.
        seed (int, optional): seed of ``numpy.random.default_rng``. Default: 0.
        n_groups (int, optional): number of units. Default: None (``max(groups) + 1``).
        chunk_size (int, optional): resamples drawn per block (memory, not results). Default: 128.

    Examples:
        >>> r = Resampler([0, 0, 1], n_resamples=2, seed=0)
        >>> [p.shape for p in r.picks()]
        [(2, 2)]
    """

    def __init__(
        self, groups, n_resamples: int, seed: int = 0, n_groups: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.groups = np.asarray(groups, dtype=np.int64)
        if self.groups.ndim != 1:
            raise ValueError(f"groups must be one code per image, got shape {list(self.groups.shape)}")
        self.n_groups = int(n_groups if n_groups is not None else (self.groups.max() + 1 if len(self.groups) else 0))
        if len(self.groups) and (self.groups.min() < 0 or self.groups.max() >= self.n_groups):
            raise ValueError(f"group codes must lie in 0 .. {self.n_groups - 1}")
        if int(n_resamples) < 1:
            raise ValueError(f"the number of bootstrap resamples must be at least 1, got {n_resamples}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)

    @classmethod
    def from_names(
        cls, names: Sequence[str], unit: str = "patient", n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> Resampler:
        """Resamples of patients (read from the image names) or of images; see :func:`group_codes`."""
        groups, n_groups = group_codes(names, unit)
        return cls(groups, n_resamples, seed, n_groups, chunk_size)

    def picks(self) -> Iterator[np.ndarray]:
        """Blocks of int64 ``[k, n_groups]``: the units drawn by each resample, in draw order."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.n_resamples, self.chunk_size):
            k = min(self.chunk_size, self.n_resamples - start)
            yield rng.integers(0, self.n_groups, size=(k, self.n_groups))

    def counts(self) -> Iterator[np.ndarray]:
        """Blocks of float64 ``[n_groups, k]``: how often each unit occurs in each resample of the block."""
        g = self.n_groups
        for picks in self.picks():
            k = picks.shape[0]
            flat = (picks + (np.arange(k, dtype=np.int64) * g)[:, None]).ravel()
            yield np.ascontiguousarray(np.bincount(flat, minlength=k * g).reshape(k, g).T, dtype=np.float64)


@dataclass
class BootstrapSummary:
    """Point estimates, replicates and percentile intervals of one statistic per class and of the mean.

    Attributes:
        class_names (tuple[str, ...]): one name per column.
        estimate (numpy.ndarray): float64 ``[C]`` on the full set (NaN where undefined).
        mean (float): the mean over the classes defined on the full set.
        replicates (numpy.ndarray): float64 ``[B, C]``; NaN where a resample was skipped for a class.
        mean_replicates (numpy.ndarray): float64 ``[B]``; NaN where skipped for the mean.
        ci_low (numpy.ndarray): float64 ``[C]`` lower percentile bound (NaN if every resample was skipped).
        ci_high (numpy.ndarray): float64 ``[C]`` upper bound.
        mean_ci_low (float): lower bound of the mean.
        mean_ci_high (float): upper bound of the mean.
        skipped (numpy.ndarray): int ``[C]``: resamples skipped per class.
        mean_skipped (int): resamples skipped for the mean.
        level (float): the interval's coverage, e.g. 0.95.
        n_used (int): classes in the mean.
    """

    class_names: tuple[str, ...]
    estimate: np.ndarray
    mean: float
    replicates: np.ndarray
    mean_replicates: np.ndarray
    level: float
    n_used: int
    ci_low: np.ndarray = field(init=False)
    ci_high: np.ndarray = field(init=False)
    mean_ci_low: float = field(init=False)
    mean_ci_high: float = field(init=False)
    skipped: np.ndarray = field(init=False)
    mean_skipped: int = field(init=False)

    def __post_init__(self) -> None:
        bounds = np.array([percentile_interval(self.replicates[:, c], self.level)
                           for c in range(self.replicates.shape[1])]).reshape(-1, 2)
        self.ci_low, self.ci_high = bounds[:, 0], bounds[:, 1]
        self.mean_ci_low, self.mean_ci_high = percentile_interval(self.mean_replicates, self.level)
        self.skipped = np.isnan(self.replicates).sum(axis=0)
        self.mean_skipped = int(np.isnan(self.mean_replicates).sum())

    @property
    def n_resamples(self) -> int:
        return int(self.replicates.shape[0])

    def to_dict(self) -> dict:
        """JSON-ready: per class ``{estimate, ci_low, ci_high, skipped}`` and the same for the mean."""
        def num(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "level": self.level,
            "resamples": self.n_resamples,
            "per_class": {
                name: {"estimate": num(self.estimate[c]), "ci_low": num(self.ci_low[c]),
                       "ci_high": num(self.ci_high[c]), "skipped": int(self.skipped[c])}
                for c, name in enumerate(self.class_names)
            },
            "mean": {"estimate": num(self.mean), "ci_low": num(self.mean_ci_low), "ci_high": num(self.mean_ci_high),
                     "skipped": self.mean_skipped, "classes": self.n_used},
        }


@dataclass
class BootstrapResult(BootstrapSummary):
    """:class:`BootstrapSummary` of AUROC, with how the resamples were made.

    Attributes:
        unit (str): ``'patient'`` or ``'image'`` (or ``'custom'`` for given codes).
        seed (int): the resamples' seed.
    """

    unit: str = "patient"
    seed: int = 0

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(unit=self.unit, seed=self.seed)
        return out

    def csv_rows(self) -> list[list[str]]:
        """``aucs.csv`` rows: ``label, auc, ci_low, ci_high``, one per class, then ``Mean`` ("nan" where undefined)."""
        def fmt(value: float) -> str:
            return "nan" if math.isnan(value) else f"{value:.6f}"

        rows = [["label", "auc", "ci_low", "ci_high"]]
        rows += [[name, fmt(self.estimate[c]), fmt(self.ci_low[c]), fmt(self.ci_high[c])]
                 for c, name in enumerate(self.class_names)]
        rows.append(["Mean", fmt(self.mean), fmt(self.mean_ci_low), fmt(self.mean_ci_high)])
        return rows

    def table(self) -> str:
        """The printed table: the average with its interval first, then one line per finding."""
        width = max(len(name) for name in (*self.class_names, "Mean"))
        level = f"{self.level * 100:g}%"

        def cells(value: float, low: float, high: float) -> str:
            if math.isnan(value):
                return "   n/a"
            return f"{value:.4f}" + ("" if math.isnan(low) else f"  [{low:.4f}, {high:.4f}]")

        lines = [f"The average AUROC is {self.mean:.3f} ({level} CI {self.mean_ci_low:.3f}-{self.mean_ci_high:.3f}; "
                 f"over {self.n_used} of {len(self.class_names)} classes; {self.n_resamples} resamples of "
                 f"{self.unit}s)"]
        lines += [f"{'Finding':<{width}}  AUROC   {level} CI", f"{'-' * width}  ------  ----------------"]
        lines += [f"{name:<{width}}  {cells(self.estimate[c], self.ci_low[c], self.ci_high[c])}"
                  for c, name in enumerate(self.class_names)]
        lines.append(f"{'-' * width}  ------  ----------------")
        lines.append(f"{'Mean':<{width}}  {cells(self.mean, self.mean_ci_low, self.mean_ci_high)}")
        skipped = [f"{n} {int(s)}" for n, s in zip(self.class_names, self.skipped) if s and s < self.n_resamples]
        if skipped:
            lines.append(f"resamples skipped (one label value): {', '.join(skipped)}; mean {self.mean_skipped}")
        return "\n".join(lines)


@dataclass
class PairedBootstrapResult:
    """Model A, model B and A - B on identical resamples.

    Attributes:
        a (BootstrapResult): AUROC of the first score set.
        b (BootstrapResult): AUROC of the second.
        diff (BootstrapSummary): ``a - b`` per class and of the means (``diff.mean = a.mean - b.mean``).
    """

    a: BootstrapResult
    b: BootstrapResult
    diff: BootstrapSummary


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """``(low, high)``: the percentile interval of the non-NaN ``values``; NaNs when none is left."""
    check_level(level)
    kept = np.asarray(values, dtype=np.float64)
    kept = kept[~np.isnan(kept)]
    if len(kept) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(kept, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def check_level(level: float) -> float:
    """``level`` if it lies strictly between 0 and 1, else a ``ValueError`` that says so."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"the confidence level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")
    return float(level)


class _AurocCells:
    """Per class, a sparse ``[rows, G]`` count of each unit's images in the weighted Mann-Whitney cells.

    For class ``c`` with ``T`` tie groups that hold a positive (in score order), the rows are
    ``T`` (positives per tie group), ``T`` (negatives tied with that group) and ``T + 1``
    (negatives per segment ``s``: those strictly below positive group ``s`` and not below
    group ``s - 1``, ties with a lower group counted in the segment above it).
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
        blocks, self.offsets, self.sizes = [], [], []
        row = 0
        for c in range(labels.shape[1]):
            known = ~np.isnan(labels[:, c])
            y, s, g = labels[known, c] == 1, scores[known, c], groups[known]
            order = np.argsort(s, kind="mergesort")
            y, s, g = y[order], s[order], g[order]
            tie = np.cumsum(np.r_[False, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)
            pos_ties = np.unique(tie[y])
            t = len(pos_ties)
            where_pos = np.searchsorted(pos_ties, tie[y])
            neg_tie = tie[~y]
            segment = np.searchsorted(pos_ties, neg_tie, side="right")
            tied_at = np.searchsorted(pos_ties, neg_tie, side="left")
            if t:
                is_tied = pos_ties[np.minimum(tied_at, t - 1)] == neg_tie
            else:
                is_tied = np.zeros(len(neg_tie), dtype=bool)
            rows = np.concatenate([where_pos, t + tied_at[is_tied], 2 * t + segment])
            cols = np.concatenate([g[y], g[~y][is_tied], g[~y]])
            blocks.append((rows + row, cols))
            self.offsets.append(row)
            self.sizes.append(t)
            row += 3 * t + 1
        rows = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros(0, np.int64)
        cols = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.int64)
        self.matrix = scipy.sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(row, n_groups), dtype=np.float64
        )
        self.matrix.sum_duplicates()

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """float64 ``[k, C]``: AUROC of each resample of the block ``counts`` ``[G, k]`` (NaN: one label value)."""
        cells = self.matrix @ counts
        out = np.empty((counts.shape[1], len(self.sizes)))
        with np.errstate(invalid="ignore", divide="ignore"):
            for c, (row, t) in enumerate(zip(self.offsets, self.sizes)):
                pos = cells[row: row + t]
                tied = cells[row + t: row + 2 * t]
                segments = cells[row + 2 * t: row + 3 * t + 1]
                below = np.cumsum(segments[:t], axis=0)
                numerator = np.einsum("tk,tk->k", pos, below + 0.5 * tied)
                w_pos, w_neg = pos.sum(axis=0), segments.sum(axis=0)
                denominator = w_pos * w_neg
                out[:, c] = np.where(denominator > 0, numerator / denominator, np.nan)
        return out


def _as_matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {list(array.shape)}")
    return array


def _check_inputs(labels, scores, resampler: Resampler) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = _as_matrix(labels, "labels"), _as_matrix(scores, "scores")
    if labels.shape != scores.shape:
        raise ValueError(f"labels {list(labels.shape)} and scores {list(scores.shape)} must have the same shape")
    if len(resampler.groups) != labels.shape[0]:
        raise ValueError(f"the resampler groups {len(resampler.groups)} images, the scores have {labels.shape[0]}")
    return labels, scores


def _mean_replicates(replicates: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(estimate)
    if not defined.any():
        return np.full(replicates.shape[0], np.nan)
    # NaN propagates: a resample where a class of the mean is undefined is skipped for the mean.
    return replicates[:, defined].mean(axis=1)


def auroc_replicates(labels, scores, resampler: Resampler) -> np.ndarray:
    """float64 ``[B, C]``: the AUROC of every resample (NaN where a class has one label value)."""
    labels, scores = _check_inputs(labels, scores, resampler)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; check the model's output")
    cells = _AurocCells(labels, scores, resampler.groups, resampler.n_groups)
    return np.concatenate([cells.auroc(counts) for counts in resampler.counts()], axis=0)


def _result(labels, scores, resampler, class_names, level, unit, warn) -> BootstrapResult:
    estimate = compute_auroc(labels, scores, class_names, warn=warn)  # validates labels and scores first
    replicates = auroc_replicates(labels, scores, resampler)
    mean, n_used = mean_auroc(estimate)
    return BootstrapResult(tuple(class_names), estimate, mean, replicates, _mean_replicates(replicates, estimate),
                           level, n_used, unit=unit, seed=resampler.seed)


def _names_for(labels: np.ndarray, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is None:
        return CLASS_NAMES if labels.shape[1] == len(CLASS_NAMES) else tuple(str(c) for c in range(labels.shape[1]))
    if len(class_names) != labels.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {labels.shape[1]} columns")
    return tuple(class_names)


def bootstrap_auroc(
    labels, scores, resampler: Resampler, class_names: Sequence[str] | None = None,
    level: float = DEFAULT_LEVEL, unit: str = "custom", warn: bool = True,
) -> BootstrapResult:
    """Percentile bootstrap intervals of each class's AUROC and of the mean AUROC.

    Args:
        labels (array-like): ``[N, C]`` of 0/1, NaN for unknown (left out of that class).
        scores (array-like): ``[N, C]`` probabilities or logits (finite).
        resampler (Resampler): the resamples, e.g. ``Resampler.from_names(names, "patient", 1000, seed=0)``.
        class_names (Sequence[str], optional): one per column. Default: None (CLASS_NAMES for 14 columns).
        level (float, optional): coverage of the interval. Default: 0.95.
        unit (str, optional): recorded in the result (``'patient'``/``'image'``). Default: 'custom'.
        warn (bool, optional): warn about classes undefined on the full set. Default: True.

    Returns:
        BootstrapResult: estimates, ``ci_low``/``ci_high`` per class and of the mean, skip counts.

    Raises:
        ValueError: shapes differ, scores not finite, labels not 0/1/NaN, or a bad level.

    Examples:
        >>> r = Resampler.from_names(names, "patient", 1000, seed=0)  # doctest: +SKIP
        >>> res = bootstrap_auroc(labels, probs, r, unit="patient")  # doctest: +SKIP
        >>> res.ci_low, res.ci_high, res.mean_ci_low  # doctest: +SKIP
    """
    check_level(level)
    labels, scores = _check_inputs(labels, scores, resampler)
    class_names = _names_for(labels, class_names)
    return _result(labels, scores, resampler, class_names, level, unit, warn)


def paired_bootstrap_auroc(
    labels, scores_a, scores_b, resampler: Resampler, class_names: Sequence[str] | None = None,
    level: float = DEFAULT_LEVEL, unit: str = "custom", warn: bool = True,
) -> PairedBootstrapResult:
    """Bootstrap of two score sets for the same images on identical resamples, and of their difference.

    The interval of ``diff`` is the percentile interval of ``AUROC_a - AUROC_b`` over the
    resamples: both models are scored on the same resampled patients, so their
    correlation is kept. A resample skipped for a class (one label value) is skipped
    for both models, since it depends on the labels only.

    Args:
        labels (array-like): ``[N, C]`` of 0/1/NaN.
        scores_a (array-like): ``[N, C]`` of model A, rows in the order of ``labels``.
        scores_b (array-like): ``[N, C]`` of model B, same rows.
        resampler (Resampler): the resamples.
        class_names (Sequence[str], optional): one per column. Default: None.
        level (float, optional): coverage of the intervals. Default: 0.95.
        unit (str, optional): recorded in the results. Default: 'custom'.
        warn (bool, optional): warn about classes undefined on the full set. Default: True.

    Returns:
        PairedBootstrapResult: ``a``, ``b`` and ``diff``.
    """
    check_level(level)
    labels, scores_a = _check_inputs(labels, scores_a, resampler)
    _, scores_b = _check_inputs(labels, scores_b, resampler)
    class_names = _names_for(labels, class_names)
    a = _result(labels, scores_a, resampler, class_names, level, unit, warn)
    b = _result(labels, scores_b, resampler, class_names, level, unit, False)
    diff = BootstrapSummary(class_names, a.estimate - b.estimate, a.mean - b.mean, a.replicates - b.replicates,
                            a.mean_replicates - b.mean_replicates, level, a.n_used)
    return PairedBootstrapResult(a, b, diff)


def bootstrap_roc_band(
    labels, scores, resampler: Resampler, fpr_grid: np.ndarray | None = None, level: float = DEFAULT_LEVEL,
    max_thresholds: int = 400,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise percentile band of the ROC curve (true positive rate at fixed false positive rates).

    Each resample's ROC is evaluated at up to ``max_thresholds`` score cut points (quantiles
    of the class's scores, exact at those points, linear in between) and interpolated at
    ``fpr_grid``; the band is the percentile interval of the interpolated rates. It is for
    drawing; the AUROC intervals come from :func:`bootstrap_auroc`.

    Args:
        labels (array-like): ``[N, C]`` of 0/1/NaN.
        scores (array-like): ``[N, C]``.
        resampler (Resampler): the resamples.
        fpr_grid (numpy.ndarray, optional): rising false positive rates in [0, 1].
            Default: None (101 points, 0 to 1).
        level (float, optional): coverage. Default: 0.95.
        max_thresholds (int, optional): cut points per class. Default: 400.

    Returns:
        tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]: ``fpr_grid`` ``[F]``, ``low`` and ``high``
        ``[C, F]`` (NaN rows for classes with one label value).
    """
    check_level(level)
    labels, scores = _check_inputs(labels, scores, resampler)
    grid = np.linspace(0.0, 1.0, 101) if fpr_grid is None else np.asarray(fpr_grid, dtype=np.float64)
    n_classes = labels.shape[1]
    mats, cuts = [], []
    for c in range(n_classes):
        known = ~np.isnan(labels[:, c])
        y, s, g = labels[known, c] == 1, scores[known, c], resampler.groups[known]
        edges = np.unique(np.quantile(s, np.linspace(0, 1, max_thresholds + 1))) if len(s) else np.zeros(1)
        # bin b holds the scores in [edges[b], edges[b + 1]) (the last bin also holds the maximum)
        b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 1)
        n_bins = len(edges)
        rows = np.where(y, b, n_bins + b)
        mats.append(scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, g)), shape=(2 * n_bins, resampler.n_groups)))
        cuts.append(n_bins)
    tpr_at = [[] for _ in range(n_classes)]
    for counts in resampler.counts():
        for c in range(n_classes):
            cells = mats[c] @ counts
            n_bins = cuts[c]
            # from the highest bin down: positives (negatives) at or above each cut point
            pos = np.cumsum(cells[:n_bins][::-1], axis=0)
            neg = np.cumsum(cells[n_bins:][::-1], axis=0)
            block = np.full((counts.shape[1], len(grid)), np.nan)
            for j in range(counts.shape[1]):
                if pos[-1, j] > 0 and neg[-1, j] > 0:
                    fpr = np.r_[0.0, neg[:, j] / neg[-1, j]]
                    tpr = np.r_[0.0, pos[:, j] / pos[-1, j]]
                    block[j] = np.interp(grid, fpr, tpr)
            tpr_at[c].append(block)
    low = np.full((n_classes, len(grid)), np.nan)
    high = np.full((n_classes, len(grid)), np.nan)
    alpha = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    for c in range(n_classes):
        rates = np.concatenate(tpr_at[c], axis=0)
        kept = rates[~np.isnan(rates[:, 0])]
        if len(kept):
            low[c], high[c] = np.quantile(kept, alpha, axis=0)
    return grid, low, high
