"""AUROC with unknown (NaN) labels equals scikit-learn on each class's known labels."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.evaluation.metrics import AUROC, UndefinedAUROCWarning, compute_auroc


def masked_set(seed: int, n: int = 300, c: int = 5, unknown: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.35).astype(np.float64)
    scores = np.round(labels * 0.8 + rng.normal(0, 0.6, (n, c)), 1)  # rounded: ties across classes
    labels[rng.random((n, c)) < unknown] = np.nan
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("unknown", [0.0, 0.3, 0.8])
def test_masked_auroc_equals_sklearn_on_known_labels(seed: int, unknown: float) -> None:
    labels, scores = masked_set(seed, unknown=unknown)
    ours = compute_auroc(labels, scores)
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        assert ours[c] == pytest.approx(roc_auc_score(labels[known, c], scores[known, c]), abs=1e-12)


def test_unknown_labels_change_the_auroc_only_of_their_class() -> None:
    labels, scores = masked_set(4, unknown=0.0)
    full = compute_auroc(labels, scores)
    masked = labels.copy()
    masked[:150, 2] = np.nan
    result = compute_auroc(masked, scores)
    np.testing.assert_array_equal(np.delete(result, 2), np.delete(full, 2))
    assert result[2] == pytest.approx(roc_auc_score(labels[150:, 2], scores[150:, 2]), abs=1e-12)
    assert result[2] != full[2]


def test_a_class_whose_known_labels_are_one_value_is_undefined() -> None:
    labels, scores = masked_set(5, unknown=0.0)
    labels[:, 1] = np.where(labels[:, 1] == 1, np.nan, 0.0)  # only negatives are known
    labels[:, 3] = np.nan  # nothing known
    with pytest.warns(UndefinedAUROCWarning, match="2 class"):
        result = compute_auroc(labels, scores, class_names=list("abcde"))
    assert np.isnan(result[1]) and np.isnan(result[3])
    assert np.isfinite(result[[0, 2, 4]]).all()


def test_the_metric_masks_unknown_labels_across_batches() -> None:
    labels, scores = masked_set(6)
    metric = AUROC(class_names=list("abcde"), gather=False)
    for start in range(0, len(labels), 64):
        metric.update(scores[start:start + 64], labels[start:start + 64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = metric.accumulate()
    expected = [roc_auc_score(labels[~np.isnan(labels[:, c]), c], scores[~np.isnan(labels[:, c]), c])
                for c in range(5)]
    np.testing.assert_allclose(list(metric.per_class().values()), expected, atol=1e-12)
    assert mean == pytest.approx(np.mean(expected), abs=1e-12)
