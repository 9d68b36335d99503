"""The prediction tasks (``--task``) and the data sets (``--dataset``) they apply to.

A data set's label files give its *native* classes: NIH ChestX-ray14's 14
findings in CheXNet order (:data:`~paddle_chexnet.data.labels.CLASS_NAMES`) or
CheXpert's 14 observations in its CSV order (:data:`CHEXPERT_CLASSES`). A task
picks the network's outputs from them:

=============  ===============  ======================================================
task           data sets        outputs
=============  ===============  ======================================================
``chexnet14``  nih (default)    NIH's 14 findings, CheXNet order
``nih8``       nih              the 8 findings NIH boxed (``BBox_List_2017.csv``), in
                                CheXNet order, as thtang/CheXNet-with-localization
``abnormal``   nih, chexpert    one output: any finding (NIH) / not "No Finding"
                                (CheXpert)
``chexpert5``  chexpert         the CheXpert competition's five, alphabetical
               (default)
``chexpert14`` chexpert         CheXpert's 14 observations, CSV order
=============  ===============  ======================================================

:func:`task_labels` maps a native label matrix to a task's columns; NaN
(unknown) stays NaN wherever the answer depends on an unknown entry.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from paddle_chexnet.data.label_lists import LabelList
from paddle_chexnet.data.labels import CLASS_NAMES

DATASETS: tuple[str, ...] = ("nih", "chexpert")


# CheXpert's 14 observations, in the order of the columns of Stanford's train.csv / valid.csv.
CHEXPERT_CLASSES: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


NO_FINDING = "No Finding"


ABNORMAL = "Abnormal"


NATIVE_CLASSES: Mapping[str, tuple[str, ...]] = {"nih": CLASS_NAMES, "chexpert": CHEXPERT_CLASSES}


class TaskError(ValueError):
    """A task that does not exist or does not apply to a data set; the message lists the valid ones."""


@dataclass(frozen=True)
class Task:
    """One prediction task.

    Args:
        name (str): the ``--task`` value.
        class_names (tuple[str, ...]): the network's outputs, in order.
        datasets (tuple[str, ...]): the data sets it can be trained and evaluated on.
        default_for (tuple[str, ...]): the data sets on which it is the default task.
        description (str): one line for ``--help`` and logs.
    """

    name: str
    class_names: tuple[str, ...]
    datasets: tuple[str, ...]
    default_for: tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def applies_to(self, dataset: str) -> bool:
        return dataset in self.datasets

    def source_classes(self, dataset: str) -> tuple[str, ...]:
        """The native classes of ``dataset`` that this task's labels are computed from."""
        check_task(self.name, dataset)
        native = NATIVE_CLASSES[dataset]
        if self.name == "abnormal":
            return (NO_FINDING,) if dataset == "chexpert" else native
        return self.class_names


# the 8 findings NIH drew boxes for (thtang/CheXNet-with-localization's task) are CheXNet's first 8
NIH8_CLASSES: tuple[str, ...] = CLASS_NAMES[:8]


CHEXPERT5_CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("chexnet14", CLASS_NAMES, ("nih",), ("nih",), "NIH ChestX-ray14's 14 findings (CheXNet)"),
        Task("nih8", NIH8_CLASSES, ("nih",), (), "the 8 findings with NIH boxes (ChestX-ray8)"),
        Task("abnormal", (ABNORMAL,), ("nih", "chexpert"), (), "one output: any finding vs 'No Finding'"),
        Task("chexpert5", CHEXPERT5_CLASSES, ("chexpert",), ("chexpert",), "the CheXpert competition's 5"),
        Task("chexpert14", CHEXPERT_CLASSES, ("chexpert",), (), "CheXpert's 14 observations"),
    )
}


TASKS: tuple[str, ...] = tuple(_TASKS)


assert set(NIH8_CLASSES) <= set(CLASS_NAMES) and set(CHEXPERT5_CLASSES) <= set(CHEXPERT_CLASSES)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise TaskError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")


def get_task(name: str | Task) -> Task:
    """The :class:`Task` called ``name`` (a :class:`Task` is returned as it is).

    Raises:
        TaskError: no such task; the message lists them.
    """
    if isinstance(name, Task):
        return name
    if name not in _TASKS:
        raise TaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return _TASKS[name]


def tasks_for(dataset: str) -> tuple[str, ...]:
    """The names of the tasks that apply to ``dataset``, in :data:`TASKS` order."""
    _check_dataset(dataset)
    return tuple(name for name, task in _TASKS.items() if task.applies_to(dataset))


def default_task(dataset: str) -> str:
    """The task used when ``--task`` is not given: ``chexnet14`` on NIH, ``chexpert5`` on CheXpert."""
    _check_dataset(dataset)
    return next(name for name, task in _TASKS.items() if dataset in task.default_for)


def check_task(task: str | Task, dataset: str) -> Task:
    """The task, after checking that it applies to ``dataset``.

    Raises:
        TaskError: an unknown task or data set, or a task for another data set, e.g.
            ``task 'chexpert5' does not apply to data set 'nih'; tasks for nih: chexnet14, nih8, abnormal``.
    """
    _check_dataset(dataset)
    task = get_task(task)
    if not task.applies_to(dataset):
        raise TaskError(
            f"task {task.name!r} does not apply to data set {dataset!r}; "
            f"tasks for {dataset}: {', '.join(tasks_for(dataset))}"
        )
    return task


def task_labels(labels: np.ndarray, dataset: str, task: str | Task) -> np.ndarray:
    """Map a label matrix of ``dataset``'s native classes to ``task``'s columns.

    Labels are 1 (positive), 0 (negative) or NaN (unknown, e.g. an ignored
    uncertain CheXpert label). Selected columns keep their values. ``abnormal``
    on NIH is 1 when any finding is 1, 0 when all 14 are 0, and NaN when none
    is 1 but some are unknown; on CheXpert it is ``1 - No Finding`` (NaN where
    "No Finding" is unknown).

    Args:
        labels (numpy.ndarray): ``[N, 14]`` in the order of ``NATIVE_CLASSES[dataset]``.
        dataset (str): ``'nih'`` or ``'chexpert'``.
        task (str | Task): one of :data:`TASKS` that applies to ``dataset``.

    Returns:
        numpy.ndarray: float32 ``[N, task.num_classes]``.

    Raises:
        TaskError: the task does not apply to the data set.
        ValueError: ``labels`` is not ``[N, 14]``.

    Examples:
        >>> task_labels(np.array([[0, 1, 0] + [0] * 11], np.float32), "nih", "abnormal")
        array([[1.]], dtype=float32)
    """
    task = check_task(task, dataset)
    native = NATIVE_CLASSES[dataset]
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[1] != len(native):
        raise ValueError(
            f"{dataset} labels must be [N, {len(native)}] (columns {', '.join(native)}), got {list(labels.shape)}"
        )
    if task.name == "abnormal":
        if dataset == "chexpert":
            return (1.0 - labels[:, [native.index(NO_FINDING)]]).astype(np.float32)
        any_positive = (labels == 1.0).any(axis=1)
        any_unknown = np.isnan(labels).any(axis=1)
        out = np.where(any_positive, 1.0, np.where(any_unknown, np.nan, 0.0))
        return out[:, None].astype(np.float32)
    return labels[:, [native.index(name) for name in task.class_names]].copy()


def task_label_list(label_list: LabelList, dataset: str, task: str | Task) -> LabelList:
    """``label_list`` with its columns mapped to ``task`` (:func:`task_labels`); same names, same order.

    A list that already has the task's columns is returned unchanged (e.g. an
    ``nih8`` label list written with those 8 columns).

    Raises:
        TaskError: the task does not apply to the data set.
        ValueError: the list's classes are neither the data set's native ones nor the task's.
    """
    task = check_task(task, dataset)
    if tuple(label_list.class_names) == task.class_names:
        return label_list
    native = NATIVE_CLASSES[dataset]
    if tuple(label_list.class_names) != native:
        raise ValueError(
            f"{label_list.source or 'the label list'} has the classes {', '.join(label_list.class_names)}; "
            f"task {task.name!r} on {dataset} needs {dataset}'s {len(native)} classes or the task's own "
            f"({', '.join(task.class_names)})"
        )
    labels = task_labels(label_list.labels, dataset, task)
    source = f"{label_list.source} (task {task.name})" if label_list.source else f"task {task.name}"
    return LabelList(list(label_list.names), labels, task.class_names, source)
