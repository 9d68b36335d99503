"""Losses against hand computations."""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from paddle_chexnet.engine.losses import (
    WeightedBCEWithLogits,
    chexnet_weights,
    make_loss,
    pos_weights,
)

LABELS = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)  # class 0: 1 of 4, class 1: 1 of 4
LOGITS = np.array([[2.0, -1.0], [0.5, 0.0], [-3.0, 4.0], [1.0, -2.0]], dtype=np.float32)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_loss(w_pos, w_neg) -> float:
    total = 0.0
    for row_x, row_y in zip(LOGITS, LABELS):
        for c, (x, y) in enumerate(zip(row_x, row_y)):
            p = sigmoid(float(x))
            total += -(w_pos[c] * y * math.log(p) + w_neg[c] * (1 - y) * math.log(1 - p))
    return total / LABELS.size


def test_weights_from_label_frequencies() -> None:
    labels = np.array([[1, 1], [0, 1], [0, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(pos_weights(labels), [3.0, 1.0 / 3.0])
    w_pos, w_neg = chexnet_weights(labels)
    np.testing.assert_allclose(w_pos, [0.75, 0.25])
    np.testing.assert_allclose(w_neg, [0.25, 0.75])


def test_class_without_positives_gets_weight_one_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([[1, 0], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(pos_weights(labels, class_names=["A", "Hernia"]), [1.0, 1.0])
    assert "Hernia" in caplog.text


@pytest.mark.parametrize("kind", ["none", "pos_weight", "chexnet"])
def test_loss_equals_the_hand_computation(kind: str) -> None:
    loss = make_loss(kind, LABELS)
    if kind == "none":
        expected = hand_loss([1, 1], [1, 1])
    elif kind == "pos_weight":
        expected = hand_loss([3.0, 3.0], [1, 1])
    else:
        expected = hand_loss([0.75, 0.75], [0.25, 0.25])
    value = float(loss(paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS)))
    assert value == pytest.approx(expected, rel=1e-6)


def test_unweighted_equals_paddle_bce_and_is_finite_for_large_logits() -> None:
    logits = paddle.to_tensor(np.array([[80.0, -80.0, 0.3]], dtype=np.float32))
    labels = paddle.to_tensor(np.array([[0.0, 1.0, 1.0]], dtype=np.float32))
    ours = float(WeightedBCEWithLogits()(logits, labels))
    reference = float(paddle.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    assert math.isfinite(ours)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_weighted_kinds_need_labels() -> None:
    with pytest.raises(ValueError, match="needs the training labels"):
        make_loss("pos_weight")
    with pytest.raises(ValueError, match="class_weighting must be one of"):
        make_loss("focal", LABELS)
