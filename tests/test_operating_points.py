"""Threshold rules against a brute-force search, thresholds.json compatibility, rates and their intervals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.bootstrap import Resampler
from paddle_chexnet.evaluation.operating_points import (
    METRICS,
    ThresholdRule,
    choose_threshold,
    choose_thresholds,
    confusion_counts,
    operating_points,
    operating_points_csv,
    parse_rule,
    read_thresholds_file,
    write_operating_points,
    write_thresholds,
)


@pytest.mark.parametrize("text, rule", [
    ("youden", ThresholdRule("youden")),
    (" F1 ", ThresholdRule("f1")),
    ("sensitivity=0.95", ThresholdRule("sensitivity", 0.95)),
    ("Specificity = 0.9", ThresholdRule("specificity", 0.9)),
    ("sensitivity=1", ThresholdRule("sensitivity", 1.0)),
])
def test_parse_rule(text, rule):
    assert parse_rule(text) == rule
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text, message", [
    ("best", "unknown threshold rule"),
    ("sensitivity", "unknown threshold rule"),
    ("sensitivity=high", "unknown threshold rule"),
    ("sensitivity=0.9.5", "not a number"),
    ("specificity=1.5", r"in \(0, 1\]"),
    ("sensitivity=0", r"in \(0, 1\]"),
    ("ppv=0.9", "unknown threshold rule"),
])
def test_parse_rule_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def brute_force(labels, scores, rule):
    """Every candidate (each score, and one above all), rates by definition, the rule's pick, highest on ties."""
    rows = []
    for t in sorted(set(scores.tolist()) | {np.nextafter(scores.max(), np.inf)}, reverse=True):
        called = scores >= t
        tp, fp = np.sum(called & (labels == 1)), np.sum(called & (labels == 0))
        fn, tn = np.sum(~called & (labels == 1)), np.sum(~called & (labels == 0))
        rows.append((t, tp / (tp + fn), tn / (tn + fp), 2 * tp / (2 * tp + fp + fn)))
    if rule.kind in ("youden", "f1"):
        value = [sens + spec - 1 if rule.kind == "youden" else f1 for _, sens, spec, f1 in rows]
        return rows[int(np.argmax(value))][0]  # rows run from the highest threshold down
    if rule.kind == "sensitivity":
        return max(t for t, sens, _, _ in rows if sens >= rule.target - 1e-12)
    return min(t for t, _, spec, _ in rows if spec >= rule.target - 1e-12)


@pytest.mark.parametrize("rule", ["youden", "f1", "sensitivity=0.95", "sensitivity=0.8", "specificity=0.9",
                                  "specificity=0.5"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_threshold_equals_brute_force(rule, ties, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(120) < 0.3).astype(float)
    scores = 1 / (1 + np.exp(-(rng.normal(size=120) + 1.5 * labels)))
    if ties:
        scores = np.round(scores, 1)
    parsed = parse_rule(rule)
    chosen = choose_threshold(labels, scores, parsed)
    assert chosen == brute_force(labels, scores, parsed)
    called = scores >= chosen
    if parsed.kind == "sensitivity":
        assert called[labels == 1].mean() >= parsed.target
    if parsed.kind == "specificity":
        assert (~called[labels == 0]).mean() >= parsed.target


def test_choose_threshold_ignores_unknown_and_needs_both_labels():
    labels = np.array([0, 1, np.nan, 1, 0])
    scores = np.array([0.1, 0.9, 0.99, 0.8, 0.3])
    assert choose_threshold(labels, scores, "youden") == 0.8
    with pytest.raises(ValueError, match="0 positives"):
        choose_threshold(np.zeros(4), np.arange(4.0), "f1")
    with pytest.raises(ValueError, match="Cardiomegaly"):
        labels2 = np.ones((4, 2))
        labels2[:2, 0] = 0
        choose_thresholds(labels2, np.random.default_rng(0).random((4, 2)), "youden", ["Atelectasis", "Cardiomegaly"])


def test_scores_reaching_one_keep_thresholds_within_one():
    labels = np.array([0, 0, 1, 1, 0])
    scores = np.array([1.0, 0.2, 1.0, 0.9, 0.1])
    threshold = choose_threshold(labels, scores, "specificity=1.0")
    assert threshold <= 1.0


def _val_set(rng, n=300):
    labels = (rng.random((n, len(CLASS_NAMES))) < 0.25).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.5 * labels - 1)))
    return labels, probs


def test_thresholds_json_round_trip_and_predict_compatibility(tmp_path):
    from paddle_chexnet.localization.predict import read_thresholds

    labels, probs = _val_set(np.random.default_rng(0))
    choice = choose_thresholds(labels, probs, "sensitivity=0.9", source="val_list.txt")
    path = write_thresholds(tmp_path / "thresholds.json", choice, extra={"calibrated": False})
    data = json.loads(path.read_text())
    assert data["rule"] == "sensitivity=0.9" and data["calibrated"] is False
    assert set(data["thresholds"]) == set(CLASS_NAMES)
    assert all(v["sensitivity"] >= 0.9 for v in data["validation"]["per_class"].values())
    np.testing.assert_array_equal(read_thresholds(str(path)), choice.thresholds)  # tools/predict.py's reader
    thresholds, rule = read_thresholds_file(path)
    np.testing.assert_array_equal(thresholds, choice.thresholds)
    assert rule == "sensitivity=0.9"


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"thresholds": {"Atelectasis": 0.5}}', "no threshold for Cardiomegaly"),
    ('{"thresholds": {"Lung": 0.5}}', "unknown finding 'Lung'"),
    ('{"thresholds": {"Atelectasis": 1.5}}', r"in \[0, 1\]"),
    ("[1, 2]", "expected an object"),
])
def test_read_thresholds_file_errors(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_thresholds_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="--choose-thresholds"):
        read_thresholds_file(tmp_path / "missing.json")


def test_confusion_counts_equal_sklearn():
    labels, probs = _val_set(np.random.default_rng(1))
    labels[::9, 2] = np.nan
    thresholds = np.linspace(0.2, 0.8, len(CLASS_NAMES))
    counts = confusion_counts(labels, probs, thresholds)
    for c in range(len(CLASS_NAMES)):
        known = ~np.isnan(labels[:, c])
        tn, fp, fn, tp = confusion_matrix(labels[known, c], probs[known, c] >= thresholds[c], labels=[0, 1]).ravel()
        assert counts[c].tolist() == [tp, fp, fn, tn]


def reference_rates(labels, scores, thresholds, resampler):
    """Plain loop over the same resamples: spell each out and count by definition."""
    members = [np.flatnonzero(resampler.groups == g) for g in range(resampler.n_groups)]
    out = {m: [] for m in METRICS}
    for picks in np.concatenate(list(resampler.picks())):
        rows = np.concatenate([members[g] for g in picks])
        row = {m: [] for m in METRICS}
        for c in range(labels.shape[1]):
            y, s = labels[rows, c], scores[rows, c]
            y, s = y[~np.isnan(y)], s[~np.isnan(y)]
            called = s >= thresholds[c]
            tp, fp = np.sum(called & (y == 1)), np.sum(called & (y == 0))
            fn, tn = np.sum(~called & (y == 1)), np.sum(~called & (y == 0))
            row["sensitivity"].append(tp / (tp + fn) if tp + fn else np.nan)
            row["specificity"].append(tn / (tn + fp) if tn + fp else np.nan)
            row["ppv"].append(tp / (tp + fp) if tp + fp else np.nan)
            row["npv"].append(tn / (tn + fn) if tn + fn else np.nan)
            row["f1"].append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
        for m in METRICS:
            out[m].append(row[m])
    return {m: np.array(v) for m, v in out.items()}


def test_operating_point_intervals_equal_reference_loop():
    rng = np.random.default_rng(2)
    n_patients = 60
    groups = np.repeat(np.arange(n_patients), rng.integers(1, 4, size=n_patients))
    labels = (rng.random((len(groups), 3)) < 0.3).astype(float)
    labels[rng.random(labels.shape) < 0.1] = np.nan
    scores = rng.random(labels.shape) * 0.6 + 0.4 * np.nan_to_num(labels)
    thresholds = np.array([0.5, 0.7, 0.98])  # the last calls almost nothing positive: PPV often undefined
    resampler = Resampler(groups, 80, seed=3, chunk_size=16)
    points = operating_points(labels, scores, thresholds, resampler, class_names=["a", "b", "c"], level=0.9)
    reference = reference_rates(labels, scores, thresholds, resampler)
    for m in METRICS:
        for c in range(3):
            values = reference[m][:, c]
            kept = values[~np.isnan(values)]
            assert points.rates[m].skipped[c] == len(values) - len(kept)
            if len(kept):
                np.testing.assert_allclose([points.rates[m].ci_low[c], points.rates[m].ci_high[c]],
                                           np.quantile(kept, [0.05, 0.95]), atol=1e-12)
    assert points.rates["ppv"].skipped[2] > 0


def test_operating_points_csv(tmp_path):
    labels, probs = _val_set(np.random.default_rng(4))
    choice = choose_thresholds(labels, probs, "youden")
    points = operating_points(labels, probs, choice.thresholds, Resampler(np.arange(len(labels)), 50, seed=0),
                              rule="youden")
    path = write_operating_points(tmp_path / "operating_points.csv", points)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:7] == ["label", "rule", "threshold", "tp", "fp", "fn", "tn"]
    assert header[7:10] == ["sensitivity", "sensitivity_ci_low", "sensitivity_ci_high"]
    assert len(header) == 7 + 3 * len(METRICS) and len(lines) == 1 + len(CLASS_NAMES)
    first = dict(zip(header, lines[1].split(",")))
    assert first["label"] == "Atelectasis" and first["rule"] == "youden"
    assert float(first["sensitivity_ci_low"]) <= float(first["sensitivity"]) <= float(first["sensitivity_ci_high"])
    no_ci = operating_points(labels, probs, choice.thresholds)
    row = dict(zip(header, operating_points_csv(no_ci).splitlines()[1].split(",")))
    assert row["sensitivity_ci_low"] == "" and row["sensitivity"] != ""
    assert json.dumps(points.to_dict())  # JSON-ready


def test_thresholds_from_a_sidecar_dict():
    from paddle_chexnet.evaluation.operating_points import thresholds_from_dict

    labels, probs = _val_set(np.random.default_rng(5))
    choice = choose_thresholds(labels, probs, "f1")
    thresholds, rule = thresholds_from_dict(choice.to_dict())
    np.testing.assert_array_equal(thresholds, choice.thresholds)
    assert rule == "f1"
    with pytest.raises(ValueError, match="^sidecar: no threshold"):
        thresholds_from_dict({"thresholds": {"Atelectasis": 0.5}}, where="sidecar")
