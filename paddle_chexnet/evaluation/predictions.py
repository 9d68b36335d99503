"""Reading a predictions CSV (this project's or jrzech/reproduce-chexnet's) and aligning it with labels.

Two forms are read, told apart by their header:

* this project's ``preds.csv`` (written by ``eval.py``):
  ``Image Index,Atelectasis,Cardiomegaly,...`` -- one probability column per
  class, named by the class;
* jrzech/reproduce-chexnet's ``results/preds.csv``:
  ``Image Index,prob_Atelectasis,prob_Cardiomegaly,...`` -- the probability
  columns carry a ``prob_`` prefix; columns named by a bare class, if present,
  are then that file's own 0/1 labels (kept as :attr:`Predictions.file_labels`,
  NaN where empty).

Columns may come in any order; class names are matched exactly or through the
NIH spellings of :func:`~paddle_chexnet.data.labels.canonical_label`. The first
column holds the image names (``Image Index``, ``Image_Index`` or ``Path``).
Every problem is an error naming the file, and the line, column and image where
there is one: an unknown or repeated column, a missing class, a value that is
not a number, a NaN or infinite score, an image listed twice.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_chexnet.data.label_lists import LabelList, read_label_list
from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label

logger = logging.getLogger(__name__)

NAME_COLUMNS: tuple[str, ...] = ("Image Index", "Image_Index", "Path")
PROB_PREFIX = "prob_"
FORMS: tuple[str, ...] = ("paddle-chexnet", "reproduce-chexnet")


class PredictionsError(ValueError):
    """A predictions file that cannot be read or does not match its labels; the message says where."""


@dataclass
class Predictions:
    """Scores read from a predictions CSV.

    Attributes:
        names (list[str]): image names, in file order.
        scores (numpy.ndarray): float64 ``[N, C]`` in ``class_names`` order.
        class_names (tuple[str, ...]): the classes.
        source (str): the file, for messages.
        form (str): ``'paddle-chexnet'`` or ``'reproduce-chexnet'``.
        file_labels (numpy.ndarray | None): float64 ``[N, C]`` labels stored in the file
            (reproduce-chexnet form with label columns), NaN where a cell is empty; else None.
    """

    names: list[str]
    scores: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    form: str = "paddle-chexnet"
    file_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ScoredSet:
    """Scores and labels of the same images, row for row.

    Attributes:
        names (list[str]): image names, in the label list's order.
        scores (numpy.ndarray): float64 ``[N, C]``.
        labels (numpy.ndarray): float64 ``[N, C]`` of 0/1 (NaN unknown).
        class_names (tuple[str, ...]): the classes.
        not_predicted (list[str]): images of the label list without a prediction, left out
            (only with ``missing='ignore'``).
    """

    names: list[str]
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    not_predicted: list[str] = field(default_factory=list)


def _class_of(column: str, class_names: Sequence[str]) -> str | None:
    if column in class_names:
        return column
    try:
        name = canonical_label(column)
    except KeyError:
        return None
    return name if name in class_names else None


def _parse_float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def _first(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def read_predictions(path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> Predictions:
    """Read and check a predictions CSV in this project's or reproduce-chexnet's form.

    Args:
        path (str | Path): the CSV file.
        class_names (Sequence[str], optional): the classes expected. Default: CLASS_NAMES.

    Returns:
        Predictions: scores in ``class_names`` order, rows in file order.

    Raises:
        FileNotFoundError: no such file.
        PredictionsError: a bad header, row or value; the message names file, line, column and image.

    Examples:
        >>> p = read_predictions("runs/eval/preds.csv")  # doctest: +SKIP
        >>> p.scores.shape  # doctest: +SKIP
        (22433, 14)
    """
    path = Path(path)
    class_names = tuple(class_names)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(rows, None)
        if header is None:
            raise PredictionsError(f"{path}: empty file; expected a header 'Image Index,<one column per class>'")
        header = [cell.strip() for cell in header]
        score_cols, label_cols, form = _read_header(header, class_names, path)
        names: list[str] = []
        first_line: dict[str, int] = {}
        scores: list[list[float]] = []
        labels: list[list[float]] = []
        for row in rows:
            line = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PredictionsError(
                    f"{path} line {line}: {len(row)} cells, the header has {len(header)} columns"
                )
            name = row[0].strip()
            if not name:
                raise PredictionsError(f"{path} line {line}: empty image name in column {header[0]!r}")
            if name in first_line:
                raise PredictionsError(f"{path} line {line}: image {name} is listed twice (first on line "
                                       f"{first_line[name]})")
            first_line[name] = line
            score_row = []
            for column in score_cols:
                token = row[column].strip()
                value = _parse_float(token)
                if value is None:
                    raise PredictionsError(f"{path} line {line}, column {header[column]!r}, image {name}: "
                                           f"score {token!r} is not a number")
                if not math.isfinite(value):
                    raise PredictionsError(f"{path} line {line}, column {header[column]!r}, image {name}: "
                                           f"score is {token!r}; every image needs a finite score for every class")
                score_row.append(value)
            scores.append(score_row)
            if label_cols:
                label_row = []
                for column in label_cols:
                    token = row[column].strip()
                    value = float("nan") if token == "" else _parse_float(token)
                    if value is None or not (math.isnan(value) or value in (0.0, 1.0)):
                        raise PredictionsError(f"{path} line {line}, column {header[column]!r}, image {name}: "
                                               f"label {token!r} must be 0, 1 or empty")
                    label_row.append(value)
                labels.append(label_row)
            names.append(name)
    if not names:
        raise PredictionsError(f"{path}: a header but no predictions")
    return Predictions(
        names, np.asarray(scores, dtype=np.float64), class_names, str(path), form,
        np.asarray(labels, dtype=np.float64) if label_cols else None,
    )


def _read_header(
    header: list[str], class_names: tuple[str, ...], path: Path
) -> tuple[list[int], list[int], str]:
    """Column indices of the scores and of the file's labels (both in class order), and the form."""
    if header[0] not in NAME_COLUMNS:
        raise PredictionsError(
            f"{path}: the first column must hold the image names and be called "
            f"{' or '.join(repr(n) for n in NAME_COLUMNS)}, got {header[0]!r}"
        )
    form = "reproduce-chexnet" if any(c.startswith(PROB_PREFIX) for c in header[1:]) else "paddle-chexnet"
    scores: dict[str, int] = {}
    labels: dict[str, int] = {}
    for i, column in enumerate(header[1:], start=1):
        is_prob = form == "reproduce-chexnet" and column.startswith(PROB_PREFIX)
        name = _class_of(column[len(PROB_PREFIX):] if is_prob else column, class_names)
        if name is None:
            expected = (f"'{PROB_PREFIX}<class>' or '<class>' (labels)" if form == "reproduce-chexnet"
                        else "'<class>'")
            raise PredictionsError(
                f"{path}: unknown column {column!r} (column {i + 1}); expected {expected} "
                f"for the classes {', '.join(class_names)}"
            )
        target = scores if (is_prob or form == "paddle-chexnet") else labels
        if name in target:
            raise PredictionsError(f"{path}: class {name} has two columns: "
                                   f"{header[target[name]]!r} and {column!r}")
        target[name] = i
    missing = [n for n in class_names if n not in scores]
    if missing:
        prefix = PROB_PREFIX if form == "reproduce-chexnet" else ""
        raise PredictionsError(f"{path}: no score column for {', '.join(prefix + n for n in missing)}")
    label_cols = []
    if labels:
        missing_labels = [n for n in class_names if n not in labels]
        if missing_labels:
            raise PredictionsError(f"{path}: label columns for some classes but not for "
                                   f"{', '.join(missing_labels)}")
        label_cols = [labels[n] for n in class_names]
    return [scores[n] for n in class_names], label_cols, form


def align_predictions(predictions: Predictions, label_list: LabelList, missing: str = "error") -> ScoredSet:
    """Rows of ``predictions`` matched to ``label_list`` by image name, in the label list's order.

    Args:
        predictions (Predictions): from :func:`read_predictions`.
        label_list (LabelList): from :func:`~paddle_chexnet.data.label_lists.read_label_list`,
            with the same classes.
        missing (str, optional): what to do with label-list images that have no prediction:
            ``'error'``, or ``'ignore'`` (leave them out; listed in ``not_predicted``).
            A prediction for an image absent from the label list is always an error. Default: 'error'.

    Returns:
        ScoredSet: scores and labels of the same images.

    Raises:
        PredictionsError: images on one side only, or different classes; the message counts them,
            names the first ones and both files.
    """
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
    if tuple(predictions.class_names) != tuple(label_list.class_names):
        raise PredictionsError(f"{predictions.source} and {label_list.source} have different classes")
    row = {name: i for i, name in enumerate(predictions.names)}
    listed = set(label_list.names)
    extra = [n for n in predictions.names if n not in listed]
    if extra:
        raise PredictionsError(
            f"{len(extra)} images of {predictions.source or 'the predictions'} are not in "
            f"{label_list.source or 'the label list'}, first: {_first(extra)}; use the label list the "
            f"predictions were made for"
        )
    not_predicted = [n for n in label_list.names if n not in row]
    if not_predicted and missing == "error":
        raise PredictionsError(
            f"{len(not_predicted)} images of {label_list.source or 'the label list'} have no prediction in "
            f"{predictions.source or 'the predictions'}, first: {_first(not_predicted)}"
        )
    keep = [i for i, n in enumerate(label_list.names) if n in row]
    names = [label_list.names[i] for i in keep]
    order = [row[n] for n in names]
    labels = label_list.labels[keep].astype(np.float64)
    if predictions.file_labels is not None:
        stored = predictions.file_labels[order]
        differ = ~np.isnan(stored) & (stored != labels)
        if differ.any():
            first = names[int(np.flatnonzero(differ.any(axis=1))[0])]
            logger.warning("%s: %d labels stored in the file differ from %s (first at image %s); "
                           "scoring against the label list", predictions.source, int(differ.sum()),
                           label_list.source, first)
    return ScoredSet(names, predictions.scores[order], labels, tuple(label_list.class_names), not_predicted)


def load_scored_set(
    predictions_path: str | Path, label_list_path: str | Path, class_names: Sequence[str] = CLASS_NAMES,
    missing: str = "error",
) -> ScoredSet:
    """:func:`read_predictions` + :func:`~paddle_chexnet.data.label_lists.read_label_list` + :func:`align_predictions`.

    Examples:
        >>> scored = load_scored_set("preds.csv", "labels/test_list.txt")  # doctest: +SKIP
    """
    label_list = read_label_list(label_list_path, class_names)
    return align_predictions(read_predictions(predictions_path, class_names), label_list, missing)


def check_same_images(a: Predictions, b: Predictions) -> None:
    """Raise a :class:`PredictionsError` unless ``a`` and ``b`` hold the same set of images."""
    only_a = sorted(set(a.names) - set(b.names))
    only_b = sorted(set(b.names) - set(a.names))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {a.source} (first: {_first(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in {b.source} (first: {_first(only_b)})")
        raise PredictionsError(f"the two predictions files must hold the same images: {'; '.join(parts)}")
