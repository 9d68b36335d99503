"""DeLong's test: the fast (midrank) components against their definition, the AUROC against scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from paddle_chexnet.evaluation.delong import delong_covariance, delong_test, delong_variance, structural_components


def psi(x, y):
    return (x > y) + 0.5 * (x == y)


def direct_components(labels, scores):
    """V10 and V01 by definition: V10(X_i) = mean_j psi(X_i, Y_j), V01(Y_j) = mean_i psi(X_i, Y_j)."""
    x, y = scores[labels == 1], scores[labels == 0]
    kernel = np.array([[psi(xi, yj) for yj in y] for xi in x], dtype=np.float64)
    return kernel.mean(axis=1), kernel.mean(axis=0)


def direct_covariance(labels, score_sets):
    """S10/m + S01/n with S the sample covariances of the direct components (DeLong et al. 1988)."""
    comps = [direct_components(labels, s) for s in score_sets]
    v10 = np.array([c[0] for c in comps])
    v01 = np.array([c[1] for c in comps])
    m, n = v10.shape[1], v01.shape[1]
    k = len(score_sets)
    s10, s01 = np.zeros((k, k)), np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = np.sum((v10[r] - v10[r].mean()) * (v10[s] - v10[s].mean())) / (m - 1)
            s01[r, s] = np.sum((v01[r] - v01[r].mean()) * (v01[s] - v01[s].mean())) / (n - 1)
    return v10.mean(axis=1), s10 / m + s01 / n


def make(rng, n=80, ties=False):
    labels = (rng.random(n) < 0.35).astype(np.float64)
    a = rng.normal(size=n) + labels
    b = 0.6 * a + rng.normal(size=n) + 0.5 * labels  # correlated with a
    if ties:
        a, b = np.round(a), np.round(b)
    return labels, a, b


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_components_equal_their_definition(ties, seed):
    labels, a, b = make(np.random.default_rng(seed), ties=ties)
    auc, v10, v01 = structural_components(labels, np.stack([a, b]))
    for k, s in enumerate((a, b)):
        ref10, ref01 = direct_components(labels, s)
        np.testing.assert_allclose(v10[k], ref10, atol=1e-12)
        np.testing.assert_allclose(v01[k], ref01, atol=1e-12)
        assert auc[k] == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
        assert auc[k] == pytest.approx(ref01.mean(), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_covariance_equals_direct_implementation(ties):
    labels, a, b = make(np.random.default_rng(5), ties=ties)
    auc, cov = delong_covariance(labels, np.stack([a, b]))
    ref_auc, ref_cov = direct_covariance(labels, [a, b])
    np.testing.assert_allclose(auc, ref_auc, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    one_auc, variance = delong_variance(labels, a)
    assert one_auc == pytest.approx(ref_auc[0], abs=1e-12) and variance == pytest.approx(ref_cov[0, 0], rel=1e-10)


def test_p_value_from_direct_formula():
    labels, a, b = make(np.random.default_rng(9), n=150)
    result = delong_test(labels, a, b)
    ref_auc, ref_cov = direct_covariance(labels, [a, b])
    z = (ref_auc[0] - ref_auc[1]) / math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    assert result.diff == pytest.approx(ref_auc[0] - ref_auc[1], abs=1e-12)
    assert result.cov == pytest.approx(ref_cov[0, 1], rel=1e-9)


def test_nan_labels_are_left_out():
    labels, a, b = make(np.random.default_rng(2))
    holes = labels.copy()
    holes[::7] = np.nan
    keep = ~np.isnan(holes)
    full = delong_test(holes, a, b)
    sub = delong_test(labels[keep], a[keep], b[keep])
    assert full.p_value == pytest.approx(sub.p_value, abs=0) and full.auc_a == sub.auc_a


def test_identical_curves_and_undefined_class():
    labels, a, _ = make(np.random.default_rng(3))
    same = delong_test(labels, a, a.copy())
    assert same.p_value == 1.0 and same.diff == 0.0
    flat = delong_test(np.zeros(10), np.arange(10.0), np.arange(10.0))
    assert math.isnan(flat.p_value) and math.isnan(flat.auc_a)
    with pytest.raises(ValueError, match="positives and negatives"):
        structural_components(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="differ in length"):
        delong_test(labels, a, a[:-1])


def test_variance_matches_the_spread_over_repeated_samples():
    """DeLong's variance estimates the sampling variance of the AUROC (checked by simulation)."""
    rng = np.random.default_rng(11)
    aucs, variances = [], []
    for _ in range(400):
        labels = np.r_[np.ones(60), np.zeros(140)]
        scores = rng.normal(size=200) + 0.9 * labels
        auc, var = delong_variance(labels, scores)
        aucs.append(auc)
        variances.append(var)
    assert np.mean(variances) == pytest.approx(np.var(aucs), rel=0.2)
