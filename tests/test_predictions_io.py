"""Predictions CSVs: this project's (as reports.write_outputs writes it) and reproduce-chexnet's, and their errors."""
from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.data.label_lists import LabelList, read_label_list, write_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.metrics import compute_auroc
from paddle_chexnet.evaluation.predictions import (
    PredictionsError,
    align_predictions,
    check_same_images,
    load_scored_set,
    read_predictions,
)
from paddle_chexnet.evaluation.reports import EvalResult, write_outputs


def make(rng, n=40):
    names = [f"{p:08d}_{f:03d}.png" for p in range(1, n // 2 + 1) for f in range(2)]
    labels = (rng.random((len(names), len(CLASS_NAMES))) < 0.3).astype(np.float32)
    labels[:2] = [[1] * 14, [0] * 14]
    probs = rng.random(labels.shape).astype(np.float32)
    return names, labels, probs


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_reads_what_eval_writes(tmp_path):
    names, labels, probs = make(np.random.default_rng(0))
    per_class = dict(zip(CLASS_NAMES, compute_auroc(labels, probs)))
    result = EvalResult(names, CLASS_NAMES, probs, labels, per_class, float(np.mean(list(per_class.values()))), 14)
    files = write_outputs(result, tmp_path / "eval", plot=False)
    preds = read_predictions(files["preds"])
    assert preds.form == "paddle-chexnet" and preds.names == names and preds.file_labels is None
    np.testing.assert_allclose(preds.scores, probs, rtol=1e-7)  # written with 8 significant digits
    write_label_list(tmp_path / "list.txt", LabelList(names, labels))
    scored = load_scored_set(files["preds"], tmp_path / "list.txt")
    aucs = compute_auroc(scored.labels, scored.scores)
    for c in range(len(CLASS_NAMES)):
        assert aucs[c] == pytest.approx(roc_auc_score(labels[:, c], probs[:, c]), abs=1e-6)


def test_reproduce_chexnet_form_with_and_without_labels(tmp_path):
    names, labels, probs = make(np.random.default_rng(1))
    header = ["Image Index"] + [f"prob_{c}" for c in CLASS_NAMES]
    path = write_csv(tmp_path / "preds.csv", header, [[n, *p] for n, p in zip(names, probs.astype(float))])
    preds = read_predictions(path)
    assert preds.form == "reproduce-chexnet" and preds.file_labels is None
    np.testing.assert_array_equal(preds.scores, probs.astype(np.float64))
    # labels beside the scores, columns shuffled, NIH spelling 'Infiltrate', an unknown label left empty
    order = np.random.default_rng(2).permutation(28)
    cols = [f"prob_{c}" for c in CLASS_NAMES] + [c if c != "Infiltration" else "Infiltrate" for c in CLASS_NAMES]
    values = np.concatenate([probs, labels], axis=1).astype(float)
    rows = [[n] + ["" if (i == 0 and order[j] == 14) else repr(float(v[order[j]])) for j in range(28)]
            for i, (n, v) in enumerate(zip(names, values))]
    path = write_csv(tmp_path / "with_labels.csv", ["Image Index"] + [cols[j] for j in order], rows)
    preds = read_predictions(path)
    np.testing.assert_array_equal(preds.scores, probs.astype(np.float64))
    assert np.isnan(preds.file_labels[0, 0])
    np.testing.assert_array_equal(preds.file_labels[1:], labels[1:])


def test_alignment_follows_the_label_list(tmp_path):
    names, labels, probs = make(np.random.default_rng(3))
    order = np.random.default_rng(4).permutation(len(names))
    path = write_csv(tmp_path / "p.csv", ["Image Index", *CLASS_NAMES],
                     [[names[i], *probs[i].astype(float)] for i in order])
    write_label_list(tmp_path / "list.txt", LabelList(names, labels))
    scored = load_scored_set(path, tmp_path / "list.txt")
    assert scored.names == names
    np.testing.assert_array_equal(scored.scores, probs.astype(np.float64))
    np.testing.assert_array_equal(scored.labels, labels)


def test_images_missing_on_either_side(tmp_path):
    names, labels, probs = make(np.random.default_rng(5))
    write_label_list(tmp_path / "list.txt", LabelList(names[:-3], labels[:-3]))
    path = write_csv(tmp_path / "p.csv", ["Image Index", *CLASS_NAMES],
                     [[n, *p] for n, p in zip(names[2:], probs[2:].astype(float))])
    label_list = read_label_list(tmp_path / "list.txt")
    preds = read_predictions(path)
    with pytest.raises(PredictionsError, match=r"3 images of .*p\.csv are not in .*list\.txt, first: "
                                               + names[-3]):
        align_predictions(preds, label_list)
    preds_sub = read_predictions(write_csv(tmp_path / "q.csv", ["Image Index", *CLASS_NAMES],
                                           [[n, *p] for n, p in zip(names[2:-3], probs[2:-3].astype(float))]))
    with pytest.raises(PredictionsError, match=r"2 images of .*list\.txt have no prediction in .*q\.csv, first: "
                                               + names[0]):
        align_predictions(preds_sub, label_list)
    scored = align_predictions(preds_sub, label_list, missing="ignore")
    assert scored.not_predicted == names[:2] and scored.names == names[2:-3]


def test_labels_in_the_file_that_disagree_are_reported(tmp_path, caplog):
    names, labels, probs = make(np.random.default_rng(6))
    header = ["Image Index"] + [f"prob_{c}" for c in CLASS_NAMES] + list(CLASS_NAMES)
    flipped = labels.copy()
    flipped[5, 3] = 1 - flipped[5, 3]
    path = write_csv(tmp_path / "p.csv", header, [[n, *p, *y] for n, p, y in zip(names, probs.astype(float),
                                                                                    flipped.astype(int))])
    write_label_list(tmp_path / "list.txt", LabelList(names, labels))
    with caplog.at_level(logging.WARNING):
        load_scored_set(path, tmp_path / "list.txt")
    assert "1 labels stored in the file differ" in caplog.text and names[5] in caplog.text


GOOD = ["Image Index", *CLASS_NAMES]
ROW = ["00000001_000.png"] + ["0.5"] * 14


@pytest.mark.parametrize("header, rows, message", [
    (["name", *CLASS_NAMES], [ROW], "first column must hold the image names"),
    (GOOD + ["Lung Opacity"], [ROW + ["1"]], r"unknown column 'Lung Opacity' \(column 16\)"),
    (GOOD[:-1], [ROW[:-1]], "no score column for Hernia"),
    (["Image Index"] + [f"prob_{c}" for c in CLASS_NAMES[:-1]], [ROW[:-1]], "no score column for prob_Hernia"),
    (GOOD + ["Infiltrate"], [ROW + ["0.5"]], "Infiltration has two columns"),
    (GOOD, [ROW[:5] + ["high"] + ROW[6:]], r"line 2, column 'Mass', image 00000001_000.png: score 'high' "
                                           r"is not a number"),
    (GOOD, [ROW[:5] + ["nan"] + ROW[6:]], r"line 2, column 'Mass', image 00000001_000.png: score is 'nan'"),
    (GOOD, [ROW, ROW[:3] + ["inf"] + ROW[4:]], "line 3"),
    (GOOD, [ROW, ROW], r"line 3: image 00000001_000.png is listed twice \(first on line 2\)"),
    (GOOD, [ROW + ["0.1"]], "line 2: 16 cells, the header has 15 columns"),
    (GOOD, [], "a header but no predictions"),
    (["Image Index"] + [f"prob_{c}" for c in CLASS_NAMES] + ["Atelectasis"], [ROW + ["1"]],
     "label columns for some classes but not for Cardiomegaly"),
    (["Image Index"] + [f"prob_{c}" for c in CLASS_NAMES] + list(CLASS_NAMES), [ROW + ["0.5"] * 14],
     "label '0.5' must be 0, 1 or empty"),
])
def test_errors_name_the_problem(tmp_path, header, rows, message):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(PredictionsError, match=message) as info:
        read_predictions(path)
    assert str(path) in str(info.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(PredictionsError, match="empty file"):
        read_predictions(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.csv")


def test_check_same_images(tmp_path):
    a = read_predictions(write_csv(tmp_path / "a.csv", GOOD, [ROW, ["00000002_000.png"] + ROW[1:]]))
    b = read_predictions(write_csv(tmp_path / "b.csv", GOOD, [["00000002_000.png"] + ROW[1:], ROW]))
    check_same_images(a, b)  # order does not matter
    c = read_predictions(write_csv(tmp_path / "c.csv", GOOD, [ROW, ["00000003_000.png"] + ROW[1:]]))
    with pytest.raises(PredictionsError, match=r"1 only in .*a\.csv \(first: 00000002_000.png\); 1 only in "
                                               r".*c\.csv \(first: 00000003_000.png\)"):
        check_same_images(a, c)
