"""AUROC per finding, identical to scikit-learn's ``roc_auc_score``, as a Paddle metric.

The area under the ROC curve equals the Mann-Whitney statistic: the chance
that a random positive scores above a random negative, ties counting one
half. We compute it from average ranks, which gives the same value as
scikit-learn's trapezoidal ROC integration (ties included) in O(N log N)
without building the curve. Because it only depends on the order of the
scores, logits and probabilities give the same AUROC (up to ties that the
sigmoid creates when it saturates in float32).

A class whose labels take a single value in the set has no ROC curve: its
AUROC is NaN (never 0), a :class:`UndefinedAUROCWarning` says so, and the
mean leaves it out and reports how many classes it covers. Labels may be NaN
(unknown): they are left out of that class only.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import paddle

from paddle_chexnet.data.labels import CLASS_NAMES


class UndefinedAUROCWarning(UserWarning):
    """A class has only positives or only negatives, so its AUROC is undefined (NaN)."""


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    return np.asarray(value)


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores``, ties sharing their average rank (``scipy.stats.rankdata``)."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    group_rank = (starts + 1 + ends) / 2.0  # average of ranks starts+1 .. ends
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of one class; NaN when ``labels`` hold only one value (no warning here)."""
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores.astype(np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def compute_auroc(
    labels, scores, class_names: Sequence[str] | None = None, warn: bool = True
) -> np.ndarray:
    """Per-class AUROC of ``scores`` against 0/1 ``labels``, equal to ``sklearn.metrics.roc_auc_score``.

    Args:
        labels (array-like): ``[N, C]`` (or ``[N]``) of 0/1; NaN marks an unknown label,
            which is left out of that class.
        scores (array-like): ``[N, C]`` (or ``[N]``) of probabilities or logits.
        class_names (Sequence[str], optional): names for the warning. Default: None (indices).
        warn (bool, optional): warn about undefined classes. Default: True.

    Returns:
        numpy.ndarray: float64 ``[C]``; NaN for a class with a single label value.

    Raises:
        ValueError: shapes differ, scores are not finite, or labels are not 0/1/NaN.

    Examples:
        >>> compute_auroc([[0], [1], [1]], [[0.1], [0.8], [0.4]])
        array([1.])
    """
    labels = _to_numpy(labels).astype(np.float64)
    scores = _to_numpy(scores).astype(np.float64)
    if labels.ndim == 1 and scores.ndim == 1:
        labels, scores = labels[:, None], scores[:, None]
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {list(labels.shape)} and scores {list(scores.shape)} must both be [N, C]")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; check the model's output")
    known = ~np.isnan(labels)
    if not np.isin(labels[known], (0.0, 1.0)).all():
        bad = labels[known][~np.isin(labels[known], (0.0, 1.0))][0]
        raise ValueError(f"labels must be 0, 1 or NaN (unknown), got {bad}")
    result = np.array(
        [binary_auroc(labels[known[:, c], c], scores[known[:, c], c]) for c in range(labels.shape[1])]
    )
    undefined = np.flatnonzero(np.isnan(result))
    if warn and len(undefined):
        names = [class_names[c] if class_names is not None else str(c) for c in undefined]
        warnings.warn(
            f"AUROC undefined for {len(undefined)} class(es) whose labels take a single value in this set: "
            f"{', '.join(names)}; reported as NaN and left out of the mean",
            UndefinedAUROCWarning,
            stacklevel=2,
        )
    return result


def mean_auroc(per_class: Mapping[str, float] | Sequence[float] | np.ndarray) -> tuple[float, int]:
    """Mean over the classes whose AUROC is defined, and how many those are.

    Returns:
        tuple[float, int]: ``(mean, n_used)``; ``(nan, 0)`` when no class is defined.

    Examples:
        >>> mean_auroc([0.75, float("nan"), 0.25])
        (0.5, 2)
    """
    values = np.asarray(list(per_class.values()) if isinstance(per_class, Mapping) else per_class, np.float64)
    defined = values[~np.isnan(values)]
    if len(defined) == 0:
        return float("nan"), 0
    return float(defined.mean()), int(len(defined))


def _gather_rows(rows: np.ndarray) -> np.ndarray:
    """All ranks' ``[n_i, K]`` float64 rows, concatenated in rank order (variable ``n_i``)."""
    import paddle.distributed as dist

    sizes: list[paddle.Tensor] = []
    dist.all_gather(sizes, paddle.to_tensor([rows.shape[0]], dtype="int64"))
    counts = [int(s.numpy()[0]) for s in sizes]
    longest = max(max(counts), 1)  # never gather zero-size tensors
    padded = np.zeros((longest, rows.shape[1]), dtype=np.float64)
    padded[: rows.shape[0]] = rows
    parts: list[paddle.Tensor] = []
    dist.all_gather(parts, paddle.to_tensor(padded))
    return np.concatenate([p.numpy()[:n] for p, n in zip(parts, counts)], axis=0)


class AUROC(paddle.metric.Metric):
    """Mean AUROC over the findings, for ``paddle.Model.prepare(metrics=[AUROC()])`` or a plain loop.

    ``update`` stores predictions and labels; ``accumulate`` computes the
    per-class AUROC over everything seen since ``reset`` and returns the mean
    over the classes where it is defined. With several processes
    (``paddle.distributed.get_world_size() > 1``) ``accumulate`` first gathers every
    rank's rows, so each rank returns the whole-set AUROC (every rank must call it).

    Args:
        class_names (Sequence[str], optional): one name per column. Default: CLASS_NAMES.
        name (str, optional): the metric's name in logs. Default: 'auroc'.
        gather (bool, optional): gather across ranks in ``accumulate``; ``None`` gathers
            when the world size is above 1. ``paddle.Model`` already gathers the
            outputs in *evaluation* before ``update``; gathering again is harmless
            (AUROC of the set repeated is the same) but costs time, so pass ``False``
            there if you only evaluate. Default: None.

    Examples:
        >>> m = AUROC(class_names=["a", "b"])
        >>> m.update(np.array([[0.9, 0.1], [0.2, 0.7]]), np.array([[1, 0], [0, 1]]))
        >>> m.accumulate()
        1.0
        >>> m.per_class()
        {'a': 1.0, 'b': 1.0}
    """

    def __init__(
        self, class_names: Sequence[str] = CLASS_NAMES, name: str = "auroc", gather: bool | None = None
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self._name = name
        self.gather = gather
        self.n_used = 0
        self.reset()

    def reset(self) -> None:
        """Forget all stored predictions."""
        self._preds: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._per_class: np.ndarray | None = None

    def update(self, preds, labels) -> None:
        """Store a batch: ``preds`` ``[B, C]`` (logits or probabilities) and ``labels`` ``[B, C]``.

        Tensors or NumPy arrays; ``paddle.Model`` passes NumPy after :meth:`compute`.
        """
        preds = _to_numpy(preds).astype(np.float64)
        labels = _to_numpy(labels).astype(np.float64)
        num_classes = len(self.class_names)
        if preds.ndim != 2 or preds.shape[1] != num_classes or labels.shape != preds.shape:
            raise ValueError(
                f"AUROC.update expects preds and labels of shape [B, {num_classes}], "
                f"got {list(preds.shape)} and {list(labels.shape)}"
            )
        self._preds.append(preds)
        self._labels.append(labels)
        self._per_class = None

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        num_classes = len(self.class_names)
        preds = np.concatenate(self._preds) if self._preds else np.zeros((0, num_classes))
        labels = np.concatenate(self._labels) if self._labels else np.zeros((0, num_classes))
        gather = self.gather if self.gather is not None else paddle.distributed.get_world_size() > 1
        if gather:
            rows = _gather_rows(np.concatenate([preds, labels], axis=1))
            preds, labels = rows[:, :num_classes], rows[:, num_classes:]
        return preds, labels

    def _compute(self) -> np.ndarray:
        if self._per_class is None:
            preds, labels = self._rows()
            if len(preds) == 0:
                self._per_class = np.full(len(self.class_names), np.nan)
            else:
                self._per_class = compute_auroc(labels, preds, self.class_names)
        return self._per_class

    def accumulate(self) -> float:
        """Mean AUROC over the classes where it is defined (NaN if none); sets :attr:`n_used`."""
        mean, self.n_used = mean_auroc(self._compute())
        return mean

    def per_class(self) -> dict[str, float]:
        """``{class name: AUROC}`` over everything seen (NaN where undefined)."""
        return {name: float(v) for name, v in zip(self.class_names, self._compute())}

    def name(self) -> list[str]:
        return [self._name]
