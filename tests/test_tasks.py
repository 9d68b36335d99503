"""Tasks: their classes, which data sets they apply to, and the label mapping (NaN kept unknown)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from paddle_chexnet.data.label_lists import LabelList
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.tasks import (
    CHEXPERT_CLASSES,
    DATASETS,
    TASKS,
    TaskError,
    check_task,
    default_task,
    get_task,
    task_label_list,
    task_labels,
    tasks_for,
)

NAN = np.nan


def test_the_tasks_and_their_classes() -> None:
    assert TASKS == ("chexnet14", "nih8", "abnormal", "chexpert5", "chexpert14")
    assert DATASETS == ("nih", "chexpert")
    assert get_task("chexnet14").class_names == CLASS_NAMES
    assert get_task("nih8").class_names == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                                            "Nodule", "Pneumonia", "Pneumothorax")
    assert get_task("abnormal").num_classes == 1
    assert get_task("chexpert5").class_names == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                 "Pleural Effusion")
    assert get_task("chexpert14").class_names == CHEXPERT_CLASSES
    assert CHEXPERT_CLASSES[0] == "No Finding" and len(CHEXPERT_CLASSES) == 14


def test_defaults_and_applicability() -> None:
    assert default_task("nih") == "chexnet14"
    assert default_task("chexpert") == "chexpert5"
    assert tasks_for("nih") == ("chexnet14", "nih8", "abnormal")
    assert tasks_for("chexpert") == ("abnormal", "chexpert5", "chexpert14")


@pytest.mark.parametrize(("task", "dataset", "valid"), [
    ("chexpert5", "nih", "chexnet14, nih8, abnormal"),
    ("nih8", "chexpert", "abnormal, chexpert5, chexpert14"),
])
def test_a_task_for_another_data_set_names_both_and_the_valid_ones(task: str, dataset: str, valid: str) -> None:
    with pytest.raises(TaskError, match=f"task '{task}' does not apply to data set '{dataset}'.*{valid}"):
        check_task(task, dataset)


def test_unknown_task_and_data_set() -> None:
    with pytest.raises(TaskError, match="unknown task 'nih14'.*chexnet14, nih8"):
        get_task("nih14")
    with pytest.raises(TaskError, match="unknown data set 'mimic'.*nih, chexpert"):
        tasks_for("mimic")


def test_the_constants_are_argparse_choices() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=DATASETS, default="nih")
    parser.add_argument("--task", choices=TASKS)
    args = parser.parse_args(["--dataset", "chexpert", "--task", "chexpert14"])
    assert (args.dataset, args.task) == ("chexpert", "chexpert14")
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "chexpert6"])


def test_nih8_selects_the_boxed_findings_in_order() -> None:
    labels = np.arange(3 * 14, dtype=np.float32).reshape(3, 14)
    out = task_labels(labels, "nih", "nih8")
    np.testing.assert_array_equal(out, labels[:, :8])  # the 8 boxed findings are CheXNet's first 8
    np.testing.assert_array_equal(task_labels(labels, "nih", "chexnet14"), labels)


def test_abnormal_on_nih_is_any_finding_and_unknown_only_when_it_matters() -> None:
    labels = np.zeros((5, 14), dtype=np.float32)
    labels[1, 13] = 1  # Hernia only
    labels[2, [0, 5]] = 1
    labels[3, 4] = NAN  # no positive, one unknown -> unknown
    labels[4, [2, 7]] = [NAN, 1]  # a positive decides whatever is unknown
    np.testing.assert_array_equal(task_labels(labels, "nih", "abnormal")[:, 0], [0, 1, 1, NAN, 1])


def test_chexpert_tasks_select_columns_and_abnormal_is_not_no_finding() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((6, 14)) < 0.4).astype(np.float32)
    labels[rng.random((6, 14)) < 0.2] = NAN
    labels[0, 0], labels[1, 0], labels[2, 0] = 1, 0, NAN
    five = task_labels(labels, "chexpert", "chexpert5")
    for j, name in enumerate(("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")):
        np.testing.assert_array_equal(five[:, j], labels[:, CHEXPERT_CLASSES.index(name)])
    np.testing.assert_array_equal(task_labels(labels, "chexpert", "chexpert14"), labels)
    abnormal = task_labels(labels, "chexpert", "abnormal")[:, 0]
    np.testing.assert_array_equal(abnormal, 1 - labels[:, 0])
    assert abnormal[0] == 0 and abnormal[1] == 1 and np.isnan(abnormal[2])
    assert abnormal.dtype == np.float32


def test_a_label_matrix_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nih labels must be \[N, 14\]"):
        task_labels(np.zeros((2, 8)), "nih", "nih8")


def test_task_label_list_maps_native_lists_and_passes_task_lists() -> None:
    native = LabelList(["a.png", "b.png"], np.eye(2, 14, dtype=np.float32), CLASS_NAMES, "list.txt")
    nih8 = task_label_list(native, "nih", "nih8")
    assert nih8.class_names == get_task("nih8").class_names and nih8.names == ["a.png", "b.png"]
    np.testing.assert_array_equal(nih8.labels, native.labels[:, :8])
    assert task_label_list(nih8, "nih", "nih8") is nih8
    with pytest.raises(ValueError, match="list.txt.*task 'chexnet14'"):
        task_label_list(nih8, "nih", "chexnet14")
