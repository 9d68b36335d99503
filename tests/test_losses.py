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


# --------------------------------------------------------------------------- #
# Unknown (NaN) labels: masked in the loss and in the class-weight counts.
# --------------------------------------------------------------------------- #
NAN = float("nan")
PARTIAL = np.array([[1, NAN], [NAN, 0], [0, 1], [0, NAN], [1, 0]], dtype=np.float32)
PARTIAL_LOGITS = np.array([[2.0, -1.0], [0.5, 0.0], [-3.0, 4.0], [1.0, -2.0], [0.2, 0.7]], dtype=np.float32)


def masked_hand_loss(logits, labels, w_pos, w_neg) -> float:
    """The mean over known entries of the weighted BCE, written out."""
    total, known = 0.0, 0
    for row_x, row_y in zip(logits, labels):
        for c, (x, y) in enumerate(zip(row_x, row_y)):
            if math.isnan(y):
                continue
            p = sigmoid(float(x))
            total += -(w_pos[c] * y * math.log(p) + w_neg[c] * (1 - y) * math.log(1 - p))
            known += 1
    return total / known


def test_counts_and_weights_use_only_known_labels() -> None:
    # class 0: known 1, 0, 0, 1 (2 of 4 positive); class 1: known 0, 1, 0 (1 of 3)
    np.testing.assert_allclose(pos_weights(PARTIAL), [2 / 2, 2 / 1])
    w_pos, w_neg = chexnet_weights(PARTIAL)
    np.testing.assert_allclose(w_pos, [2 / 4, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(w_neg, [2 / 4, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("kind", ["none", "pos_weight", "chexnet"])
def test_loss_with_unknown_labels_is_the_mean_over_known_entries(kind: str) -> None:
    w_pos, w_neg = {"none": ([1, 1], [1, 1]), "pos_weight": ([1.0, 2.0], [1, 1]),
                    "chexnet": ([2 / 4, 2 / 3], [2 / 4, 1 / 3])}[kind]
    loss = make_loss(kind, PARTIAL)
    value = float(loss(paddle.to_tensor(PARTIAL_LOGITS), paddle.to_tensor(PARTIAL)))
    assert math.isfinite(value)
    assert value == pytest.approx(masked_hand_loss(PARTIAL_LOGITS, PARTIAL, w_pos, w_neg), rel=1e-6)


@pytest.mark.parametrize("kind", ["none", "pos_weight", "chexnet"])
def test_without_unknown_labels_the_loss_is_bitwise_the_plain_mean(kind: str) -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random((16, 14)) < 0.3).astype(np.float32)
    logits = rng.normal(0, 3, (16, 14)).astype(np.float32)
    loss = make_loss(kind, labels)
    x, y = paddle.to_tensor(logits), paddle.to_tensor(labels)
    positive = y * paddle.nn.functional.log_sigmoid(x)
    negative = (1.0 - y) * paddle.nn.functional.log_sigmoid(-x)
    if loss.w_pos is not None:
        positive = positive * loss.w_pos
    if loss.w_neg is not None:
        negative = negative * loss.w_neg
    plain = -(positive + negative).mean()  # the formula before unknown labels were masked
    assert float(loss(x, y)) == float(plain)


def test_all_unknown_gives_zero_loss_and_zero_gradient() -> None:
    logits = paddle.to_tensor(PARTIAL_LOGITS, stop_gradient=False)
    value = WeightedBCEWithLogits()(logits, paddle.full(PARTIAL.shape, NAN))
    value.backward()
    assert float(value) == 0.0
    assert np.array_equal(logits.grad.numpy(), np.zeros_like(PARTIAL_LOGITS))


def test_unknown_labels_give_no_gradient_to_a_network() -> None:
    paddle.seed(0)
    net = paddle.nn.Linear(3, 2)
    features = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    logits = net(paddle.to_tensor(features))
    logits.retain_grads()
    WeightedBCEWithLogits()(logits, paddle.to_tensor(PARTIAL)).backward()
    # d loss / d logit = (sigmoid(x) - y) / (number of known entries) where y is known, exactly 0 elsewhere
    known = ~np.isnan(PARTIAL)
    probs = 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))
    expected = np.where(known, (probs - np.nan_to_num(PARTIAL)) / known.sum(), 0.0)
    grad = logits.grad.numpy()
    assert np.all(grad[~known] == 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    # and the layer's weight gradient is the chain rule through the known entries only
    np.testing.assert_allclose(net.weight.grad.numpy(), features.T.astype(np.float64) @ expected, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(net.bias.grad.numpy(), expected.sum(axis=0), rtol=1e-5, atol=1e-7)
