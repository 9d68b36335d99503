"""NIH's own metadata: ``Data_Entry_2017*.csv``, the official split lists, and a patient-level split.

:func:`nih_label_lists` builds train/val/test label lists from NIH's files,
splitting train_val into train and val by patient so no patient is in two splits.
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_chexnet.data.label_lists import LabelList, LabelListError
from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label

logger = logging.getLogger(__name__)


NO_FINDING = "No Finding"


@dataclass
class NihDataEntry:
    """The rows of NIH's ``Data_Entry_2017*.csv`` that matter here.

    Attributes:
        names (list[str]): ``Image Index``.
        patient_ids (numpy.ndarray): int64 ``Patient ID`` per image.
        labels (numpy.ndarray): float32 ``[N, C]`` from ``Finding Labels``.
        class_names (tuple[str, ...]): the label columns.
        source (str): the CSV path.
    """

    names: list[str]
    patient_ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def label_list(self, names: Sequence[str], source: str = "") -> LabelList:
        """A :class:`LabelList` for ``names`` in that order."""
        rows = [self._row[n] for n in names]
        return LabelList(list(names), self.labels[rows], self.class_names, source or self.source)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_nih_data_entry(csv_path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> NihDataEntry:
    """Read NIH's ``Data_Entry_2017.csv`` (or ``_v2020``, plain or ``.gz``).

    ``Finding Labels`` is ``|``-separated, or ``No Finding`` (all zeros). A finding
    that is not a known class, a bad ``Patient ID`` or a repeated image raises
    :class:`LabelListError` naming the line.
    """
    csv_path = Path(csv_path)
    class_names = tuple(class_names)
    column = {name: i for i, name in enumerate(class_names)}
    if not csv_path.is_file():
        raise FileNotFoundError(f"NIH data entry file not found: {csv_path}")
    names: list[str] = []
    patients: list[int] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    with _open_text(csv_path) as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        needed = ("Image Index", "Finding Labels", "Patient ID")
        absent = [h for h in needed if h not in header]
        if absent:
            raise LabelListError(
                f"{csv_path} line 1: missing column(s) {', '.join(absent)}; is this NIH's Data_Entry_2017.csv?"
            )
        i_name, i_find, i_pat = (header.index(h) for h in needed)
        for line_no, record in enumerate(reader, start=2):
            if not record or not any(cell.strip() for cell in record):
                continue
            where = f"{csv_path} line {line_no}"
            if len(record) <= max(i_name, i_find, i_pat):
                raise LabelListError(f"{where}: expected at least {max(i_name, i_find, i_pat) + 1} columns")
            name = record[i_name].strip()
            if name in seen:
                raise LabelListError(f"{where}: image {name} is listed twice")
            seen.add(name)
            try:
                patient = int(record[i_pat])
            except ValueError:
                raise LabelListError(f"{where}: Patient ID {record[i_pat]!r} is not an integer") from None
            row = np.zeros(len(class_names), dtype=np.float32)
            findings = record[i_find].strip()
            if findings != NO_FINDING:
                for finding in findings.split("|"):
                    try:
                        row[column[canonical_label(finding) if finding not in column else finding]] = 1.0
                    except KeyError:
                        raise LabelListError(
                            f"{where}: unknown finding {finding!r} for {name}; expected '{NO_FINDING}' or "
                            f"'|'-separated names from {', '.join(class_names)}"
                        ) from None
            names.append(name)
            patients.append(patient)
            rows.append(row)
    if not names:
        raise LabelListError(f"{csv_path}: no rows")
    labels = np.stack(rows) if rows else np.zeros((0, len(class_names)), np.float32)
    return NihDataEntry(names, np.asarray(patients, dtype=np.int64), labels, class_names, str(csv_path))


def read_name_list(path: str | Path) -> list[str]:
    """Image names, one per line (NIH's ``train_val_list.txt``, ``test_list.txt``); repeats are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    names: list[str] = []
    first: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 1:
                raise LabelListError(f"{path} line {line_no}: expected one image name, got {len(tokens)} fields")
            if tokens[0] in first:
                raise LabelListError(f"{path} line {line_no}: {tokens[0]} is listed twice (line {first[tokens[0]]})")
            first[tokens[0]] = line_no
            names.append(tokens[0])
    return names


def split_by_patient(
    names: Sequence[str], patient_ids: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``names`` into (train, val) so that every patient is in exactly one part.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` and assigned to val
    until it holds ``round(val_fraction * len(names))`` images or more; both parts keep
    the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patient_ids = np.asarray(patient_ids)
    unique, counts = np.unique(patient_ids, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    target = int(round(val_fraction * len(names)))
    cumulative = np.cumsum(counts[order])
    n_val_patients = int(np.searchsorted(cumulative, target)) + 1 if target > 0 else 0
    val_patients = set(unique[order[:n_val_patients]].tolist())
    is_val = np.isin(patient_ids, list(val_patients))
    train = [n for n, v in zip(names, is_val) if not v]
    val = [n for n, v in zip(names, is_val) if v]
    return train, val


def nih_label_lists(
    data_entry: NihDataEntry | str | Path,
    train_val_list: Sequence[str] | str | Path,
    test_list: Sequence[str] | str | Path,
    val_fraction: float = 0.125,
    seed: int = 0,
) -> dict[str, LabelList]:
    """Train/val/test label lists from NIH's files, with train_val split into train and val by patient.

    Args:
        data_entry (NihDataEntry | str | Path): :func:`read_nih_data_entry`'s result or the CSV.
        train_val_list (Sequence[str] | str | Path): NIH's ``train_val_list.txt`` or its names.
        test_list (Sequence[str] | str | Path): NIH's ``test_list.txt`` or its names.
        val_fraction (float, optional): share of train_val images (whole patients) for val.
            Default: 0.125 (about CheXNet's 70/10/20 of all images).
        seed (int, optional): shuffles the patients. Default: 0.

    Returns:
        dict[str, LabelList]: ``{'train': ..., 'val': ..., 'test': ...}``.

    Raises:
        LabelListError: a listed image is not in the CSV, an image is in both lists, or
            a patient has images in both train_val and test.
    """
    if not isinstance(data_entry, NihDataEntry):
        data_entry = read_nih_data_entry(data_entry)
    lists = {}
    for key, given in (("train_val", train_val_list), ("test", test_list)):
        if isinstance(given, (str, Path)):
            lists[key] = (read_name_list(given), str(given))
        else:
            lists[key] = (list(given), key)
    for key, (names, source) in lists.items():
        unknown = [n for n in names if n not in data_entry._row]
        if unknown:
            raise LabelListError(
                f"{len(unknown)} images in {source} are not in {data_entry.source}; first: {', '.join(unknown[:5])}"
            )
    train_val, test = lists["train_val"][0], lists["test"][0]
    both = set(train_val) & set(test)
    if both:
        raise LabelListError(f"{len(both)} images are in both train_val and test; first: {sorted(both)[:5]}")
    patient_of = {name: int(data_entry.patient_ids[data_entry._row[name]]) for name in train_val + test}
    shared = {patient_of[n] for n in train_val} & {patient_of[n] for n in test}
    if shared:
        raise LabelListError(
            f"{len(shared)} patients have images in both train_val and test (first: {sorted(shared)[:5]}); "
            "the split would leak patients"
        )
    train, val = split_by_patient(train_val, [patient_of[n] for n in train_val], val_fraction, seed)
    return {
        "train": data_entry.label_list(train, "train (NIH train_val minus val patients)"),
        "val": data_entry.label_list(
            val, f"val (about {val_fraction:.3g} of NIH train_val images, whole patients, seed {seed})"
        ),
        "test": data_entry.label_list(test, "test (NIH test_list)"),
    }
