"""Every data set x task through train.py, eval.py and tools/predict.py, as a user runs them; and the image cache.

Generated data only (the NIH-style synthetic set and the CheXpert-layout one), a tiny network, one or a
few epochs: what is checked is that each cell of the README's table works end to end and that the task
travels in the weights' sidecar, so no command needs ``--task`` again.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.cli import evaluate as eval_cli
from paddle_chexnet.cli import predict as predict_cli
from paddle_chexnet.cli import train as train_cli
from paddle_chexnet.data.synthetic import make_dataset
from paddle_chexnet.data.synthetic_chexpert import make_chexpert_dataset
from paddle_chexnet.data.tasks import get_task

COMMON = ["--arch", "tiny", "--resize", "64", "--crop", "64", "--batch-size", "8", "--num-workers", "0",
          "--device", "cpu", "--no-progress", "--early-stopping-patience", "0"]
EVAL = ["--resize", "64", "--crop", "64", "--crops", "center", "--no-progress", "--device", "cpu", "--no-plot"]


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("nih") / "data", num_images=160, image_size=64, seed=3).root


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chexpert") / "root"
    make_chexpert_dataset(root, train_patients=40, valid_patients=16, image_size=64, seed=1)
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _train(tmp_path: Path, *argv: str) -> Path:
    out = tmp_path / "out"
    assert train_cli.entry([*COMMON, "--epochs", "1", "--output-dir", str(out), "--log-dir", str(tmp_path / "logs"),
                            *argv]) == 0
    return out / "chexnet" / "best.pdparams"


@pytest.mark.parametrize("task", ["chexnet14", "nih8", "abnormal"])
def test_nih_tasks_train_evaluate_and_predict_without_a_task_flag(nih, tmp_path, task):
    weights = _train(tmp_path, "--data-dir", str(nih), "--task", task)
    classes = list(get_task(task).class_names)
    spec = json.loads(weights.with_suffix(".json").read_text())["model"]
    assert (spec["task"], spec["class_names"], spec["arch"]) == (task, classes, "tiny")

    assert eval_cli.entry(["--weights", str(weights), "--data-dir", str(nih), *EVAL,
                           "--output-dir", str(tmp_path / "eval")]) == 0  # no --task: the sidecar says it
    aucs = _read_csv(tmp_path / "eval" / "aucs.csv")
    assert [row["label"] for row in aucs if row["label"] != "Mean"] == classes
    preds = _read_csv(tmp_path / "eval" / "preds.csv")
    assert list(preds[0]) == ["Image Index", *classes]

    image = next((nih / "images").glob("*.png"))
    assert predict_cli.entry([str(image), "--weights", str(weights), "--output-dir", str(tmp_path / "predict"),
                              "--resize", "64", "--quiet", "--device", "cpu"]) == 0
    assert list(_read_csv(tmp_path / "predict" / "predictions.csv")[0]) == ["image", *classes]


def test_the_abnormal_model_learns(tmp_path):
    """Any finding against none: a tiny network reaches AUROC >= 0.85 on the held-out test images."""
    data = make_dataset(tmp_path / "data", num_images=600, image_size=64, seed=0).root
    weights = _train(tmp_path, "--data-dir", str(data), "--task", "abnormal", "--epochs", "6", "--lr", "0.003")
    assert eval_cli.entry(["--weights", str(weights), "--data-dir", str(data), *EVAL,
                           "--output-dir", str(tmp_path / "eval")]) == 0
    rows = _read_csv(tmp_path / "eval" / "preds.csv")
    names = [row["Image Index"] for row in rows]
    labels = {}
    for line in (data / "labels" / "test_list.txt").read_text().splitlines():
        name, *values = line.split()
        labels[name] = float(any(v == "1" for v in values))  # abnormal: any of the 14 findings
    auroc = roc_auc_score([labels[n] for n in names], [float(row["Abnormal"]) for row in rows])
    assert auroc >= 0.85


@pytest.mark.parametrize("task", ["chexpert5", "chexpert14", "abnormal"])
def test_chexpert_tasks_train_evaluate_and_predict(chexpert, tmp_path, task):
    weights = _train(tmp_path, "--dataset", "chexpert", "--data-dir", str(chexpert), "--task", task,
                     "--uncertainty", "ignore")
    classes = list(get_task(task).class_names)
    assert json.loads(weights.with_suffix(".json").read_text())["model"]["task"] == task

    assert eval_cli.entry(["--dataset", "chexpert", "--weights", str(weights), "--data-dir", str(chexpert), *EVAL,
                           "--output-dir", str(tmp_path / "eval")]) == 0
    preds = _read_csv(tmp_path / "eval" / "preds.csv")
    assert list(preds[0]) == ["Path", *classes]
    assert all(row["Path"].startswith("CheXpert-v1.0-small/valid/patient") for row in preds)
    assert all("lateral" not in row["Path"] for row in preds)  # --views frontal by default

    jpeg = chexpert / preds[0]["Path"]
    assert predict_cli.entry([str(jpeg), "--weights", str(weights), "--output-dir", str(tmp_path / "predict"),
                              "--resize", "64", "--quiet", "--device", "cpu"]) == 0
    assert list(_read_csv(tmp_path / "predict" / "predictions.csv")[0]) == ["image", *classes]


def test_chexpert_ignored_labels_are_left_out_of_the_auroc(chexpert, tmp_path):
    """With ``ignore``, uncertain labels are NaN: eval's AUROC equals scikit-learn on the known labels only."""
    from paddle_chexnet.data.chexpert import read_chexpert_labels

    weights = _train(tmp_path, "--dataset", "chexpert", "--data-dir", str(chexpert), "--task", "chexpert5",
                     "--uncertainty", "ignore")
    train_csv = chexpert / "CheXpert-v1.0-small" / "train.csv"  # the train CSV has -1 values; valid.csv has none
    assert eval_cli.entry(["--dataset", "chexpert", "--weights", str(weights), "--data-dir", str(chexpert), *EVAL,
                           "--label-list", str(train_csv), "--uncertainty", "ignore",
                           "--output-dir", str(tmp_path / "eval")]) == 0
    labels = read_chexpert_labels(train_csv, "chexpert5", "ignore", "frontal")
    assert np.isnan(labels.labels).any()
    preds = {row["Path"]: row for row in _read_csv(tmp_path / "eval" / "preds.csv")}
    aucs = {row["label"]: row["auc"] for row in _read_csv(tmp_path / "eval" / "aucs.csv")}
    for c, name in enumerate(labels.class_names):
        known = ~np.isnan(labels.labels[:, c])
        if len(set(labels.labels[known, c])) < 2:
            continue
        scores = [float(preds[n][name]) for n, k in zip(labels.names, known) if k]
        assert float(aucs[name]) == pytest.approx(roc_auc_score(labels.labels[known, c], scores), abs=1e-6)


def test_chexpert_validation_by_a_patient_level_split_of_train_csv(chexpert, tmp_path):
    from paddle_chexnet.engine.config import TrainConfig
    from paddle_chexnet.engine.trainer import build_datasets

    config = TrainConfig(dataset="chexpert", data_dir=str(chexpert), val_fraction=0.25, arch="tiny", resize=64,
                         crop=64)
    train, val = build_datasets(config)
    patients = [{name.split("/")[2] for name in part.names} for part in (train, val)]
    assert patients[0] and patients[1] and not patients[0] & patients[1]
    assert all(name.startswith("CheXpert-v1.0-small/train/") for name in val.names)


#: the README's data set x task rows, as (--dataset, --task)
CELLS = [("nih", "chexnet14"), ("nih", "nih8"), ("nih", "abnormal"),
         ("chexpert", "chexpert5"), ("chexpert", "chexpert14"), ("chexpert", "abnormal")]
POOLINGS = ["avg", "max", "lse", "pcam"]


def _matrix() -> list:
    """Every architecture x data set x task; the fast suite runs each architecture on one cell (all cells and
    poolings appear among them), the slow suite the rest."""
    from paddle_chexnet.models.registry import architecture_names

    params = []
    for a, arch in enumerate(architecture_names()):
        for c, (dataset, task) in enumerate(CELLS):
            fast = c == a % len(CELLS)
            pooling = POOLINGS[a % len(POOLINGS)] if fast else "avg"
            params.append(pytest.param(arch, dataset, task, pooling, fast, id=f"{arch}-{dataset}-{task}-{pooling}",
                                       marks=() if fast else pytest.mark.slow))
    return params


@pytest.mark.parametrize("arch, dataset, task, pooling, fast", _matrix())
def test_every_architecture_on_every_data_set_and_task(nih, chexpert, tmp_path, arch, dataset, task, pooling, fast):
    """One training step of train.py at 32 px, then eval.py and tools/predict.py read everything from the sidecar.

    The fast cells evaluate through eval.py's CPU path (a Paddle Inference export of each architecture); the
    slow ones in the dynamic graph, which is quicker for one small split.
    """
    root = nih if dataset == "nih" else chexpert
    source = ["--dataset", dataset, "--data-dir", str(root)]
    weights = _train(tmp_path, *source, "--task", task, "--arch", arch, "--pooling", pooling, "--resize", "32",
                     "--crop", "32", "--batch-size", "4", "--max-steps-per-epoch", "1")
    spec = json.loads(weights.with_suffix(".json").read_text())["model"]
    classes = list(get_task(task).class_names)
    assert (spec["arch"], spec["task"], spec["class_names"], spec["pooling"]) == (arch, task, classes, pooling)

    backend = [] if fast else ["--backend", "dygraph"]
    assert eval_cli.entry([*source, "--weights", str(weights), *EVAL, "--resize", "32", "--crop", "32", *backend,
                           "--output-dir", str(tmp_path / "eval")]) == 0
    aucs = _read_csv(tmp_path / "eval" / "aucs.csv")
    assert [row["label"] for row in aucs if row["label"] != "Mean"] == classes
    preds = _read_csv(tmp_path / "eval" / "preds.csv")
    scores = np.array([[float(row[name]) for name in classes] for row in preds])
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()

    image = root / preds[0]["Path"] if dataset == "chexpert" else root / "images" / preds[0]["Image Index"]
    assert predict_cli.entry([str(image), "--weights", str(weights), "--output-dir", str(tmp_path / "predict"),
                              "--resize", "32", "--quiet", "--device", "cpu"]) == 0
    predicted = _read_csv(tmp_path / "predict" / "predictions.csv")[0]
    assert list(predicted) == ["image", *classes]


def test_a_task_of_another_data_set_is_one_line(nih, tmp_path, caplog):
    assert train_cli.entry([*COMMON, "--data-dir", str(nih), "--task", "chexpert5",
                            "--output-dir", str(tmp_path / "o")]) == 1
    assert "task 'chexpert5' does not apply to data set 'nih'" in caplog.text
    assert not (tmp_path / "o").exists()


def test_the_image_cache_gives_the_same_training_and_evaluation(nih, tmp_path):
    """Training and evaluating from the cache give the weights and probabilities the PNGs give, bit for bit."""
    from paddle_chexnet.cli import build_cache

    cache = tmp_path / "cache"
    assert build_cache.entry(["--image-dir", str(nih / "images"), "--output", str(cache), "--size", "64",
                              "--no-progress"]) == 0
    from_files = _train(tmp_path / "files", "--data-dir", str(nih), "--epochs", "1")
    from_cache = _train(tmp_path / "cached", "--data-dir", str(nih), "--epochs", "1", "--cache", str(cache))
    import paddle

    files_state, cache_state = paddle.load(str(from_files)), paddle.load(str(from_cache))
    assert list(files_state) == list(cache_state)
    for key in files_state:  # the file's bytes also hold Paddle's generated tensor names, which differ
        np.testing.assert_array_equal(np.asarray(files_state[key]), np.asarray(cache_state[key]), err_msg=key)
    for name, extra in (("files", []), ("cached", ["--cache", str(cache)])):
        assert eval_cli.entry(["--weights", str(from_files), "--data-dir", str(nih), *EVAL,
                               "--output-dir", str(tmp_path / f"eval-{name}"), *extra]) == 0
    assert (tmp_path / "eval-files" / "preds.csv").read_bytes() == (tmp_path / "eval-cached" / "preds.csv").read_bytes()
    # a cache of another size is refused before any work
    assert eval_cli.entry(["--weights", str(from_files), "--data-dir", str(nih), *EVAL, "--resize", "96",
                           "--output-dir", str(tmp_path / "wrong"), "--cache", str(cache)]) == 1
