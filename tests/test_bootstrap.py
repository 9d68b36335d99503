"""The fast bootstrap against a slow reference loop (same seed, same resamples), and the patient grouping."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from paddle_chexnet.evaluation.bootstrap import (
    Resampler,
    bootstrap_auroc,
    bootstrap_roc_band,
    paired_bootstrap_auroc,
    percentile_interval,
)
from paddle_chexnet.evaluation.delong import delong_variance
from paddle_chexnet.evaluation.grouping import PatientGroupingError, group_codes, patient_of


def pairwise_auroc(y, s):
    """AUROC by its definition: P(positive scores above negative), ties one half (checked against sklearn below)."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def reference_replicates(labels, scores, resampler):
    """Plain loop: spell out each resample image by image and score it by the pairwise definition."""
    members = [np.flatnonzero(resampler.groups == g) for g in range(resampler.n_groups)]
    out = []
    for block in resampler.picks():
        for picks in block:
            rows = np.concatenate([members[g] for g in picks])
            aucs = []
            for c in range(labels.shape[1]):
                y, s = labels[rows, c], scores[rows, c]
                known = ~np.isnan(y)
                y, s = y[known], s[known]
                aucs.append(pairwise_auroc(y, s))
            out.append(aucs)
    return np.array(out)


def make_set(rng, n_patients=40, n_classes=4, ties=False, unknown=0.0, rare=False):
    sizes = rng.integers(1, 5, size=n_patients)
    groups = np.repeat(np.arange(n_patients), sizes)
    n = len(groups)
    labels = (rng.random((n, n_classes)) < 0.3).astype(np.float64)
    if rare:  # one positive image only: about a third of the resamples lack it
        labels[:, -1] = 0.0
        labels[np.flatnonzero(groups == 3)[0], -1] = 1.0
    scores = rng.normal(size=(n, n_classes)) + labels
    if ties:
        scores = np.round(scores * 2) / 2
    if unknown:
        labels[rng.random(labels.shape) < unknown] = np.nan
    return labels, scores, groups


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("unknown", [0.0, 0.15])
@pytest.mark.parametrize("unit", ["patient", "image"])
def test_fast_bootstrap_equals_reference_loop(ties, unknown, unit):
    rng = np.random.default_rng(7)
    labels, scores, groups = make_set(rng, ties=ties, unknown=unknown, rare=True)
    codes = groups if unit == "patient" else np.arange(len(groups))
    resampler = Resampler(codes, n_resamples=60, seed=11, chunk_size=16)
    result = bootstrap_auroc(labels, scores, resampler, class_names=list("abcd"), warn=False)
    expected = reference_replicates(labels, scores, resampler)
    assert np.array_equal(np.isnan(result.replicates), np.isnan(expected))
    np.testing.assert_allclose(result.replicates, expected, rtol=0, atol=1e-12, equal_nan=True)
    # the rare class is skipped in some resamples, counted, and its interval uses the rest
    assert 0 < result.skipped[-1] < 60
    assert list(result.skipped) == list(np.isnan(expected).sum(axis=0))
    kept = expected[~np.isnan(expected[:, 0]), 0]
    np.testing.assert_allclose([result.ci_low[0], result.ci_high[0]], np.quantile(kept, [0.025, 0.975]), atol=1e-12)
    # the mean: classes defined on the full set; a resample with any of them undefined is skipped
    mean_ref = expected.mean(axis=1)
    np.testing.assert_allclose(result.mean_replicates, mean_ref, atol=1e-12, equal_nan=True)
    assert result.mean_skipped == int(np.isnan(mean_ref).sum()) == int(result.skipped.max())
    # point estimates and the reference's definition: sklearn on the full set and on a few resamples
    members = [np.flatnonzero(codes == g) for g in range(resampler.n_groups)]
    first = np.concatenate(list(resampler.picks()))[:5]
    for c in range(4):
        known = ~np.isnan(labels[:, c])
        assert result.estimate[c] == pytest.approx(roc_auc_score(labels[known, c], scores[known, c]), abs=1e-12)
        for b, picks in enumerate(first):
            rows = np.concatenate([members[g] for g in picks])
            y, s = labels[rows, c], scores[rows, c]
            y, s = y[~np.isnan(y)], s[~np.isnan(y)]
            if len(np.unique(y)) == 2:
                assert result.replicates[b, c] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_paired_bootstrap_uses_the_same_resamples():
    rng = np.random.default_rng(3)
    labels, scores_a, groups = make_set(rng, unknown=0.1, rare=True)
    scores_b = scores_a + rng.normal(scale=0.8, size=scores_a.shape)
    resampler = Resampler(groups, n_resamples=50, seed=5, chunk_size=8)
    paired = paired_bootstrap_auroc(labels, scores_a, scores_b, resampler, class_names=list("abcd"), warn=False)
    ref_a = reference_replicates(labels, scores_a, resampler)
    ref_b = reference_replicates(labels, scores_b, resampler)
    np.testing.assert_allclose(paired.diff.replicates, ref_a - ref_b, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(paired.diff.estimate, paired.a.estimate - paired.b.estimate, atol=0)
    assert paired.diff.mean == pytest.approx(paired.a.mean - paired.b.mean, abs=1e-15)
    diff0 = (ref_a - ref_b)[:, 0]
    np.testing.assert_allclose([paired.diff.ci_low[0], paired.diff.ci_high[0]],
                               np.quantile(diff0[~np.isnan(diff0)], [0.025, 0.975]), atol=1e-12)
    assert list(paired.a.skipped) == list(paired.b.skipped) == list(paired.diff.skipped)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_resamples_do_not_depend_on_the_block_size(chunk):
    groups = np.repeat(np.arange(30), 2)
    reference = np.concatenate(list(Resampler(groups, 25, seed=4, chunk_size=5).picks()))
    picks = np.concatenate(list(Resampler(groups, 25, seed=4, chunk_size=chunk).picks()))
    assert np.array_equal(picks, reference)
    counts = np.concatenate([c.T for c in Resampler(groups, 25, seed=4, chunk_size=chunk).counts()])
    assert np.array_equal(counts, np.stack([np.bincount(p, minlength=30) for p in reference]))
    assert counts.sum(axis=1).tolist() == [30] * 25


def test_seed_reproducible_and_different_seeds_differ():
    rng = np.random.default_rng(0)
    labels, scores, groups = make_set(rng)
    one = bootstrap_auroc(labels, scores, Resampler(groups, 40, seed=1), class_names=list("abcd"))
    again = bootstrap_auroc(labels, scores, Resampler(groups, 40, seed=1), class_names=list("abcd"))
    other = bootstrap_auroc(labels, scores, Resampler(groups, 40, seed=2), class_names=list("abcd"))
    assert np.array_equal(one.replicates, again.replicates)
    assert not np.allclose(one.replicates, other.replicates)


def test_image_bootstrap_spread_matches_delong():
    """Independent images: the bootstrap's standard deviation agrees with DeLong's (a different method)."""
    rng = np.random.default_rng(1)
    n = 2000
    y = (rng.random(n) < 0.3).astype(float)
    s = rng.normal(size=n) + 1.2 * y
    result = bootstrap_auroc(y[:, None], s[:, None], Resampler(np.arange(n), 1000, seed=0), class_names=["x"])
    _, variance = delong_variance(y, s)
    assert np.std(result.replicates[:, 0]) == pytest.approx(np.sqrt(variance), rel=0.12)


def test_patient_resampling_is_wider_when_images_of_a_patient_agree():
    rng = np.random.default_rng(2)
    patients = 300
    y = (rng.random(patients) < 0.3).astype(float)
    s = rng.normal(size=patients) + y
    groups = np.repeat(np.arange(patients), 4)  # four identical films per patient
    labels, scores = np.repeat(y, 4)[:, None], np.repeat(s, 4)[:, None]
    by_patient = bootstrap_auroc(labels, scores, Resampler(groups, 400, seed=0), class_names=["x"])
    by_image = bootstrap_auroc(labels, scores, Resampler(np.arange(len(groups)), 400, seed=0), class_names=["x"])
    width_patient = by_patient.ci_high[0] - by_patient.ci_low[0]
    width_image = by_image.ci_high[0] - by_image.ci_low[0]
    assert width_patient == pytest.approx(2 * width_image, rel=0.25)  # sqrt(4) times wider


def test_class_undefined_on_the_full_set():
    labels = np.array([[0, 1], [0, 0], [0, 1], [0, 0]], dtype=float)
    scores = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8], [0.4, 0.3]])
    result = bootstrap_auroc(labels, scores, Resampler(np.arange(4), 20, seed=0), class_names=["a", "b"],
                             warn=False)
    assert np.isnan(result.estimate[0]) and result.skipped[0] == 20
    assert np.isnan(result.ci_low[0]) and np.isnan(result.ci_high[0])
    assert result.n_used == 1
    # the mean covers class b only, so it is skipped exactly where b is
    assert result.mean_skipped == result.skipped[1]
    data = result.to_dict()
    assert data["per_class"]["a"]["estimate"] is None and data["mean"]["classes"] == 1


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1])
def test_bad_level(level):
    with pytest.raises(ValueError, match="confidence level"):
        percentile_interval(np.array([0.5, 0.6]), level)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 1"):
        Resampler(np.arange(3), 0)
    with pytest.raises(ValueError, match="resampler groups"):
        bootstrap_auroc(np.zeros((4, 1)), np.zeros((4, 1)), Resampler(np.arange(3), 2), class_names=["x"])
    with pytest.raises(ValueError, match="NaN or infinity"):
        bootstrap_auroc(np.array([[0.0], [1.0]]), np.array([[np.nan], [1.0]]), Resampler(np.arange(2), 2),
                        class_names=["x"])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        bootstrap_auroc(np.array([[0.0], [2.0]]), np.array([[0.0], [1.0]]), Resampler(np.arange(2), 2),
                        class_names=["x"])


def test_roc_band_equals_reference_when_every_score_is_a_cut_point():
    rng = np.random.default_rng(4)
    labels, scores, groups = make_set(rng, n_classes=2, ties=True, unknown=0.1)
    resampler = Resampler(groups, 30, seed=9, chunk_size=8)
    grid = np.linspace(0, 1, 21)
    _, low, high = bootstrap_roc_band(labels, scores, resampler, grid, level=0.9, max_thresholds=400)
    members = [np.flatnonzero(groups == g) for g in range(resampler.n_groups)]
    for c in range(2):
        curves = []
        for picks in np.concatenate(list(resampler.picks())):
            rows = np.concatenate([members[g] for g in picks])
            y, s = labels[rows, c], scores[rows, c]
            known = ~np.isnan(y)
            if len(np.unique(y[known])) == 2:
                fpr, tpr, _ = roc_curve(y[known], s[known], drop_intermediate=False)
                curves.append(np.interp(grid, fpr, tpr))
        ref_low, ref_high = np.quantile(np.array(curves), [0.05, 0.95], axis=0)
        np.testing.assert_allclose(low[c], ref_low, atol=1e-12)
        np.testing.assert_allclose(high[c], ref_high, atol=1e-12)
    assert (low <= high).all() and low.min() >= 0 and high.max() <= 1


# ---- patient grouping -------------------------------------------------------------------------


@pytest.mark.parametrize("name, patient", [
    ("00000013_005.png", "00000013"),
    ("images/00030805_000.png", "00030805"),
    ("C:\\data\\images_001\\00000001_002.PNG", "00000001"),
    ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "patient00001"),
    ("CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg", "patient64541"),
    ("patient00005/study3/view1_frontal.jpg", "patient00005"),
    ("/data/CheXpert-v1.0/train/patient12345/study10/view1_frontal.jpg", "patient12345"),
])
def test_patient_of(name, patient):
    assert patient_of(name) == patient


@pytest.mark.parametrize("name", ["scan_0001.png", "0000013_005.png", "00000013_005.jpg", "study1/view1_frontal.jpg",
                                  "patient1/view1_frontal.jpg", ""])
def test_patient_of_unknown_names_say_to_resample_images(name):
    with pytest.raises(PatientGroupingError, match="--bootstrap-unit image") as info:
        patient_of(name)
    assert repr(name) in str(info.value)


def test_group_codes():
    names = ["00000002_000.png", "00000001_000.png", "00000002_001.png", "x.png"]
    with pytest.raises(PatientGroupingError, match="'x.png'"):
        group_codes(names)
    codes, n = group_codes(names[:3])
    assert codes.tolist() == [0, 1, 0] and n == 2
    codes, n = group_codes(names, "image")
    assert codes.tolist() == [0, 1, 2, 3] and n == 4
    with pytest.raises(ValueError, match="unknown bootstrap unit"):
        group_codes(names, "study")


def test_grouping_on_nih_metadata(meta_dir):
    """CheXNet's test split: patients from the names equal NIH's 'Patient ID' column."""
    names = [line.split()[0] for line in open(meta_dir / "chexnet_test_list.txt") if line.strip()]
    wanted = set(names)
    with gzip.open(meta_dir / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        patient_id = {row["Image Index"]: int(row["Patient ID"]) for row in csv.DictReader(handle)
                      if row["Image Index"] in wanted}
    assert all(int(patient_of(n)) == patient_id[n] for n in names)
    codes, n_patients = group_codes(names)
    assert n_patients == len(set(patient_id.values()))


def test_grouping_on_chexpert_metadata(meta_dir):
    path = meta_dir.parent / "chexpert-meta" / "valid.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path) as handle:
        paths = [row["Path"] for row in csv.DictReader(handle)]
    codes, n_patients = group_codes(paths)
    assert n_patients == len({p.split("/")[2] for p in paths})
    assert len(paths) > n_patients  # several views per patient


def test_csv_rows_and_table():
    rng = np.random.default_rng(8)
    labels, scores, groups = make_set(rng, rare=True)
    result = bootstrap_auroc(labels, scores, Resampler(groups, 50, seed=0), class_names=["Aa", "Bb", "Cc", "Dd"],
                             unit="patient")
    rows = result.csv_rows()
    assert rows[0] == ["label", "auc", "ci_low", "ci_high"] and [r[0] for r in rows[1:]] == ["Aa", "Bb", "Cc", "Dd",
                                                                                            "Mean"]
    assert float(rows[1][2]) == pytest.approx(result.ci_low[0], abs=1e-6)
    assert float(rows[-1][1]) == pytest.approx(result.mean, abs=1e-6)
    table = result.table()
    assert "95% CI" in table and "50 resamples of patients" in table
    assert f"Dd {result.skipped[-1]}" in table  # the rare class's skipped resamples are reported
