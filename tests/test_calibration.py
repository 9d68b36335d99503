"""ECE against a direct loop, temperature scaling against a grid search and a known miscalibration."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.calibration import (
    DEFAULT_BINS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    read_calibration,
    reliability,
    write_calibration,
)


def direct_ece(labels, probs, n_bins):
    """ECE by its definition, bin by bin: [k/B, (k+1)/B), the last bin closed at 1."""
    total, n = 0.0, len(labels)
    for k in range(n_bins):
        low, high = k / n_bins, (k + 1) / n_bins
        inside = (probs >= low) & ((probs < high) if k < n_bins - 1 else (probs <= high))
        if inside.any():
            total += inside.sum() / n * abs(probs[inside].mean() - labels[inside].mean())
    return total


@pytest.mark.parametrize("n_bins", [1, 5, DEFAULT_BINS, 15])
def test_ece_equals_direct_definition(n_bins):
    rng = np.random.default_rng(n_bins)
    probs = rng.random(500) ** 2
    probs[:5] = [0.0, 1.0, 0.5, 0.2, 0.7]  # edges: 0.2 and 0.7 fall in the bin they open
    labels = (rng.random(500) < probs).astype(float)
    assert reliability(labels, probs, n_bins).ece == pytest.approx(direct_ece(labels, probs, n_bins), abs=1e-12)


def test_default_is_ten_equal_bins_and_nan_labels_are_left_out():
    probs = np.array([0.0, 0.1, 0.15, 0.95, 1.0, 0.5])
    labels = np.array([0, 0, 1, 1, np.nan, 0])
    r = reliability(labels, probs)
    assert len(r.counts) == 10 and np.allclose(r.edges, np.linspace(0, 1, 11))
    assert r.counts.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 1]  # 1.0 is unknown here
    assert r.observed[1] == 0.5 and r.mean_predicted[1] == pytest.approx(0.125)
    assert np.isnan(r.observed[2])
    keep = ~np.isnan(labels)
    assert r.ece == pytest.approx(direct_ece(labels[keep], probs[keep], 10), abs=1e-12)
    per_class = expected_calibration_error(np.stack([labels, labels], 1), np.stack([probs, probs], 1))
    assert per_class.shape == (2,) and per_class[0] == pytest.approx(r.ece)


def test_probabilities_must_be_probabilities():
    with pytest.raises(ValueError, match="logits"):
        reliability([0, 1], [-0.5, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        reliability([0, 1], [np.nan, 0.5])
    with pytest.raises(ValueError, match="at least 1"):
        reliability([0, 1], [0.1, 0.5], n_bins=0)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def nll(labels, probs, t):
    z = _logit(np.clip(probs, 1e-12, 1 - 1e-12)) / t
    return np.mean(np.logaddexp(0, z) - labels * z)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 3.0])
def test_temperature_recovers_a_known_miscalibration(true_temperature):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=40000) - 1
    labels = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(float)
    probs = 1 / (1 + np.exp(-z * true_temperature))  # the logits are scaled by T: fitting must undo it
    t = fit_temperature(labels, probs)
    assert t == pytest.approx(true_temperature, rel=0.05)
    # the optimum is the grid minimum of the loss
    grid = np.exp(np.linspace(np.log(t) - 0.2, np.log(t) + 0.2, 201))
    losses = [nll(labels, probs, g) for g in grid]
    assert nll(labels, probs, t) <= min(losses) + 1e-9


def test_fit_temperatures_improves_ece_and_keeps_auroc():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=1.5, size=(6000, len(CLASS_NAMES))) - 1.5
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    labels[:, -1] = 0  # one class without positives: left at T = 1
    labels[::11, 0] = np.nan
    probs = 1 / (1 + np.exp(-2.5 * z))
    scaling = fit_temperatures(labels, probs, source="val.txt")
    assert scaling.not_fitted == ["Hernia"] and scaling.temperatures[-1] == 1.0
    assert np.all(scaling.ece_after[:-1] < scaling.ece_before[:-1])
    calibrated = scaling.apply(probs)
    np.testing.assert_array_equal(calibrated[:, -1], probs[:, -1])
    known = ~np.isnan(labels[:, 0])
    assert roc_auc_score(labels[known, 0], calibrated[known, 0]) == pytest.approx(
        roc_auc_score(labels[known, 0], probs[known, 0]), abs=1e-12)


def test_saturated_probabilities_are_safe():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0], dtype=float)
    probs = np.array([0.0, 1e-30, 1.0, 1 - 1e-17, 0.7, 1.0, 0.0, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            t = fit_temperature(labels, probs)
            out = apply_temperature(probs[:, None], np.array([t]))
    assert np.isfinite(t) and 0.01 <= t <= 100
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_apply_temperature_definition():
    probs = np.array([[0.2, 0.9], [0.5, 0.01]])
    out = apply_temperature(probs, np.array([2.0, 0.5]))
    expected = 1 / (1 + np.exp(-_logit(probs) / np.array([2.0, 0.5])))
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="positive temperature"):
        apply_temperature(probs, np.array([1.0, 0.0]))


def test_calibration_json_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.random((200, len(CLASS_NAMES)))
    labels = (rng.random(probs.shape) < probs).astype(float)
    scaling = fit_temperatures(labels, probs)
    path = write_calibration(tmp_path / "calibration.json", scaling)
    data = json.loads(path.read_text())
    assert data["method"] == "temperature" and data["bins"] == 10 and set(data["temperatures"]) == set(CLASS_NAMES)
    again = read_calibration(path)
    np.testing.assert_array_equal(again.temperatures, scaling.temperatures)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"temperatures": {"Atelectasis": -1}}))
    with pytest.raises(ValueError, match="positive number") as info:
        read_calibration(bad)
    assert str(bad) in str(info.value)
    bad.write_text(json.dumps({"temperatures": {"Atelectasis": 1.0}}))
    with pytest.raises(ValueError, match="no temperature for Cardiomegaly"):
        read_calibration(bad)
