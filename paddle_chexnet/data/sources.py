"""Where a run's images and labels come from: NIH ChestX-ray14 or CheXpert, a folder or an image cache.

:class:`DataSource` holds what ``train.py`` and ``eval.py`` share about their
data (the data set, its folder, the task, CheXpert's uncertainty policy and
views, an image cache); :meth:`DataSource.labels` reads a label list into the
task's classes and :meth:`DataSource.dataset` makes the Paddle dataset, so both
commands build their data the same way:

* NIH: CheXNet label lists (``labels/{train,val,test}_list.txt``) over the 14
  findings, mapped to the task (``nih8``, ``abnormal``); images by file name
  in ``images/`` (flat or NIH's nested folders).
* CheXpert: Stanford's ``train.csv`` / ``valid.csv`` under the data folder's
  ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``), images by the CSV's
  ``Path``; ``valid.csv`` serves as validation and test set unless a
  patient-level split of ``train.csv`` is asked for.
* With ``cache``, the pixels come from a cache built by ``tools/build_cache.py``
  (bit-identical to the files, resized once).

Examples:
    >>> source = DataSource("nih", "demo/ChestX-ray14-synthetic", task="abnormal")  # doctest: +SKIP
    >>> labels = source.labels(source.default_list("val"))  # doctest: +SKIP
    >>> labels.class_names  # doctest: +SKIP
    ('Abnormal',)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paddle_chexnet.data.label_lists import LabelList
from paddle_chexnet.data.tasks import check_task, default_task

#: the splits a run asks for, and the file of each data set that holds them by default
SPLITS: tuple[str, ...] = ("train", "val", "test")
_NIH_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
_CHEXPERT_CSVS = {"train": "train", "val": "valid", "test": "valid"}


@dataclass(frozen=True)
class DataSource:
    """A run's data: the data set, its folder, the task and how to read labels and images.

    Args:
        dataset (str): ``'nih'`` or ``'chexpert'``.
        data_dir (str | Path): NIH: the folder with ``images/`` and ``labels/``; CheXpert: the folder that
            holds ``CheXpert-v1.0-small/`` (or that folder itself).
        task (str, optional): the task; ``None`` is the data set's default. Default: None.
        image_dir (str | Path, optional): NIH images elsewhere than ``DATA_DIR/images``. Default: None.
        uncertainty (str, optional): CheXpert's policy for uncertain labels. Default: 'paper'.
        views (str, optional): CheXpert's views: ``'frontal'`` or ``'all'``. Default: 'frontal'.
        cache (str | Path, optional): an image cache (``tools/build_cache.py``). Default: None.
        skip_missing (bool, optional): leave out listed images that are absent. Default: False.
    """

    dataset: str
    data_dir: str | Path
    task: str | None = None
    image_dir: str | Path | None = None
    uncertainty: str = "paper"
    views: str = "frontal"
    cache: str | Path | None = None
    skip_missing: bool = False

    def __post_init__(self) -> None:
        task = self.task or default_task(self.dataset)
        check_task(task, self.dataset)  # names both and lists the tasks that apply
        object.__setattr__(self, "task", task)
        if self.dataset == "chexpert":
            from paddle_chexnet.data.chexpert import parse_uncertainty

            parse_uncertainty(self.uncertainty)  # a typo fails here, before any file is read

    @property
    def image_root(self) -> Path:
        """NIH: the image folder; CheXpert: the folder the CSV paths are relative to."""
        if self.dataset == "chexpert":
            from paddle_chexnet.data.chexpert import find_chexpert_root

            return find_chexpert_root(self.data_dir)[0]
        return Path(self.image_dir) if self.image_dir else Path(self.data_dir) / "images"

    def default_list(self, split: str) -> Path:
        """The label file of ``split`` (``train``, ``val``, ``test``) in the data set's layout."""
        if self.dataset == "chexpert":
            from paddle_chexnet.data.chexpert import chexpert_csv

            return chexpert_csv(self.data_dir, _CHEXPERT_CSVS[split])
        return Path(self.data_dir) / "labels" / _NIH_LISTS[split]

    def check_layout(self, lists_given: bool) -> None:
        """Catch a ``--data-dir`` that points at the images themselves before any file is read."""
        if self.dataset == "nih" and not (self.image_dir and lists_given):
            from paddle_chexnet.data.datasets import check_data_dir

            check_data_dir(self.data_dir)

    def labels(self, path: str | Path) -> LabelList:
        """A label file read into the task's classes (NaN where a label is unknown)."""
        from paddle_chexnet.data.chexpert import is_chexpert_csv, read_chexpert_labels

        if self.dataset == "chexpert" or is_chexpert_csv(path):
            if self.dataset != "chexpert":
                from paddle_chexnet.errors import UserError

                raise UserError(f"{path} is a CheXpert CSV; pass --dataset chexpert to use it")
            return read_chexpert_labels(path, self.task, self.uncertainty, self.views)
        from paddle_chexnet.data.label_lists import read_label_list
        from paddle_chexnet.data.tasks import task_label_list

        return task_label_list(read_label_list(path), "nih", self.task)

    def dataset_of(self, label_list: LabelList, transform: Callable | None = None,
                   image_index: dict[str, Path] | None = None, resize: int | None = None) -> Any:
        """The Paddle dataset of ``label_list``'s images: from the cache, NIH's folder or CheXpert's."""
        if self.cache is not None:
            from paddle_chexnet.data.cache import CachedDataset

            dataset = CachedDataset(self.cache, label_list, transform, skip_missing=self.skip_missing, resize=resize)
            if self.dataset == "chexpert":
                dataset.name_column = "Path"
            return dataset
        if self.dataset == "chexpert":
            from paddle_chexnet.data.chexpert import CheXpertDataset

            return CheXpertDataset(self.image_root, label_list, transform, skip_missing=self.skip_missing)
        from paddle_chexnet.data.datasets import ChestXray14Dataset

        return ChestXray14Dataset(self.image_root, label_list, transform, skip_missing=self.skip_missing,
                                  image_index=image_index)

    def image_index(self) -> dict[str, Path] | None:
        """One scan of NIH's image folder, shared by the splits of a run (``None`` where not needed)."""
        if self.cache is not None or self.dataset == "chexpert":
            return None
        from paddle_chexnet.data.datasets import index_images

        return index_images(self.image_root)
