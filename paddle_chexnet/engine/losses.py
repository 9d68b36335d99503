"""Multi-label losses on logits: plain BCE and the two class weightings used for ChestX-ray14.

Findings are rare (Hernia: about 0.2% of the training images), so the
literature weights the positive term. Two conventions are offered, both
computed once from the training labels:

* ``'pos_weight'``: ``pos_weight[c] = N_neg[c] / N_pos[c]`` on the positive
  term (what ``BCEWithLogitsLoss(pos_weight=...)`` does in PyTorch);
* ``'chexnet'``: CheXNet's ``W+ = N_neg / N`` on the positive term and
  ``W- = N_pos / N`` on the negative term, per class.

All losses take logits (the network's output) and are computed through
``log_sigmoid`` so that rare findings whose probabilities approach 0 or 1 stay
finite. NaN labels (unknown) are masked everywhere: in the loss (mean over
the known entries) and in the counts behind both weightings.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

logger = logging.getLogger(__name__)


CLASS_WEIGHTINGS = ("none", "pos_weight", "chexnet")


def positive_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class positive and negative counts of a 0/1 ``[N, C]`` label array; NaN (unknown) counts as neither."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, C], got shape {list(labels.shape)}")
    positives = np.nansum(labels, axis=0)
    return positives, (~np.isnan(labels)).sum(axis=0) - positives


def _warn_without_positives(positives: np.ndarray, class_names: Sequence[str] | None) -> None:
    empty = np.flatnonzero(positives == 0)
    if empty.size:
        names = [class_names[i] if class_names else f"class {i}" for i in empty]
        logger.warning(
            "no positive training image for %s: their positive weight is set to 1 (unweighted)", ", ".join(names)
        )


def pos_weights(labels: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
    """``N_neg / N_pos`` per class over its known labels (1.0 for a class without positives, with a warning)."""
    positives, negatives = positive_counts(labels)
    _warn_without_positives(positives, class_names)
    return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)


def chexnet_weights(labels: np.ndarray, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CheXNet's ``(W+, W-) = (N_neg / N, N_pos / N)`` per class, ``N`` its known labels ((1, 1) without positives)."""
    positives, negatives = positive_counts(labels)
    _warn_without_positives(positives, class_names)
    total = positives + negatives
    w_pos = np.where(positives > 0, negatives / total, 1.0)
    w_neg = np.where(positives > 0, positives / total, 1.0)
    return w_pos.astype(np.float32), w_neg.astype(np.float32)


class WeightedBCEWithLogits(nn.Layer):
    """``-(w_pos * y * log(p) + w_neg * (1 - y) * log(1 - p))``, averaged over batch and classes.

    With ``w_pos = w_neg = 1`` this is plain binary cross-entropy on logits.
    Labels that are NaN (unknown, e.g. an ignored uncertain CheXpert label) are
    left out: the mean is over the known entries only (0 when there are none),
    and unknown entries get no gradient.

    Args:
        w_pos (Sequence[float], optional): weight of each class's positive term. Default: None (1).
        w_neg (Sequence[float], optional): weight of each class's negative term. Default: None (1).

    Examples:
        >>> import paddle
        >>> loss = WeightedBCEWithLogits()
        >>> float(loss(paddle.zeros([2, 3]), paddle.ones([2, 3])))  # -log(0.5)
        0.6931471824645996
    """

    def __init__(self, w_pos: Sequence[float] | None = None, w_neg: Sequence[float] | None = None) -> None:
        super().__init__()
        self.w_pos = None if w_pos is None else paddle.to_tensor(np.asarray(w_pos, dtype=np.float32))
        self.w_neg = None if w_neg is None else paddle.to_tensor(np.asarray(w_neg, dtype=np.float32))

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        logits = logits.astype("float32")
        labels = labels.astype("float32")
        # NaN labels are unknown: their terms are computed on a 0 label and
        # multiplied by 0 (finite, so their gradient is exactly 0), and the mean
        # is rescaled from all entries to the known ones. Without NaN the mask is
        # all ones and the scale exactly 1, so the result is the plain mean.
        known = paddle.logical_not(paddle.isnan(labels))
        mask = known.astype("float32")
        labels = paddle.where(known, labels, paddle.zeros_like(labels))
        positive_term = labels * F.log_sigmoid(logits)
        negative_term = (1.0 - labels) * F.log_sigmoid(-logits)
        if self.w_pos is not None:
            positive_term = positive_term * self.w_pos
        if self.w_neg is not None:
            negative_term = negative_term * self.w_neg
        scale = paddle.numel(mask).astype("float32") / paddle.clip(mask.sum(), min=1.0)
        return -((positive_term + negative_term) * mask).mean() * scale


def make_loss(
    class_weighting: str = "none", train_labels: np.ndarray | None = None, class_names: Sequence[str] | None = None
) -> WeightedBCEWithLogits:
    """The training loss for a class weighting.

    Args:
        class_weighting (str, optional): ``'none'``, ``'pos_weight'`` or ``'chexnet'``. Default: 'none'.
        train_labels (numpy.ndarray, optional): the training set's 0/1/NaN ``[N, C]`` labels; required
            unless ``class_weighting`` is ``'none'``. Default: None.
        class_names (Sequence[str], optional): for the warning about classes without positives. Default: None.
    """
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {class_weighting!r}")
    if class_weighting == "none":
        return WeightedBCEWithLogits()
    if train_labels is None:
        raise ValueError(f"class_weighting={class_weighting!r} needs the training labels to count positives")
    if class_weighting == "pos_weight":
        return WeightedBCEWithLogits(w_pos=pos_weights(train_labels, class_names))
    w_pos, w_neg = chexnet_weights(train_labels, class_names)
    return WeightedBCEWithLogits(w_pos=w_pos, w_neg=w_neg)
