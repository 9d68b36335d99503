"""A seeded synthetic data set in CheXpert-v1.0-small's layout, for end-to-end tests and demos.

The files are those Stanford ships::

    ROOT/CheXpert-v1.0-small/train.csv, valid.csv      Stanford's exact columns
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg
    ROOT/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg ...
    ROOT/synthetic_chexpert_info.json                   the parameters and counts

Patients have 1-3 studies; some studies add a lateral view. Labels are per
study, as CheXpert's (both views of a study share them). Each of the 13
observations other than "No Finding" is drawn with one of the lesion patterns
of :mod:`paddle_chexnet.data.synthetic` (:data:`PATTERN_OF`), so a small
network can learn them. In train.csv a finding is uncertain (``-1.0``) with
probability ``uncertain_fraction`` and an uncertain finding is drawn on the
images of half the studies (so U-Zeros and U-Ones are each wrong about half of
them, and ``ignore`` is exact for the 13 findings); negatives are mostly empty
(not mentioned), some ``0.0``. "No Finding" follows CheXpert's labeller: 1
only when no finding is positive or uncertain (so it is 0 on a study whose
only, uncertain, finding is not drawn; :attr:`CheXpertRecord.drawn` says
nothing is drawn there).
valid.csv, like Stanford's (labelled by radiologists), has only ``1.0`` and
``0.0`` unless ``valid_uncertain``.

A lateral view is the same kind of drawing (its own chest and lesion places)
mirrored left-right and widened with background: its shape differs from the
frontal views, and every pattern used here is left-right symmetric, so the
lesions keep their meaning.

The same arguments give byte-identical files (each image draws from generators
seeded by ``(seed, index, 0)`` and ``(seed, index, 1)``; the labels from one
generator seeded by ``seed``).
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.synthetic import render_image
from paddle_chexnet.data.tasks import CHEXPERT5_CLASSES, CHEXPERT_CLASSES, NO_FINDING
from paddle_chexnet.utils.io import atomic_path, atomic_write_text

# The CSV columns of Stanford's train.csv / valid.csv (kept here as text so the
# generator does not depend on the reader it is meant to test).
CSV_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_CLASSES)


FOLDER = "CheXpert-v1.0-small"


# Stanford numbers validation patients after the training ones.
FIRST_VALID_PATIENT = 64541


# The NIH synthetic finding whose pattern draws each CheXpert observation. A
# lateral view mirrors the picture, and every pattern here is left-right
# symmetric (NIH's 45-degree "Nodule" stripes, the one that is not, are unused).
PATTERN_OF: dict[str, str] = {
    "Enlarged Cardiomediastinum": "Hernia",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Infiltration",
    "Lung Lesion": "Mass",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Thickening",
    "Fracture": "Fibrosis",
    "Support Devices": "Emphysema",
}


FINDINGS: tuple[str, ...] = tuple(name for name in CHEXPERT_CLASSES if name != NO_FINDING)


assert tuple(PATTERN_OF) == FINDINGS


# The competition's five are twice as frequent as the other eight, so that a
# few hundred images give each of them enough positives to score.
FINDING_WEIGHTS: np.ndarray = np.array([2.0 if name in CHEXPERT5_CLASSES else 1.0 for name in FINDINGS])
FINDING_WEIGHTS /= FINDING_WEIGHTS.sum()


# P(0, 1, 2, 3 findings in a study).
NUM_FINDINGS_P: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)


@dataclass(frozen=True)
class CheXpertRecord:
    """One image: its CSV row and what is drawn on it.

    Attributes:
        path (str): the CSV ``Path`` (relative to ROOT).
        split (str): ``'train'`` or ``'valid'``.
        patient (int): the ``patientNNNNN`` number.
        study (int): the ``studyN`` number.
        view (str): ``'Frontal'`` or ``'Lateral'``.
        values (tuple[str, ...]): the 14 CSV cells (``'1.0'``, ``'0.0'``, ``'-1.0'``, ``''``).
        drawn (tuple[int, ...]): 14 truths: 1 where the finding is drawn ("No Finding": nothing drawn).
        sex (str): ``'Male'`` / ``'Female'``.
        age (int): the age in years.
        ap_pa (str): ``'AP'`` / ``'PA'`` for frontal views, ``''`` for lateral ones.
    """

    path: str
    split: str
    patient: int
    study: int
    view: str
    values: tuple[str, ...]
    drawn: tuple[int, ...]
    sex: str
    age: int
    ap_pa: str

    def csv_row(self) -> str:
        return ",".join([self.path, self.sex, str(self.age), self.view, self.ap_pa, *self.values])


@dataclass
class SyntheticCheXpert:
    """What :func:`make_chexpert_dataset` wrote."""

    root: Path
    image_size: int
    seed: int
    records: list[CheXpertRecord]

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    @property
    def train_csv(self) -> Path:
        return self.folder / "train.csv"

    @property
    def valid_csv(self) -> Path:
        return self.folder / "valid.csv"

    def split_records(self, split: str) -> list[CheXpertRecord]:
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        return [r for r in self.records if r.split == split]

    def truth(self, split: str, classes: Sequence[str] = CHEXPERT_CLASSES) -> np.ndarray:
        """What is drawn, ``[N, len(classes)]`` 0/1, for ``split``'s rows in CSV order."""
        columns = [CHEXPERT_CLASSES.index(name) for name in classes]
        return np.array([r.drawn for r in self.split_records(split)], dtype=np.float32).reshape(-1, 14)[:, columns]


def _study_labels(rng: np.random.Generator, split: str, uncertain_fraction: float,
                  valid_uncertain: bool) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The 14 CSV cells and the 14 drawn truths of one study."""
    count = int(rng.choice(len(NUM_FINDINGS_P), p=NUM_FINDINGS_P))
    picked = set(rng.choice(len(FINDINGS), size=count, replace=False, p=FINDING_WEIGHTS).tolist()) if count else set()
    allow_uncertain = split == "train" or valid_uncertain
    explicit_negative = 1.0 if split == "valid" else 0.25  # Stanford's valid.csv has no empty cells
    values: dict[str, str] = {}
    drawn: dict[str, int] = {}
    for i, name in enumerate(FINDINGS):
        if i in picked:
            uncertain = allow_uncertain and rng.random() < uncertain_fraction
            values[name] = "-1.0" if uncertain else "1.0"
            drawn[name] = int(rng.random() < 0.5) if uncertain else 1
        else:
            values[name] = "0.0" if rng.random() < explicit_negative else ""
            drawn[name] = 0
    nothing = not picked
    values[NO_FINDING] = "1.0" if nothing else ("0.0" if rng.random() < explicit_negative else "")
    drawn[NO_FINDING] = int(not any(drawn.values()))
    return tuple(values[n] for n in CHEXPERT_CLASSES), tuple(drawn[n] for n in CHEXPERT_CLASSES)


def _plan(seed: int, train_patients: int, valid_patients: int, uncertain_fraction: float,
          lateral_fraction: float, valid_uncertain: bool) -> list[CheXpertRecord]:
    rng = np.random.default_rng([seed, 0xC4E7])
    records: list[CheXpertRecord] = []
    for split, count, first in (("train", train_patients, 1), ("valid", valid_patients, FIRST_VALID_PATIENT)):
        for patient in range(first, first + count):
            sex = "Male" if rng.random() < 0.55 else "Female"
            age = int(rng.integers(18, 90))
            for study in range(1, int(rng.integers(1, 4)) + 1):
                values, drawn = _study_labels(rng, split, uncertain_fraction, valid_uncertain)
                ap_pa = "AP" if rng.random() < 0.7 else "PA"
                views = ["Frontal"] + (["Lateral"] if rng.random() < lateral_fraction else [])
                for number, view in enumerate(views, start=1):
                    name = f"view{number}_{view.lower()}.jpg"
                    path = f"{FOLDER}/{split}/patient{patient:05d}/study{study}/{name}"
                    records.append(CheXpertRecord(path, split, patient, study, view, values, drawn, sex,
                                                  age + study // 2, ap_pa if view == "Frontal" else ""))
    return records


def render_record(seed: int, index: int, record: CheXpertRecord, image_size: int) -> np.ndarray:
    """The ``uint8`` pixels of image ``index`` (its position in :attr:`SyntheticCheXpert.records`)."""
    findings = [PATTERN_OF[name] for name, d in zip(CHEXPERT_CLASSES, record.drawn) if d and name != NO_FINDING]
    pixels, _ = render_image(image_size, findings, np.random.default_rng([seed, index, 0]),
                             np.random.default_rng([seed, index, 1]))
    if record.view == "Lateral":
        pad = image_size // 10
        background = int(np.median(pixels[:, :2]))
        pixels = np.pad(pixels[:, ::-1], ((0, 0), (pad, pad)), constant_values=background)
    return np.ascontiguousarray(pixels)


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_chexpert_dataset(
    output_dir: str | Path,
    train_patients: int = 60,
    valid_patients: int = 20,
    image_size: int = 64,
    seed: int = 0,
    uncertain_fraction: float = 0.25,
    lateral_fraction: float = 0.3,
    valid_uncertain: bool = False,
    workers: int | None = None,
) -> SyntheticCheXpert:
    """Write a synthetic CheXpert-v1.0-small-style set under ``output_dir`` (the ROOT) and return its records.

    Args:
        output_dir (str | Path): ROOT; ``CheXpert-v1.0-small/`` is written inside (files of the same
            names are replaced, others are left alone).
        train_patients (int, optional): patients in train.csv (1-3 studies each). Default: 60.
        valid_patients (int, optional): patients in valid.csv. Default: 20.
        image_size (int, optional): height of the images in pixels (frontal views are square,
            lateral ones wider). Default: 64.
        seed (int, optional): the same seed gives byte-identical files. Default: 0.
        uncertain_fraction (float, optional): chance that a finding is written ``-1.0``. Default: 0.25.
        lateral_fraction (float, optional): chance that a study adds a lateral view. Default: 0.3.
        valid_uncertain (bool, optional): write ``-1.0`` in valid.csv too (it still has no empty
            cells). Default: False (Stanford's valid.csv has only 1.0 and 0.0).
        workers (int, optional): threads that draw and write images; ``None`` uses
            ``min(4, os.cpu_count())``. Does not change the output. Default: None.

    Returns:
        SyntheticCheXpert: the root and, per image, its CSV row and drawn truth.

    Examples:
        >>> ds = make_chexpert_dataset("demo/chexpert-synthetic", train_patients=5, valid_patients=2)  # doctest: +SKIP
        >>> ds.records[0].path  # doctest: +SKIP
        'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg'
    """
    if train_patients < 1 or valid_patients < 1:
        raise ValueError(f"need at least one patient per split, got {train_patients} and {valid_patients}")
    if not 1 <= train_patients < FIRST_VALID_PATIENT:
        raise ValueError(f"train_patients must be below {FIRST_VALID_PATIENT}, got {train_patients}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels so lesions stay recognisable, got {image_size}")
    for name, value in (("uncertain_fraction", uncertain_fraction), ("lateral_fraction", lateral_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    root = Path(output_dir)
    records = _plan(seed, train_patients, valid_patients, uncertain_fraction, lateral_fraction, valid_uncertain)
    for folder in sorted({(root / r.path).parent for r in records}):
        folder.mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        data = _jpeg_bytes(render_record(seed, index, records[index], image_size))
        with atomic_path(root / records[index].path) as tmp:
            tmp.write_bytes(data)

    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(write, range(len(records))))
    else:
        for index in range(len(records)):
            write(index)

    dataset = SyntheticCheXpert(root=root, image_size=image_size, seed=seed, records=records)
    for split, csv_path in (("train", dataset.train_csv), ("valid", dataset.valid_csv)):
        rows = [CSV_HEADER] + [r.csv_row() for r in dataset.split_records(split)]
        atomic_write_text(csv_path, "\n".join(rows) + "\n")
    info = {
        "generator": "paddle_chexnet.data.synthetic_chexpert",
        "seed": seed,
        "image_size": image_size,
        "train_patients": train_patients,
        "valid_patients": valid_patients,
        "uncertain_fraction": uncertain_fraction,
        "lateral_fraction": lateral_fraction,
        "valid_uncertain": valid_uncertain,
        "images": {split: len(dataset.split_records(split)) for split in ("train", "valid")},
        "drawn": {
            split: dict(zip(CHEXPERT_CLASSES, (int(x) for x in dataset.truth(split).sum(axis=0))))
            for split in ("train", "valid")
        },
        "patterns": PATTERN_OF,
    }
    atomic_write_text(root / "synthetic_chexpert_info.json", json.dumps(info, indent=2) + "\n")
    return dataset


__all__ = [
    "CSV_HEADER",
    "CheXpertRecord",
    "PATTERN_OF",
    "SyntheticCheXpert",
    "make_chexpert_dataset",
    "render_record",
]
