"""eval.py's statistics end to end: intervals, --preds, thresholds, calibration, the sidecar, report.html.

Scored sets are generated here (NIH-style names, several films per patient); every
number eval.py writes is checked against scikit-learn, a direct implementation of its
formula in this file, or the library function it must have called with the same seed.
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import cli_env, write_weights
from PIL import Image
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.metrics import roc_auc_score
from test_html_report import browser  # noqa: F401  (the headless Chromium fixture, skipped when absent)

from paddle_chexnet.cli import eval_statistics
from paddle_chexnet.cli import evaluate as eval_script
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation import bootstrap, calibration, operating_points
from paddle_chexnet.evaluation.bootstrap import Resampler, bootstrap_auroc
from paddle_chexnet.evaluation.calibration import apply_temperature
from paddle_chexnet.evaluation.metrics import UndefinedAUROCWarning
from paddle_chexnet.evaluation.operating_points import choose_thresholds
from paddle_chexnet.evaluation.statistics import StatisticsOptions, compute_statistics
from paddle_chexnet.models.registry import build_network
from paddle_chexnet.models.spec import ModelSpec, read_spec, sidecar_path, spec_record, update_sidecar_spec

REPO = Path(__file__).resolve().parents[1]
C = len(CLASS_NAMES)


# --------------------------------------------------------------------------- generated data
def scored_set(seed: int = 0, patients: int = 60, sharpness: float = 1.0):
    """NIH names (1-3 films per patient), 0/1 labels, probabilities that rank positives higher."""
    rng = np.random.default_rng(seed)
    names = [f"{p:08d}_{f:03d}.png" for p in range(1, patients + 1) for f in range(int(rng.integers(1, 4)))]
    labels = (rng.random((len(names), C)) < 0.3).astype(np.float64)
    probs = expit(sharpness * (rng.normal(size=labels.shape) + 1.5 * labels - 1))
    return names, labels, np.round(probs, 8)


def write_label_list(path: Path, names, labels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n} {' '.join(str(int(v)) for v in row)}\n" for n, row in zip(names, labels)))
    return path


def write_preds(path: Path, names, probs, form: str = "paddle-chexnet", labels=None, order=None) -> Path:
    """A predictions CSV; ``order`` permutes the rows, reproduce-chexnet's form reverses the columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = range(len(names)) if order is None else order
    columns = list(range(C))
    if form == "reproduce-chexnet":
        columns = columns[::-1]
        header = ["Image Index", *(f"prob_{CLASS_NAMES[c]}" for c in columns)]
        header += [CLASS_NAMES[c] for c in columns] if labels is not None else []
    else:
        header = ["Image Index", *CLASS_NAMES]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in rows:
            row = [names[i], *(repr(float(probs[i, c])) for c in columns)]
            row += [int(labels[i, c]) for c in columns] if labels is not None and form == "reproduce-chexnet" else []
            writer.writerow(row)
    return path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def run_eval(*argv) -> int:
    return eval_script.entry([str(a) for a in argv])


def ece_reference(y, p, bins: int = 10) -> float:
    """ECE written out: equal-width bins [k/B, (k+1)/B), the last closed."""
    total, n = 0.0, len(y)
    for k in range(bins):
        low, high = k / bins, (k + 1) / bins
        inside = (p >= low) & ((p < high) if k < bins - 1 else (p <= high))
        if inside.any():
            total += inside.sum() / n * abs(p[inside].mean() - y[inside].mean())
    return total


def youden_reference(y, p) -> float:
    """The highest threshold maximising sensitivity + specificity over the scores (and one above them)."""
    best, best_t = -np.inf, None
    for t in sorted(set(p.tolist()) | {np.nextafter(p.max(), np.inf)}, reverse=True):
        j = (p[y == 1] >= t).mean() + (p[y == 0] < t).mean()
        if j > best + 1e-15:
            best, best_t = j, t
    return best_t


@pytest.fixture()
def scored(tmp_path):
    names, labels, probs = scored_set()
    order = np.random.default_rng(1).permutation(len(names))  # the file's rows in another order
    return (names, labels, probs, write_label_list(tmp_path / "list.txt", names, labels),
            write_preds(tmp_path / "in" / "preds.csv", names, probs, order=order))


# --------------------------------------------------------------------------- --preds, the intervals
def test_preds_file_scored_as_the_library_and_sklearn_say(tmp_path, scored):
    names, labels, probs, label_list, preds = scored
    out = tmp_path / "out"
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", out, "--bootstrap", 300,
                    "--seed", 3, "--no-plot") == 0
    rows = read_csv(out / "aucs.csv")
    assert rows[0] == ["label", "auc", "ci_low", "ci_high"]
    assert [r[0] for r in rows[1:]] == [*CLASS_NAMES, "Mean"]
    expected = bootstrap_auroc(labels, probs, Resampler.from_names(names, "patient", 300, seed=3), CLASS_NAMES)
    for c, (name, auc, low, high) in enumerate(rows[1:-1]):
        assert float(auc) == pytest.approx(roc_auc_score(labels[:, c], probs[:, c]), abs=1e-6)
        assert float(low) == pytest.approx(expected.ci_low[c], abs=1e-6)
        assert float(high) == pytest.approx(expected.ci_high[c], abs=1e-6)
        assert float(low) < float(auc) < float(high)
    assert float(rows[-1][1]) == pytest.approx(np.mean([float(r[1]) for r in rows[1:-1]]), abs=1e-6)
    assert float(rows[-1][2]) == pytest.approx(expected.mean_ci_low, abs=1e-6)
    metrics = strict_json(out / "metrics.json")
    assert metrics["bootstrap"]["unit"] == "patient" and metrics["bootstrap"]["resamples"] == 300
    assert metrics["bootstrap"]["seed"] == 3 and metrics["images"] == len(names)
    assert metrics["predictions_form"] == "paddle-chexnet" and metrics["calibration"]["bins"] == 10
    for c, name in enumerate(CLASS_NAMES):
        assert metrics["calibration"]["ece"][name] == pytest.approx(ece_reference(labels[:, c], probs[:, c]),
                                                                    abs=1e-12)
    assert metrics["thresholds_chosen"] is None and metrics["operating_points"] is None
    # preds.csv of the output folder: this project's form, the label list's order, the same numbers
    written = read_csv(out / "preds.csv")
    assert written[0] == ["Image Index", *CLASS_NAMES] and [r[0] for r in written[1:]] == names
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:]] for r in written[1:]]), probs, rtol=1e-11)
    page = (out / "report.html").read_text()
    assert page.count('<tr class="class-row"') == C and page.count('<polygon class="band"') == C
    assert not (out / "roc_curves.png").exists() and not list(out.glob(".*"))


def test_preds_in_the_output_folder_are_never_overwritten(tmp_path, scored):
    *_, label_list, preds = scored
    before, stamp = preds.read_bytes(), preds.stat().st_mtime_ns
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", preds.parent,
                    "--bootstrap", 50) == 0
    assert preds.read_bytes() == before and preds.stat().st_mtime_ns == stamp
    assert (preds.parent / "aucs.csv").is_file() and (preds.parent / "roc_curves.png").is_file()


def test_reproduce_chexnet_form_scores_alike(tmp_path, scored):
    names, labels, probs, label_list, preds = scored
    theirs = write_preds(tmp_path / "theirs.csv", names, probs, "reproduce-chexnet", labels=labels)
    assert read_csv(theirs)[0][1].startswith("prob_") and read_csv(theirs)[0][-1] == CLASS_NAMES[0]
    for name, path in (("ours", preds), ("theirs", theirs)):
        assert run_eval("--preds", path, "--label-list", label_list, "--output-dir", tmp_path / name,
                        "--bootstrap", 100, "--no-plot", "--no-report") == 0
    assert (tmp_path / "ours" / "aucs.csv").read_text() == (tmp_path / "theirs" / "aucs.csv").read_text()
    assert strict_json(tmp_path / "theirs" / "metrics.json")["predictions_form"] == "reproduce-chexnet"


def test_image_unit_and_no_bootstrap(tmp_path, scored):
    names, labels, probs, label_list, preds = scored
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "img",
                    "--bootstrap", 80, "--bootstrap-unit", "image", "--ci-level", 0.9, "--no-plot") == 0
    expected = bootstrap_auroc(labels, probs, Resampler.from_names(names, "image", 80, seed=0), level=0.9)
    got = np.array([[float(v) for v in r[2:]] for r in read_csv(tmp_path / "img" / "aucs.csv")[1:-1]])
    np.testing.assert_allclose(got, np.stack([expected.ci_low, expected.ci_high], 1), atol=1e-6)
    assert strict_json(tmp_path / "img" / "metrics.json")["bootstrap"]["level"] == 0.9
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "off",
                    "--bootstrap", 0, "--no-plot") == 0
    rows = read_csv(tmp_path / "off" / "aucs.csv")
    assert rows[0] == ["label", "auc", "ci_low", "ci_high"] and all(r[2:] == ["", ""] for r in rows[1:])
    assert rows[-1][0] == "Mean"
    assert strict_json(tmp_path / "off" / "metrics.json")["bootstrap"] is None
    page = (tmp_path / "off" / "report.html").read_text()
    assert "band" not in page and "CI</th>" not in page and "ECE" in page


def test_small_set_with_single_valued_classes_runs_without_noise(tmp_path, caplog):
    """The demo's situation: a few images, a class without positives, one with a single positive."""
    names, labels, probs = scored_set(seed=4, patients=12)
    labels[:, 13] = 0
    labels[:, 6] = 0
    labels[0, 6] = 1
    label_list = write_label_list(tmp_path / "list.txt", names, labels)
    preds = write_preds(tmp_path / "preds.csv", names, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one RuntimeWarning of numpy, not one stray warning
        warnings.simplefilter("always", UndefinedAUROCWarning)  # but this one, once
        assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "o",
                        "--calibrate", "--no-plot") == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "Hernia" in warned[0] and "Pneumonia" not in warned[0]
    rows = {r[0]: r for r in read_csv(tmp_path / "o" / "aucs.csv")}
    assert rows["Hernia"][1:] == ["nan", "nan", "nan"] and rows["Mean"][1] != "nan"
    metrics = strict_json(tmp_path / "o" / "metrics.json")
    assert metrics["bootstrap"]["per_class"]["Pneumonia"]["skipped"] > 0  # resamples without its one positive
    assert metrics["calibration"]["temperatures_fitted"]["not_fitted"] == ["Hernia"]


# --------------------------------------------------------------------------- thresholds and operating points
def test_thresholds_chosen_on_validation_then_applied_to_test(tmp_path):
    names_v, labels_v, probs_v = scored_set(seed=1)
    names_t, labels_t, probs_t = scored_set(seed=2)
    val = write_label_list(tmp_path / "val.txt", names_v, labels_v)
    test = write_label_list(tmp_path / "test.txt", names_t, labels_t)
    assert run_eval("--preds", write_preds(tmp_path / "v.csv", names_v, probs_v), "--label-list", val,
                    "--output-dir", tmp_path / "val", "--choose-thresholds", "youden", "--bootstrap", 50,
                    "--no-plot") == 0
    chosen = strict_json(tmp_path / "val" / "thresholds.json")
    assert chosen["rule"] == "youden" and chosen["calibrated"] is False
    for c, name in enumerate(CLASS_NAMES):
        assert chosen["thresholds"][name] == youden_reference(labels_v[:, c], probs_v[:, c])
    assert (tmp_path / "val" / "operating_points.csv").is_file()  # in-sample, for the report
    assert "in-sample" in strict_json(tmp_path / "val" / "metrics.json")["operating_points"]["source"]

    assert run_eval("--preds", write_preds(tmp_path / "t.csv", names_t, probs_t), "--label-list", test,
                    "--output-dir", tmp_path / "test", "--thresholds", tmp_path / "val" / "thresholds.json",
                    "--bootstrap", 200, "--seed", 7, "--no-plot") == 0
    rows = read_csv(tmp_path / "test" / "operating_points.csv")
    header = rows[0]
    assert header[:7] == ["label", "rule", "threshold", "tp", "fp", "fn", "tn"]
    thresholds = np.array([chosen["thresholds"][n] for n in CLASS_NAMES])
    library = operating_points.operating_points(labels_t, probs_t, thresholds,
                                                Resampler.from_names(names_t, "patient", 200, seed=7))
    for c, row in enumerate(rows[1:]):
        cell = dict(zip(header, row))
        y, called = labels_t[:, c] == 1, probs_t[:, c] >= thresholds[c]
        assert cell["rule"] == "youden" and float(cell["threshold"]) == pytest.approx(thresholds[c], rel=1e-7)
        assert int(cell["tp"]) == (called & y).sum() and int(cell["tn"]) == (~called & ~y).sum()
        assert float(cell["sensitivity"]) == pytest.approx(called[y].mean(), abs=1e-6)
        assert float(cell["specificity"]) == pytest.approx((~called[~y]).mean(), abs=1e-6)
        assert float(cell["ppv"]) == pytest.approx(y[called].mean(), abs=1e-6)
        for metric in ("sensitivity", "npv", "f1"):
            assert float(cell[f"{metric}_ci_low"]) == pytest.approx(library.rates[metric].ci_low[c], abs=1e-6)
            assert float(cell[f"{metric}_ci_high"]) == pytest.approx(library.rates[metric].ci_high[c], abs=1e-6)
    metrics = strict_json(tmp_path / "test" / "metrics.json")
    assert metrics["operating_points"]["rule"] == "youden"
    assert metrics["operating_points"]["source"] == f"from {tmp_path / 'val' / 'thresholds.json'}"
    assert (tmp_path / "test" / "report.html").read_text().count('<tr class="op-row"') == C


def test_sensitivity_rule_reaches_its_target(tmp_path, scored):
    names, labels, probs, label_list, preds = scored
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "o",
                    "--choose-thresholds", "sensitivity=0.9", "--bootstrap", 0, "--no-plot") == 0
    chosen = strict_json(tmp_path / "o" / "thresholds.json")
    assert chosen["rule"] == "sensitivity=0.9"
    for c, name in enumerate(CLASS_NAMES):
        t = chosen["thresholds"][name]
        positives = probs[labels[:, c] == 1, c]
        # the highest threshold with a sensitivity of at least 0.9: any higher one misses more positives
        assert (positives >= t).mean() >= 0.9 - 1e-12 and (positives > t).mean() < 0.9


# --------------------------------------------------------------------------- calibration and the sidecar
def test_calibrate_minimises_the_cross_entropy(tmp_path):
    names, labels, probs = scored_set(seed=5, patients=150, sharpness=3.0)  # overconfident
    label_list = write_label_list(tmp_path / "list.txt", names, labels)
    assert run_eval("--preds", write_preds(tmp_path / "p.csv", names, probs), "--label-list", label_list,
                    "--output-dir", tmp_path / "o", "--calibrate", "--bootstrap", 0, "--no-plot",
                    "--no-report") == 0
    fitted = strict_json(tmp_path / "o" / "calibration.json")
    assert fitted["method"] == "temperature" and fitted["bins"] == 10 and fitted["not_fitted"] == []
    for c, name in enumerate(CLASS_NAMES):
        y, z = labels[:, c], np.log(probs[:, c]) - np.log1p(-probs[:, c])

        def nll(log_t, y=y, z=z):
            s = z / math.exp(log_t)
            return float(np.mean(np.logaddexp(0, s) - y * s))

        reference = math.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded",
                                             options={"xatol": 1e-10}).x)
        assert fitted["temperatures"][name] == pytest.approx(reference, rel=1e-4)
        assert fitted["temperatures"][name] > 1.5  # the scores were sharpened three times
    assert np.mean(list(fitted["ece_after"].values())) < np.mean(list(fitted["ece_before"].values()))
    # the run's other outputs describe the probabilities as given
    metrics = strict_json(tmp_path / "o" / "metrics.json")
    assert metrics["calibration"]["ece"] == fitted["ece_before"]


def tiny_weights(folder: Path, extra: dict | None = None, seed: int = 3) -> Path:
    """A tiny DenseNet with a sidecar holding its spec (and ``extra`` keys, as a training checkpoint has)."""
    return write_weights(folder, seed=seed, extra={"epoch": 7, **(extra or {})})


def test_save_to_weights_stores_thresholds_and_temperatures_and_keeps_the_rest(tmp_path, scored):
    names, labels, probs, label_list, preds = scored
    weights = tiny_weights(tmp_path / "w", {"files": {"store/best-1.pdparams": "ab12"}, "metric": 0.81})
    before = json.loads(sidecar_path(weights).read_text())
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "o", "--weights",
                    weights, "--calibrate", "--choose-thresholds", "youden", "--save-to-weights",
                    "--bootstrap", 0, "--no-plot", "--no-report") == 0
    after = json.loads(sidecar_path(weights).read_text())
    assert {k: v for k, v in after.items() if k != "model"} == {k: v for k, v in before.items() if k != "model"}
    assert {k: v for k, v in after["model"].items() if k not in ("thresholds", "threshold_rule", "temperatures")} \
        == {k: v for k, v in before["model"].items() if k not in ("thresholds", "threshold_rule", "temperatures")}
    fitted = strict_json(tmp_path / "o" / "calibration.json")["temperatures"]
    chosen = strict_json(tmp_path / "o" / "thresholds.json")
    assert after["model"]["temperatures"] == fitted and after["model"]["thresholds"] == chosen["thresholds"]
    assert after["model"]["threshold_rule"] == "youden" and chosen["calibrated"] is True
    # chosen on the calibrated probabilities, the ones tools/predict.py compares with them
    temperatures = np.array([fitted[n] for n in CLASS_NAMES])
    expected = choose_thresholds(labels, apply_temperature(probs, temperatures), "youden").thresholds
    np.testing.assert_array_equal([chosen["thresholds"][n] for n in CLASS_NAMES], expected)
    spec = read_spec(weights)
    assert spec.threshold_rule == "youden" and spec.temperature_values() == tuple(temperatures)
    assert not list(weights.parent.glob(".*"))  # the atomic write left nothing behind


@pytest.mark.parametrize("argv, message", [
    (["--save-to-weights"], "give one or both"),
    (["--choose-thresholds", "f1", "--save-to-weights", "--no-weights"], "--save-to-weights with --preds needs "
                                                                          "--weights"),
    (["--calibrate", "--save-to-weights"], "holds thresholds (youden rule) chosen on the probabilities before"),
    (["--calibrate", "--choose-thresholds", "f1", "--save-to-weights"], "already holds temperatures"),
    (["--choose-thresholds", "youdn"], "unknown threshold rule 'youdn'"),
    (["--choose-thresholds", "sensitivity=1.2"], "must lie in (0, 1]"),
    (["--ci-level", "95"], "--ci-level: the confidence level must lie strictly between 0 and 1"),
    (["--bootstrap", "-5"], "--bootstrap must be 0"),
    (["--ece-bins", "0"], "--ece-bins must be at least 1"),
    (["--thresholds", "missing.json"], "missing.json: no such file (write one with --choose-thresholds)"),
])
def test_statistics_flags_refused_with_one_line(tmp_path, scored, caplog, argv, message):
    *_, label_list, preds = scored
    weights = tiny_weights(tmp_path / "w")
    update_sidecar_spec(weights, thresholds={n: 0.5 for n in CLASS_NAMES}, threshold_rule="youden",
                        temperatures={n: 2.0 for n in CLASS_NAMES})
    extra = [] if "--no-weights" in argv else ["--weights", weights]
    argv = [a if a != "missing.json" else str(tmp_path / a) for a in argv if a != "--no-weights"]
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "o", *extra,
                    *argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "o" / "aucs.csv").exists()


def test_weights_of_other_classes_are_refused_with_the_preds(tmp_path, scored, caplog):
    *_, label_list, preds = scored
    path = tmp_path / "w" / "two.pdparams"
    net = build_network("tiny", 2, ("Effusion", "Edema"))
    path.parent.mkdir()
    paddle.save(net.state_dict(), str(path))
    sidecar_path(path).write_text(json.dumps(spec_record(net.spec)))
    assert run_eval("--preds", preds, "--label-list", label_list, "--output-dir", tmp_path / "o",
                    "--weights", path) == 1
    message = caplog.records[-1].getMessage()
    assert "expected 2 values after the image name" in message
    assert f"the classes are those of --weights {path}: Effusion, Edema" in message


def test_images_without_a_prediction(tmp_path, scored, caplog):
    names, labels, probs, label_list, _ = scored
    preds = write_preds(tmp_path / "part.csv", names, probs, order=range(3, len(names)))
    common = ["--preds", preds, "--label-list", label_list, "--bootstrap", 20, "--no-plot", "--no-report"]
    assert run_eval(*common, "--output-dir", tmp_path / "a") == 1
    assert "3 images of" in caplog.records[-1].getMessage() and names[0] in caplog.records[-1].getMessage()
    assert run_eval(*common, "--output-dir", tmp_path / "b", "--skip-missing") == 0
    assert (tmp_path / "b" / "skipped.txt").read_text().splitlines() == [
        f"{n}\tno prediction in {preds}" for n in names[:3]]
    metrics = strict_json(tmp_path / "b" / "metrics.json")
    assert metrics["images"] == len(names) - 3 and metrics["skipped"] == 3


def test_names_without_a_patient_need_the_image_unit(tmp_path, caplog):
    names, labels, probs = scored_set(seed=3, patients=20)
    names = [f"scan_{i}.png" for i in range(len(names))]
    label_list = write_label_list(tmp_path / "list.txt", names, labels)
    preds = write_preds(tmp_path / "p.csv", names, probs)
    common = ["--preds", preds, "--label-list", label_list, "--no-plot", "--bootstrap", 20]
    assert run_eval(*common, "--output-dir", tmp_path / "a") == 1
    assert "cannot tell the patient of image 'scan_0.png'" in caplog.records[-1].getMessage()
    assert "--bootstrap-unit image" in caplog.records[-1].getMessage()
    assert run_eval(*common, "--output-dir", tmp_path / "b", "--bootstrap-unit", "image") == 0


def test_resampling_units_checked_from_the_names():
    args = eval_script.get_args_parser().parse_args([])
    eval_statistics.check_resampling_units(args, ["00000001_000.png", "train/patient00002/study1/view1_frontal.jpg"])
    with pytest.raises(eval_statistics.UserError, match="'scan.png'.*--bootstrap-unit image"):
        eval_statistics.check_resampling_units(args, ["00000001_000.png", "scan.png"])
    for flags in (["--bootstrap-unit", "image"], ["--bootstrap", "0"]):
        eval_statistics.check_resampling_units(eval_script.get_args_parser().parse_args(flags), ["scan.png"])


def test_update_sidecar_spec(tmp_path):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"")
    spec = ModelSpec("tiny", 2, ("Effusion", "Edema"))
    with pytest.raises(ValueError, match="holds no model record"):
        update_sidecar_spec(weights, thresholds={"Effusion": 0.2, "Edema": 0.3})
    stored = update_sidecar_spec(weights, base=spec, thresholds={"Effusion": 0.2, "Edema": 0.3},
                                 threshold_rule="f1")
    assert read_spec(weights) == stored and stored.threshold_values() == (0.2, 0.3)
    # an earlier version's training sidecar: its keys are kept, the model record added
    sidecar_path(weights).write_text(json.dumps({"config": {"arch": "tiny"}, "class_names": ["Effusion", "Edema"],
                                                 "epoch": 4}))
    update_sidecar_spec(weights, temperatures={"Effusion": 1.5, "Edema": 0.8})
    record = json.loads(sidecar_path(weights).read_text())
    assert record["epoch"] == 4 and record["model"]["temperatures"] == {"Effusion": 1.5, "Edema": 0.8}
    for changes, message in [
        ({"thresholds": {"Effusion": 0.2}}, "no threshold for Edema"),
        ({"thresholds": {"Effusion": 0.2, "Edema": 1.3}}, "threshold of Edema must be a number in"),
        ({"temperatures": {"Effusion": 1.0, "Edema": 0.0}}, "temperature of Edema must be a positive"),
        ({"temperatures": {"Effusion": 1.0, "Edema": 1.0, "Mass": 1.0}}, "unknown class"),
        ({"colour": "red"}, "unknown model field"),
    ]:
        with pytest.raises(ValueError, match=message):
            update_sidecar_spec(weights, **changes)
    assert json.loads(sidecar_path(weights).read_text()) == record  # a refused change writes nothing


def test_the_parser_defaults_are_the_library_defaults():
    assert eval_statistics.DEFAULT_RESAMPLES == bootstrap.DEFAULT_RESAMPLES
    assert eval_statistics.DEFAULT_LEVEL == bootstrap.DEFAULT_LEVEL
    assert eval_statistics.DEFAULT_BINS == calibration.DEFAULT_BINS
    assert eval_statistics.RULE_HELP == operating_points.RULE_HELP
    args = eval_script.get_args_parser().parse_args([])
    assert args.bootstrap == 1000 and args.bootstrap_unit == "patient" and args.preds is None
    assert not getattr(args, "weights_given", False)
    assert eval_script.get_args_parser().parse_args(["--weights", "x.pdparams"]).weights_given


# --------------------------------------------------------------------------- with a network
def make_images(root: Path, patients: int = 6, seed: int = 0) -> tuple[Path, Path, list[str], np.ndarray]:
    """Small gray PNGs with NIH names, two films per patient, and a label list where every class has both values."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    names = [f"{p:08d}_{f:03d}.png" for p in range(1, patients + 1) for f in range(2)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (44, 48), dtype=np.uint8), "L").save(images / name)
    labels = np.array([[(i + c) % 2 for c in range(C)] for i in range(len(names))], dtype=np.float64)
    return images, write_label_list(root / "list.txt", names, labels), names, labels


def test_network_run_calibrated_by_the_sidecar_and_tools_predict(tmp_path, capsys):
    images, label_list, names, labels = make_images(tmp_path / "data")
    weights = tiny_weights(tmp_path / "w")
    plain = tiny_weights(tmp_path / "plain")  # the same network, its sidecar left alone
    common = ["--weights", weights, "--image-dir", images, "--label-list", label_list, "--crops", "center",
              "--resize", 40, "--crop", 32, "--backend", "dygraph", "--num-workers", 0, "--no-progress",
              "--device", "cpu", "--bootstrap", 100]
    assert run_eval(*common, "--output-dir", tmp_path / "raw", "--no-plot") == 0
    printed = capsys.readouterr().out
    assert "The average AUROC is" in printed and "95% CI" in printed and "resamples of patients" in printed
    assert "Expected calibration error (10 equal-width bins)" in printed
    raw_rows = read_csv(tmp_path / "raw" / "preds.csv")
    raw = np.array([[float(v) for v in r[1:]] for r in raw_rows[1:]])
    aucs = read_csv(tmp_path / "raw" / "aucs.csv")
    assert aucs[0] == ["label", "auc", "ci_low", "ci_high"] and aucs[-1][0] == "Mean"
    assert strict_json(tmp_path / "raw" / "metrics.json")["probabilities"] == "as the network gives them"
    assert (tmp_path / "raw" / "report.html").is_file()

    assert run_eval(*common, "--output-dir", tmp_path / "fit", "--no-plot", "--calibrate", "--choose-thresholds",
                    "youden", "--save-to-weights", "--no-report") == 0
    spec = read_spec(weights)
    temperatures = np.array(spec.temperature_values())
    thresholds = np.array(spec.threshold_values())
    assert spec.threshold_rule == "youden" and not np.allclose(temperatures, 1.0)

    assert run_eval(*common, "--output-dir", tmp_path / "cal", "--no-plot") == 0
    cal = np.array([[float(v) for v in r[1:]] for r in read_csv(tmp_path / "cal" / "preds.csv")[1:]])
    np.testing.assert_allclose(cal, apply_temperature(raw, temperatures), rtol=1e-6, atol=1e-9)
    assert not np.allclose(cal, raw, atol=1e-3)
    # a monotone map per class leaves every AUROC (and its intervals: same resamples) unchanged
    assert read_csv(tmp_path / "cal" / "aucs.csv") == aucs
    metrics = strict_json(tmp_path / "cal" / "metrics.json")
    assert metrics["probabilities"].startswith("calibrated by the temperatures in")
    assert metrics["operating_points"]["rule"] == "youden"
    assert metrics["operating_points"]["source"] == f"stored in the weights' {sidecar_path(weights)}"

    # tools/predict.py on the same weights: calibrated probabilities, positive calls by the stored thresholds
    from paddle_chexnet.cli import predict as predict_cli

    image = images / names[0]
    for used, out in ((weights, "pred"), (plain, "p0")):
        assert predict_cli.entry([str(image), "--weights", str(used), "--output-dir", str(tmp_path / out),
                                  "--quiet", "--no-overlays", "--device", "cpu"]) == 0
    got = np.array([float(v) for v in read_csv(tmp_path / "pred" / "predictions.csv")[1][1:]])
    network = np.array([float(v) for v in read_csv(tmp_path / "p0" / "predictions.csv")[1][1:]])
    np.testing.assert_allclose(got, apply_temperature(network, temperatures), atol=2e-6)
    table = (tmp_path / "pred" / "predictions.txt").read_text()
    assert table.startswith("# thresholds: youden rule, from tiny.json\n# probabilities: calibrated")
    marked = {line.split()[1] for line in table.splitlines() if line.strip().startswith("*")}
    assert marked == {n for n, p, t in zip(CLASS_NAMES, got, thresholds) if p >= t - 1e-6}
    assert not (tmp_path / "p0" / "predictions.txt").read_text().startswith("#")
    # a --threshold given wins over the stored ones; the probabilities stay calibrated
    assert predict_cli.entry([str(image), "--weights", str(weights), "--output-dir", str(tmp_path / "p1"),
                              "--threshold", "1", "--quiet", "--no-overlays", "--device", "cpu"]) == 0
    table = (tmp_path / "p1" / "predictions.txt").read_text()
    assert table.startswith("# probabilities: calibrated") and "*" not in table and "thresholds:" not in table


def test_network_run_keeps_the_probabilities_when_a_statistic_fails(tmp_path, caplog):
    images, label_list, names, labels = make_images(tmp_path / "data", patients=3)
    labels[:, 13] = 0  # no Hernia: no threshold can be chosen
    write_label_list(label_list, names, labels)
    weights = tiny_weights(tmp_path / "w")
    out = tmp_path / "o"
    assert run_eval("--weights", weights, "--image-dir", images, "--label-list", label_list, "--crops", "center",
                    "--resize", 40, "--crop", 32, "--backend", "dygraph", "--num-workers", 0, "--no-progress",
                    "--device", "cpu", "--output-dir", out, "--choose-thresholds", "youden", "--no-plot") == 1
    message = caplog.records[-1].getMessage()
    assert "Hernia: cannot choose a threshold from 0 positives" in message
    assert f"python eval.py --preds {out / 'preds.csv'} --label-list {label_list}" in message
    assert len(read_csv(out / "preds.csv")) == len(names) + 1


def test_statistics_flags_are_checked_before_the_network_runs(tmp_path, monkeypatch, caplog):
    import paddle_chexnet.evaluation.evaluate as evaluation

    def never(*args, **kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(evaluation, "evaluate", never)
    images, label_list, *_ = make_images(tmp_path / "data", patients=2)
    weights = tiny_weights(tmp_path / "w")
    common = ["--weights", weights, "--image-dir", images, "--label-list", label_list, "--output-dir",
              tmp_path / "o", "--device", "cpu"]
    for argv, message in [(["--choose-thresholds", "best"], "unknown threshold rule 'best'"),
                          (["--thresholds", tmp_path / "none.json"], "none.json: no such file"),
                          (["--save-to-weights"], "give one or both")]:
        assert run_eval(*common, *argv) == 1 and message in caplog.records[-1].getMessage()
    with pytest.raises(AssertionError, match="the network ran"):  # valid flags reach it
        run_eval(*common, "--calibrate", "--choose-thresholds", "f1", "--save-to-weights")


def test_command_line_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--preds", "nope.csv", "--label-list", "x.txt",
                           "--bootstrap-unit", "image", "--choose-thresholds", "specificity=0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and proc.stdout == ""
    assert "--choose-thresholds: threshold rule 'specificity=0': the specificity must lie in (0, 1]" in proc.stderr


# --------------------------------------------------------------------------- the page in a browser
def test_report_of_eval_renders_in_chromium(tmp_path, browser):  # noqa: F811
    names, labels, probs = scored_set(seed=6)
    label_list = write_label_list(tmp_path / "list.txt", names, labels)
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"rule": "f1", "thresholds": {n: 0.4 for n in CLASS_NAMES}}))
    assert run_eval("--preds", write_preds(tmp_path / "p.csv", names, probs), "--label-list", label_list,
                    "--output-dir", tmp_path / "o", "--thresholds", thresholds, "--bootstrap", 100,
                    "--no-plot") == 0
    page = tmp_path / "o" / "report.html"
    session = browser.open(page.as_uri())
    assert browser.requested_urls() == [page.as_uri()]  # nothing fetched
    rows = browser.evaluate("Array.from(document.querySelectorAll('#auroc-table tr.class-row'))"
                            ".map(r => r.cells[0].textContent)", session)
    assert rows == list(CLASS_NAMES)
    assert browser.evaluate("document.querySelectorAll('#operating-table tr.op-row').length", session) == C
    bands = browser.evaluate("Array.from(document.querySelectorAll('polygon.band'))"
                             ".map(p => p.getBBox().width * p.getBBox().height)", session)
    assert len(bands) == C and min(bands) > 100
    details = browser.evaluate("Array.from(document.querySelectorAll('dl.details dt'))"
                               ".map(d => d.textContent)", session)
    assert details[:2] == ["label list", "images"] and "bootstrap" in details


# --------------------------------------------------------------------------- speed
@pytest.mark.slow
def test_nih_sized_statistics_are_fast():
    """22,433 images x 14 classes, ~6,300 patients: the default statistics (1,000 resamples) well under 30 s."""
    import time

    rng = np.random.default_rng(0)
    sizes = np.minimum(rng.zipf(2.1, size=22433), 184)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), 22433)) + 1]
    sizes[-1] -= int(sizes.sum()) - 22433
    names = [f"{p + 1:08d}_{f:03d}.png" for p, size in enumerate(sizes) for f in range(size)]
    labels = (rng.random((22433, C)) < 0.05).astype(np.float64)
    probs = expit(rng.normal(size=labels.shape) + 1.8 * labels - 2)
    started = time.perf_counter()
    stats = compute_statistics(names, labels, probs, CLASS_NAMES,
                               StatisticsOptions(thresholds=np.full(C, 0.2), calibrate=True))
    assert time.perf_counter() - started < 30
    assert stats.bootstrap.n_resamples == 1000 and stats.roc_band is not None


def test_flow_without_the_command():
    """The module API: compute_statistics alone gives what eval.py writes."""
    names, labels, probs = scored_set(seed=8)
    stats = compute_statistics(names, labels, probs, CLASS_NAMES, StatisticsOptions(bootstrap=50, calibrate=True,
                                                                                     choose_rule="f1"))
    np.testing.assert_allclose(stats.auroc, [roc_auc_score(labels[:, c], probs[:, c]) for c in range(C)],
                               atol=1e-12)
    assert stats.chosen_calibrated and stats.operating_points is not None and stats.bootstrap.n_resamples == 50
    assert len(stats.reliability) == C and stats.ece.shape == (C,)
    # unknown labels (NaN, CheXpert's ignored ones) are left out of their class in every statistic
    unknown = labels.copy()
    unknown[::5, 2] = np.nan
    known = ~np.isnan(unknown[:, 2])
    partial = compute_statistics(names, unknown, probs, CLASS_NAMES, StatisticsOptions(bootstrap=50,
                                                                                       choose_rule="youden"))
    assert partial.auroc[2] == pytest.approx(roc_auc_score(labels[known, 2], probs[known, 2]), abs=1e-12)
    assert partial.ece[2] == pytest.approx(ece_reference(labels[known, 2], probs[known, 2]), abs=1e-12)
    assert partial.chosen.thresholds[2] == youden_reference(labels[known, 2], probs[known, 2])
    assert np.isfinite(partial.bootstrap.ci_low).all()
    with pytest.raises(ValueError, match="give one of them per run"):
        compute_statistics(names, labels, probs, CLASS_NAMES, StatisticsOptions(choose_rule="f1",
                                                                                thresholds=np.full(C, 0.5)))
